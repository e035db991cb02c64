"""`latentstore serve`: the ingest service (being written)."""
