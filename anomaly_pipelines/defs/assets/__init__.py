"""Assets by stage: ingest, series, training, scoring, reporting (in graph order)."""
