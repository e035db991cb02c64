"""The ingest service: images in over HTTP, compressed, stored durably and classified from their latents.

    from latentstore.serve import create_app, ServeConfig
    app = create_app(ServeConfig(store="uploads.zarr", codec="ls-c16"))   # FastAPI; uvicorn runs it

Modules: config (ServeConfig), app (create_app, the routes), service (IngestService: one process's
pipeline), batcher (DynamicBatcher.submit -> Future), engine (encode + classify), uploads (bounded reads,
screening), wal (the intake log), sealer (log -> store shards), index (search), auth, metrics.
"""
from __future__ import annotations

__all__ = ["create_app", "ServeConfig", "DynamicBatcher", "BatcherConfig"]

_EXPORTS = {"create_app": "app", "ServeConfig": "config", "DynamicBatcher": "batcher", "BatcherConfig": "batcher"}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
