"""Writing a store into object storage, where there is no rename: stage locally, upload, commit last.

The backends write a shard into a local staging folder exactly as they write a local store (same
bytes); then its objects are uploaded whole (one writer per shard, whole shard files: a zarr shard
is never written by two writers), and only then its commit record `_parts/shard-K.json`, with a
conditional create (If-None-Match: *). A shard without its record does not exist: `--resume` uploads
it again, the same bytes. Creation: the store's metadata objects first, `_parts/INIT.json` last
(conditional create: of two creators one wins). `finalize` (or `merge`) writes the complete schema
(root `zarr.json` attributes, or `schema.json`) in one put: the store's single commit. Readers refuse
a store whose schema is not complete. The lock is remote.lock.RemoteLock.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

from ...errors import StoreError, UsageError
from ..lock import LOCK_DIR
from ..records import (INIT_MARKER, NOTES_FILE, check_resumable, check_seal, complete_schema, parse_record,
                       read_parts_at)
from ..schema import PARTS_DIR, SCHEMA_FILE, StoreSchema, listing_state as _listing_state, read_metadata, read_schema
from .errors import AlreadyExists
from .location import location_for, require_writable
from .lock import RemoteLock


def _init_marker() -> str:
    return f"{PARTS_DIR}/{INIT_MARKER}"


class RemoteMirror:
    """An object-store destination and the local folder its shards are staged in."""

    def __init__(self, url: str, stage: str):
        self.url, self.loc, self.stage = url, location_for(url), stage

    def upload_tree(self, skip=()) -> None:
        """Every staged file (but `skip`), as an object of the same name."""
        for d, _, files in os.walk(self.stage):
            for f in sorted(files):
                rel = os.path.relpath(os.path.join(d, f), self.stage).replace(os.sep, "/")
                if rel not in skip:
                    with open(os.path.join(d, f), "rb") as fh:
                        self.loc.put(rel, fh.read())

    def put_json(self, rel: str, obj, create: bool = False) -> None:
        self.loc.put(rel, json.dumps(obj, indent=1, sort_keys=True).encode(), create=create)

    def committed(self) -> set[int]:
        return {int(n[len(PARTS_DIR) + 7: len(PARTS_DIR) + 13]) for n in self.loc.list(PARTS_DIR + "/")
                if n.startswith(f"{PARTS_DIR}/shard-") and n.endswith(".json") and n[len(PARTS_DIR) + 7:-5].isdigit()}

    def commit_shard(self, k: int, files: list[str], record: dict, stage_root: str) -> None:
        """Upload shard k's staged files, then its commit record (conditional create); unstage the files."""
        for f in files:
            rel = os.path.relpath(f, stage_root).replace(os.sep, "/")
            with open(f, "rb") as fh:
                self.loc.put(rel, fh.read())
        try:
            self.put_json(f"{PARTS_DIR}/shard-{k:06d}.json", record, create=True)
        except AlreadyExists:
            raise StoreError(f"{self.url}: shard {k} was committed by another writer meanwhile "
                             "(two writers on one store); stopping") from None
        for f in files:
            os.remove(f)

    def cleanup(self) -> None:
        shutil.rmtree(self.stage, ignore_errors=True)


def open_remote(cls, url: str, schema: StoreSchema, codec_file: str, resume: bool, rank: int, world: int,
                wait_s: float, on_create):
    """StoreWriter.open for an object-store destination: the same refusals, the same resume checks."""
    require_writable(url)
    loc = location_for(url)
    marker = _init_marker()
    if rank == 0:
        content, ours = _listing_state(loc)
        if content and not resume:
            raise UsageError(f"{url} exists; pass --resume to continue it, or choose a new destination")
        if content and not ours:
            raise UsageError(f"{url} exists and is not a latentstore store; refusing to write into it")
    lock = RemoteLock.for_rank(loc, rank, world).acquire()
    mirror = RemoteMirror(url, tempfile.mkdtemp(prefix="latentstore-stage-"))
    try:
        if rank == 0 and not resume and loc.exists(marker):  # another run created it meanwhile
            raise UsageError(f"{url} exists; pass --resume to continue it, or choose a new destination")
        if rank == 0 and not loc.exists(marker):
            # killed while being created: nothing can be committed before INIT, so start it over
            loc.delete([n for n in loc.list() if not n.startswith(LOCK_DIR + "/")])
            if on_create is not None:
                on_create(schema)
            cls._create(mirror.stage, schema, codec_file)
            mirror.upload_tree(skip={marker})
            with open(os.path.join(mirror.stage, marker), "rb") as f:
                try:
                    loc.put(marker, f.read(), create=True)
                except AlreadyExists:
                    raise UsageError(f"{url}: another writer created this store at the same moment") from None
        t0 = time.time()
        while not loc.exists(marker):
            if time.time() - t0 > wait_s:
                raise StoreError(f"{url}: rank 0 has not created the store after {wait_s:.0f} s")
            time.sleep(0.5)
        existing = parse_record(read_metadata(loc, marker), url, os.path.basename(marker))
        check_resumable(existing, schema, url)
        _stage_metadata(loc, mirror.stage)
    except BaseException:
        lock.release()
        mirror.cleanup()
        raise
    return cls(mirror.stage, existing, lock, remote=mirror)


def _stage_metadata(loc, stage: str) -> None:
    """What the backends need locally to write shards: every zarr.json (the group and its arrays)."""
    for rel in loc.list():
        if rel == "zarr.json" or rel.endswith("/zarr.json"):
            path = os.path.join(stage, *rel.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(read_metadata(loc, rel))


def finalize_remote(url: str) -> StoreSchema:
    """Every shard committed -> the complete schema, written in one put (the store's commit)."""
    loc = location_for(url)
    marker = _init_marker()
    try:
        schema = parse_record(read_metadata(loc, marker), url, os.path.basename(marker))
    except FileNotFoundError:
        raise StoreError(f"{url}: not a latentstore store being written (no {marker})") from None
    parts = read_parts_at(loc)
    try:
        schema.notes = check_seal(json.loads(read_metadata(loc, f"{PARTS_DIR}/{NOTES_FILE}")), NOTES_FILE)["notes"]
    except FileNotFoundError:
        pass
    complete_schema(schema, parts, url)
    if schema.kind == "zarr":
        from ..backends.zarr_common import ATTRS_KEY
        meta = json.loads(read_metadata(loc, "zarr.json"))
        meta.setdefault("attributes", {})[ATTRS_KEY] = schema.to_dict()
        loc.put("zarr.json", json.dumps(meta, indent=1, sort_keys=True).encode())
    else:
        loc.put(SCHEMA_FILE, json.dumps(schema.to_dict(), indent=1, sort_keys=True).encode())
    return read_schema(url)


def merge_remote(url: str) -> StoreSchema:
    """`latentstore merge` of an object-store store: under the merge lock, one commit."""
    loc = location_for(url)
    if not loc.list():
        raise UsageError(f"{url}: no such store")
    with RemoteLock.for_merge(loc):
        return finalize_remote(url)


def upload_store(local: str, url: str) -> int:
    """Copy a complete local store to an empty object-store prefix, byte for byte; the schema object (root
    zarr.json or schema.json) last, so readers see the store only once all of it is there. Returns the bytes."""
    from ..schema import read_schema as _read
    if not _read(local).complete:
        raise StoreError(f"{local}: the store is incomplete; finish it before uploading")
    require_writable(url)
    loc = location_for(url)
    if loc.list():
        raise UsageError(f"{url} exists; choose an empty destination")
    files = []
    for d, dirs, names in os.walk(local):
        dirs[:] = [x for x in dirs if x != LOCK_DIR]
        files += [os.path.relpath(os.path.join(d, n), local).replace(os.sep, "/") for n in names]
    last = [f for f in files if f in ("zarr.json", SCHEMA_FILE)]
    total = 0
    for rel in sorted(set(files) - set(last)) + last:
        with open(os.path.join(local, rel), "rb") as f:
            data = f.read()
        loc.put(rel, data)
        total += len(data)
    return total
