"""A store that grows: shards appended one at a time to a fixed-size Zarr store, each growth re-finalized.

A converted store has a fixed number of slots, set from its input listing. The ingest service
(latentstore.serve) does not know its inputs in advance, so its store grows a shard at a time:

    create_growing_store   a store of one empty shard (num_slots = shard_size), finalized: a reader sees
                           an ordinary complete store with 0 samples
    open_growing_store     take the writer lock of an existing store and roll an interrupted growth forward
    grow                   every per-slot array resized to `num_slots` (a multiple of shard_size), then the
                           creation record (`_parts/INIT.json`) rewritten with the new slot count and the
                           checksums of the resized arrays' metadata; new shards get empty commit records
    StoreWriter.write_shard / finalize_store   as for a conversion: the schema is re-finalized after each
                           seal, so `open_store`, `LatentDataset`, `info` and `verify` read it like any store

Built only on the writer's public pieces (StoreWriter, finalize_store, read_record, the backend's array
names); the format on disk is exactly a converted store's. Crash safety: every step is atomic per file
and `open_growing_store` repairs the one state a crash between steps leaves (arrays longer than the
creation record says, or shards without a commit record): it rolls forward to the longest array and
commits the missing shards empty. A shard that held samples is rewritten by its caller (the service's
journal holds every sample of a shard until the shard is full; see serve/sealer.py).
"""
from __future__ import annotations

import os

import zarr

from ..atomic import write_json_atomic
from ..errors import StoreError, UsageError
from .backends import backend_for
from .schema import CODEC_FILE, PARTS_DIR, StoreSchema
from .writer import INIT_MARKER, StoreWriter, finalize_store, read_record, sha256_file


def init_record(root: str) -> StoreSchema:
    return read_record(os.path.join(root, PARTS_DIR, INIT_MARKER), root)


def _write_init(root: str, schema: StoreSchema) -> None:
    write_json_atomic(schema.to_dict(), os.path.join(root, PARTS_DIR, INIT_MARKER))


def create_growing_store(root: str, schema: StoreSchema, codec_file: str) -> StoreWriter:
    """A new store of one empty shard, finalized; returns its writer (holding the lock)."""
    if schema.kind != "zarr" or schema.policy.get("mode") != "fixed":
        raise UsageError("a growing store is a fixed-size Zarr store")
    schema.num_slots = schema.shard_size
    writer = StoreWriter.open(root, schema, codec_file, resume=False)
    try:
        writer.write_shard(0, [], [])
        finalize_store(root)
    except BaseException:
        writer.close()
        raise
    return writer


def open_growing_store(root: str, codec_file: str) -> StoreWriter:
    """The writer of an existing store (its lock taken), with an interrupted growth rolled forward."""
    writer = StoreWriter.open(root, init_record(root), codec_file, resume=True)
    try:
        if writer.schema.kind != "zarr" or writer.schema.policy.get("mode") != "fixed":
            raise UsageError(f"{root}: the service appends to fixed-size Zarr stores only "
                             f"(this one is {writer.schema.kind}, {writer.schema.policy.get('mode')})")
        rows = max(_array_rows(writer).values())
        grow(writer, max(rows, writer.schema.num_slots))
    except BaseException:
        writer.close()
        raise
    return writer


def _array_rows(writer: StoreWriter) -> dict[str, int]:
    try:
        g = zarr.open_group(writer.root, mode="r")
        return {name: g[name].shape[0] for name in backend_for(writer.root, writer.schema).array_names()}
    except Exception as e:  # zarr raises many types for missing or damaged metadata
        msg = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise StoreError(f"{writer.root}: the store's arrays are unreadable ({msg}); run latentstore verify") from None


def grow(writer: StoreWriter, num_slots: int, label_names: list | None = None) -> StoreSchema:
    """Make the store `num_slots` slots long (never shorter) and its label names `label_names` (extended only);
    shards that have no commit record yet get an empty one. Idempotent; the caller finalizes after."""
    schema = writer.schema
    S = schema.shard_size
    if num_slots % S:
        raise ValueError(f"num_slots {num_slots} is not a multiple of the shard size {S}")
    backend = backend_for(writer.root, schema)
    g = zarr.open_group(writer.root, mode="r+")
    changed = False
    for name in backend.array_names():
        a = g[name]
        if a.shape[0] < num_slots:
            a.resize((num_slots,) + tuple(a.shape[1:]))
            changed = True
    if label_names is not None and list(label_names[: len(schema.label_names)]) != list(schema.label_names):
        raise ValueError("label names may only be extended")
    if changed or num_slots != schema.num_slots or (label_names is not None and label_names != schema.label_names):
        schema.num_slots = max(num_slots, schema.num_slots)
        if label_names is not None:
            schema.label_names = list(label_names)
        for rel in [CODEC_FILE] + backend.metadata_files():  # the resized arrays' metadata changed
            schema.checksums[rel] = sha256_file(os.path.join(writer.root, rel))
        _write_init(writer.root, schema)
        writer.schema = schema
        writer.backend = backend_for(writer.root, schema)
    done = writer.committed()
    for k in range(schema.num_shards):
        if k not in done:
            writer.write_shard(k, [], [])
    return schema
