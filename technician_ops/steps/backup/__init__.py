"""The ``backup`` step kind: files or a PostgreSQL database, restored exactly as its undo."""
