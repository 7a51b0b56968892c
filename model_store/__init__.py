"""model_store: planned; see the project's issues."""
