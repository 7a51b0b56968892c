"""The project's own wire messages, generated from ``proto/edgefabric/wire/`` (do not edit)."""
