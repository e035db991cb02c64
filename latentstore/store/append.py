"""A store that grows: shards appended one at a time to a Zarr store (fixed or native size), each growth
re-finalized.

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

A seal changes several files that only agree again once the schema is re-finalized (a shard's new bytes
against the old schema's checksums). So the sealer writes `SEAL_MARKER` (fsynced) before it touches the store
and removes it once the store is finalized and fsynced; `interrupted_seal` turns a marker left by a killed or
failed seal into the one line readers raise, until `latentstore serve STORE` repairs the store.
"""
from __future__ import annotations

import copy
import json
import os
import time

import zarr

from ..atomic import write_json_atomic
from ..data.imageio import read_bounded
from ..errors import StoreError, UsageError, first_line
from .backends import backend_for
from .lock import _pid_alive
from .schema import CODEC_FILE, PARTS_DIR, StoreSchema
from .writer import INIT_MARKER, StoreWriter, finalize_store, read_record, sha256_file


SEAL_MARKER = os.path.join("_serve", "seal-in-progress.json")  # in the store: a seal has begun, not finished
GROWING_MODES = ("fixed", "native")  # Zarr layouts a store may grow in: S x S latents, or each image at its own size
PARTIAL_SUFFIX = ".partial"  # zarr's own temporaries (<name>.<uuid hex>.partial), left behind by a kill


def interrupted_seal(root: str, wait_s: float = 0.0) -> str | None:
    """None, or the one line a reader raises while a seal of this (local) store is unfinished: under way in a
    live serving process (waited for up to `wait_s`: a seal takes milliseconds), retrying after a failed write,
    or cut short by a kill (then `latentstore serve STORE` repairs it at start)."""
    deadline = time.monotonic() + wait_s
    while True:
        marker = os.path.join(root, SEAL_MARKER)
        if not os.path.lexists(marker):  # the common case, one stat (a root that is a file: no marker either)
            return None
        try:  # bounded, and a FIFO or device in the marker's place is refused, not waited on
            info = json.loads(read_bounded(marker, 4096, StoreError) or b"{}")
        except (StoreError, ValueError):
            if not os.path.lexists(marker):  # removed while we read it: the seal finished
                return None
            info = {}
        pid = info.get("pid") if isinstance(info, dict) else None
        if not (isinstance(pid, int) and pid > 0 and _pid_alive(pid)):
            return f"{root}: an interrupted seal; run `latentstore serve {root}` once to repair it"
        if time.monotonic() >= deadline:
            return (f"{root}: a seal by the serving process (pid {pid}) has not finished (under way, or retrying "
                    "after a failed write); read the store once it is quiescent")
        time.sleep(0.05)


def mark_seal(root: str) -> None:
    """The marker, durable (file and folder fsynced) before the store's files change."""
    from ..atomic import write_bytes_atomic
    path = os.path.join(root, SEAL_MARKER)
    write_bytes_atomic(path, json.dumps({"pid": os.getpid(), "since": time.time()}).encode())
    fsync_path(os.path.dirname(path))


def unmark_seal(root: str) -> None:
    """Remove the marker, durably: the store is consistent (call after `sync_store`)."""
    path = os.path.join(root, SEAL_MARKER)
    if os.path.exists(path):
        os.remove(path)
        fsync_path(os.path.dirname(path))


def fsync_path(path: str) -> None:
    """fsync a file or a folder (a folder's fsync makes its entries' creation, rename and removal durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_store(writer: StoreWriter, shards: list[int], grown: bool = True) -> None:
    """Make durable what sealing `shards` wrote: their files and commit records, the schema, when the store
    `grown` the arrays' metadata and the creation record, and every folder on their paths (zarr and the atomic
    writes rename without fsyncing the folder; zarr does not fsync its chunks at all)."""
    root = writer.root
    g = zarr.open_group(root, mode="r")
    backend = backend_for(root, writer.schema)
    meta = backend.metadata_files() + [os.path.join(PARTS_DIR, INIT_MARKER)] if grown else []
    files = [os.path.join(root, rel) for rel in ["zarr.json"] + meta] + [writer.part_path(k) for k in shards]
    for name in backend.array_names():
        files += [backend.chunk_file(g[name], k) for k in shards]
    folders = set()
    for f in files:
        if os.path.exists(f):
            fsync_path(f)
        d = os.path.dirname(f)
        while len(d) >= len(root) and d not in folders:  # a shard's chunk folders may be new
            folders.add(d)
            d = os.path.dirname(d)
    for d in sorted(folders, key=len, reverse=True):
        if os.path.isdir(d):
            fsync_path(d)


def remove_partials(root: str) -> list[str]:
    """Delete zarr's `*.<uuid>.partial` temporaries (a killed write's; only the lock holder writes the store)."""
    removed = []
    for d, _, files in os.walk(root):
        for f in files:
            stem = f[: -len(PARTIAL_SUFFIX)] if f.endswith(PARTIAL_SUFFIX) else ""
            uid = stem.rpartition(".")[2]
            if len(uid) == 32 and all(c in "0123456789abcdef" for c in uid):
                os.remove(os.path.join(d, f))
                removed.append(os.path.join(d, f))
    return removed


def init_record(root: str) -> StoreSchema:
    return read_record(os.path.join(root, PARTS_DIR, INIT_MARKER), root)


def _write_init(root: str, schema: StoreSchema) -> None:
    write_json_atomic(schema.to_dict(), os.path.join(root, PARTS_DIR, INIT_MARKER))


def create_growing_store(root: str, schema: StoreSchema, codec_file: str) -> StoreWriter:
    """A new store of one empty shard, finalized; returns its writer (holding the lock)."""
    if schema.kind != "zarr" or schema.policy.get("mode") not in GROWING_MODES:
        raise UsageError("a growing store is a Zarr store (fixed size, or native size)")
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
        remove_partials(root)
        if writer.schema.kind != "zarr" or writer.schema.policy.get("mode") not in GROWING_MODES:
            raise UsageError(f"{root}: the service appends to Zarr stores only (fixed or native size) "
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
        msg = first_line(e, 200)
        raise StoreError(f"{writer.root}: the store's arrays are unreadable ({msg}); run latentstore verify") from None


def grow(writer: StoreWriter, num_slots: int, label_names: list | None = None) -> StoreSchema:
    """Make the store `num_slots` slots long (never shorter) and its label names `label_names` (extended only);
    shards that have no commit record yet get an empty one. Idempotent; the caller finalizes after."""
    schema = copy.deepcopy(writer.schema)  # the writer's own changes only once INIT.json says so
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
    schema = writer.schema
    done = writer.committed()
    for k in range(schema.num_shards):
        if k not in done:
            writer.write_shard(k, [], [])
    return schema
