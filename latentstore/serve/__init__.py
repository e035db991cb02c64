"""The ingest service: images in over HTTP, compressed, stored durably and classified from their latents."""
