"""Latent stores: the schema, writers and readers for Zarr v3 and WebDataset."""
from .reader import LatentStore, open_store, webdataset_decoder  # noqa: F401
