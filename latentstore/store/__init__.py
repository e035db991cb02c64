"""Latent stores on disk: the schema, the layouts (backends), the writer, verification."""
from .backends import webdataset_decoder  # noqa: F401
from .reader import LatentStore, open_store  # noqa: F401
