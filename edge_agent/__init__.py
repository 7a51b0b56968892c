"""edge_agent: planned; see the project's issues."""
