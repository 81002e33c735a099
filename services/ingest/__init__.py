"""The ingest service: the public edge where websites and ad platforms send events."""
