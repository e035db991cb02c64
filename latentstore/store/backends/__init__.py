"""Store layouts, chosen from the schema alone. A new layout is a new module plus one line in BACKENDS."""
from __future__ import annotations

from ...errors import StoreError
from ..schema import StoreSchema
from .base import Backend, CorruptSampleError, decode_bitstream, schema_tables, store_coder  # noqa: F401
from .webdataset import WebDatasetBackend, webdataset_decoder  # noqa: F401
from .zarr_fixed import ZarrFixedBackend
from .zarr_native import ZarrNativeBackend

BACKENDS: list[type[Backend]] = [ZarrFixedBackend, ZarrNativeBackend, WebDatasetBackend]


def backend_for(root: str, schema: StoreSchema) -> Backend:
    mode = schema.policy.get("mode")
    for cls in BACKENDS:
        if cls.kind == schema.kind and mode in cls.modes:
            return cls(root, schema)
    raise StoreError(f"{root}: no store layout for kind {schema.kind!r} in mode {mode!r}")
