"""Writing a latent store, one shard at a time, by one or many processes.

Slots: the sorted input list is cut into shards of `shard_size` inputs; shard k holds inputs
[k*S, (k+1)*S) at the same slots, valid samples in place and rejected ones left as padding
(`valid` is False there). So a shard's bytes depend on its inputs alone: any rank can write
any shard, a resumed run rewrites exactly what an uninterrupted one would have, and ranks never
touch the same file.

Commit protocol: a shard's files are written (zarr writes each file atomically), then
`_parts/shard-K.json` records its sample count, rejects, totals and sha256 checksums, written
atomically. A shard without its part file does not exist: resume rewrites it. `finalize`
(run by the single process, or `latentstore merge` after all ranks) writes the complete schema.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import time
from dataclasses import dataclass

import numpy as np

from .. import __version__
from ..atomic import remove_stale_temps, write_json_atomic
from ..errors import StoreError, UsageError
from .backends import backend_for
from .lock import LOCK_DIR, WriterLock
from .records import (INIT_MARKER, NOTES_FILE, check_resumable, check_seal, complete_schema,  # noqa: F401
                      parse_record, read_parts_at, read_record, seal)
from .remote.location import is_remote, location_for
from .schema import CODEC_FILE, PARTS_DIR, StoreSchema, read_metadata, read_schema



@dataclass
class Sample:
    slot: int  # global input index: the sample's position in the store
    label: int  # class index (-1: unlabelled)
    symbols: np.ndarray  # (C, h, w) uint8
    size: tuple  # original image (H, W)
    stored_size: tuple  # pixels the encoder saw (H, W): S x S in fixed mode
    source: str  # where it came from (path, or tar:member)
    source_bytes: int  # the encoded input file's size
    bitstream: bytes = b""  # the full latentstore bitstream (header + ANS payload)
    mask: np.ndarray | None = None  # (H', W') uint8 class mask at the stored resolution
    # v2's entropy-coded symbols without a container, coded in batch by conversion (numba, or the GPU's rANS
    # encoder); fixed-size Zarr writes its shard files from these. With a payload, `symbols` may be None: the
    # GPU path leaves them on the device (conversion then passes the shard's counts to write_shard)
    payload: bytes | None = None


def sha256_file(path: str) -> str:
    """sha256 of a regular file, streamed; a FIFO, a device (a link to /dev/zero) or a file that grows while it
    is read is a one-line StoreError, never a hang. FileNotFoundError when it is absent."""
    from ..data.imageio import file_kind
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"{path}: is {file_kind(st.st_mode)}, not a regular file")
        h, left = hashlib.sha256(), st.st_size
        while left > 0:
            block = os.read(fd, min(1 << 20, left))
            if not block:
                break  # truncated while read: the checksum will not match
            h.update(block)
            left -= len(block)
        if os.read(fd, 1):
            raise StoreError(f"{path}: grew while it was being read")
        return h.hexdigest()
    finally:
        os.close(fd)


def same_shape_stacks(samples: list[Sample]):
    """The samples' symbols as (N, C, h, w) stacks, one per latent shape (a fixed-size store has one; the service
    recounts a whole shard at each seal, where a loop of per-sample bincounts was a third of its sealer's time)."""
    by_shape: dict[tuple, list[np.ndarray]] = {}
    for s in samples:
        by_shape.setdefault(tuple(s.symbols.shape), []).append(s.symbols)
    return [np.stack(group) for group in by_shape.values()]


def symbol_counts(samples: list[Sample], C: int, L: int) -> np.ndarray:
    """(C, L) symbol counts of samples; conversion passes the kernel's own histograms instead."""
    from ..codec.entropy.rans_v2 import context_counts  # one numba pass; summed over contexts
    hist = np.zeros((C, L), dtype=np.int64)
    for stack in same_shape_stacks(samples):
        hist += context_counts(stack, L).sum(1)
    return hist


def cross_entropy_bits(counts: np.ndarray, freqs: np.ndarray) -> float:
    """Bits of symbols with these (C, L) counts under the frozen per-channel model: the entropy-estimated size."""
    logp = np.log2(freqs / freqs.sum(1, keepdims=True))
    return float(-(np.asarray(counts) * logp).sum())


class StoreWriter:
    """Create or resume a store at `root`; write shards; finalize."""

    def __init__(self, root: str, schema: StoreSchema, lock: WriterLock | None = None, remote=None):
        self.root = root  # where the backend writes: the store, or a remote store's local staging folder
        self.schema = schema
        self.freqs = np.asarray(schema.codec["freqs"], dtype=np.int64)
        self.backend = backend_for(root, schema)
        self.lock = lock
        self.remote = remote  # remote.commit.RemoteMirror of an object-store destination, else None

    # ----------------------------------------------------------------------------- opening
    @classmethod
    def open(cls, root: str, schema: StoreSchema, codec_file: str, resume: bool, rank: int = 0,
             world: int = 1, wait_s: float = 600.0, on_create=None) -> "StoreWriter":
        """Take this rank's writer lock; rank 0 creates the store (or checks it on resume), other ranks wait
        for it. `on_create(schema)` completes the schema just before creation (rank 0, a new store only):
        the work that must happen once per store, like fitting its tables. Call `close()` when done."""
        if is_remote(root):  # staged locally, committed object by object (store/remote/commit.py)
            from .remote.commit import open_remote
            return open_remote(cls, root, schema, codec_file, resume, rank, world, wait_s, on_create)
        marker = os.path.join(root, PARTS_DIR, INIT_MARKER)
        if rank == 0 and _has_content(root) and not resume:
            raise UsageError(f"{root} exists; pass --resume to continue it, or choose a new destination")
        if rank == 0 and _has_content(root) and not _half_created_by_us(root):  # other ranks only wait for rank 0
            raise UsageError(f"{root} exists and is not a latentstore store; refusing to write into it")
        lock = WriterLock.for_rank(root, rank, world).acquire()
        try:
            if rank == 0 and not resume and os.path.exists(marker):  # another run created it meanwhile
                raise UsageError(f"{root} exists; pass --resume to continue it, or choose a new destination")
            remove_stale_temps(root)  # what a killed writer left behind
            if rank == 0 and not os.path.exists(marker):
                _clear_except_locks(root)  # killed while being created: nothing can be committed before INIT
                if on_create is not None:
                    on_create(schema)
                cls._create(root, schema, codec_file)
            t0 = time.time()
            while not os.path.exists(marker):
                if time.time() - t0 > wait_s:
                    raise StoreError(f"{root}: rank 0 has not created the store after {wait_s:.0f} s")
                time.sleep(0.2)
            existing = read_record(marker, root)
            check_resumable(existing, schema, root)
        except BaseException:
            lock.release()
            raise
        return cls(root, existing, lock)

    @classmethod
    def _create(cls, root: str, schema: StoreSchema, codec_file: str) -> None:
        schema.created = schema.created or time.strftime("%Y-%m-%d")
        schema.latentstore_version = __version__
        backend = backend_for(root, schema)
        backend.create()
        os.makedirs(os.path.join(root, PARTS_DIR), exist_ok=True)
        shutil.copyfile(codec_file, os.path.join(root, CODEC_FILE))
        # the files a reader trusts that no shard rewrites: checksummed once, here
        schema.checksums = {rel: sha256_file(os.path.join(root, rel)) for rel in [CODEC_FILE] + backend.metadata_files()}
        backend.write_schema(schema)
        write_json_atomic(schema.to_dict(), os.path.join(root, PARTS_DIR, INIT_MARKER))

    def close(self) -> None:
        """Release the writer lock (idempotent)."""
        if self.lock is not None:
            self.lock.release()
        if self.remote is not None:
            self.remote.cleanup()

    def ideal_bits(self, samples: list[Sample], counts: np.ndarray | None = None) -> float:
        """What an ideal coder spends on the samples under the store's own model: v1 from (C, L) symbol counts,
        v2 / v3 from (C, contexts, L) context counts against the store's fitted tables. `counts`: either, when the
        caller has them (conversion: one bincount per batch, on the GPU there); else the samples are counted here,
        once."""
        from ..codec.entropy.rans_v2 import PROB_SCALE
        from .backends import schema_tables, store_coder
        from .coders import lane_coder
        coder = store_coder(self.schema)
        lane = lane_coder(coder)
        if lane is None:
            if counts is None:
                counts = symbol_counts(samples, *self.freqs.shape)
            return cross_entropy_bits(np.sum(counts, 1) if np.ndim(counts) == 3 else counts, self.freqs)
        tables = schema_tables(self.schema, coder)
        if np.shape(counts) != tables.shape:
            counts = sum(lane.context_counts(stack, self.freqs.shape[1]) for stack in same_shape_stacks(samples))
        return float(-(counts * np.log2(tables / PROB_SCALE)).sum())

    def record_notes(self, notes: list[dict]) -> None:
        """Findings that are not inputs (an empty class folder): kept in the schema once finalized."""
        if self.remote is not None:
            return self.remote.put_json(f"{PARTS_DIR}/{NOTES_FILE}", seal({"notes": notes}))
        write_json_atomic(seal({"notes": notes}), os.path.join(self.root, PARTS_DIR, NOTES_FILE))

    # ----------------------------------------------------------------------------- shards
    def part_path(self, k: int) -> str:
        return os.path.join(self.root, PARTS_DIR, f"shard-{k:06d}.json")

    def committed(self) -> set[int]:
        if self.remote is not None:
            return self.remote.committed()
        d = os.path.join(self.root, PARTS_DIR)
        return {int(f[6:12]) for f in os.listdir(d) if f.startswith("shard-") and f.endswith(".json")}

    def shard_slots(self, k: int) -> range:
        S = self.schema.shard_size
        return range(k * S, min((k + 1) * S, self.schema.num_slots))

    def write_shard(self, k: int, samples: list[Sample], rejects: list[dict], counts: np.ndarray | None = None) -> dict:
        """Write and commit shard k. `counts`: the shard's symbol or context counts, when the caller has them."""
        slots = self.shard_slots(k)
        assert all(s.slot in slots for s in samples), "sample outside its shard"
        samples = sorted(samples, key=lambda s: s.slot)
        files = self.backend.write_shard(k, slots, samples)
        checksums = {os.path.relpath(f, self.root): sha256_file(f) for f in files}
        latent_bytes = sum(os.path.getsize(f) for f in files if self.backend.is_payload(os.path.relpath(f, self.root)))
        payload, index = self.backend.payload_accounting(k, samples)
        part = {
            "shard": k, "samples": len(samples), "rejects": rejects, "checksums": checksums,
            "totals": {
                "source_bytes": int(sum(s.source_bytes for s in samples)),
                "source_pixels": int(sum(s.size[0] * s.size[1] for s in samples)),
                "stored_pixels": int(sum(s.stored_size[0] * s.stored_size[1] for s in samples)),
                "latent_bytes": int(latent_bytes),
                "entropy_payload_bytes": int(payload),  # entropy-coded symbols only
                "index_bytes": int(index),  # shard index (Zarr); the rest of latent_bytes is per-sample container
                "entropy_bits": self.ideal_bits(samples, counts) if samples else 0.0,
            },
        }
        if self.remote is not None:  # the shard's objects, then its record (conditional create), last
            self.lock.heartbeat()  # renewing the lease first: a writer whose lock was taken commits nothing
            self.remote.commit_shard(k, files, seal(part), self.root)
            return part
        write_json_atomic(seal(part), self.part_path(k))
        if self.lock is not None:
            self.lock.heartbeat()
        return part

    # ----------------------------------------------------------------------------- finalize
    def finalize(self) -> StoreSchema:
        """Check every shard is committed, then write the complete schema (the store's commit)."""
        return finalize_store(self.remote.url if self.remote is not None else self.root)


def _has_content(root: str) -> bool:
    """Anything in `root` besides the lock folder (which other ranks may create first)."""
    return os.path.isdir(root) and any(e != LOCK_DIR for e in os.listdir(root)) or os.path.isfile(root)


def _clear_except_locks(root: str) -> None:
    if not os.path.isdir(root):
        return
    for e in os.listdir(root):
        if e != LOCK_DIR:
            p = os.path.join(root, e)
            shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.remove(p)


def read_parts(root: str) -> dict[int, dict]:
    """shard -> its commit record, each checked against its own checksum."""
    return read_parts_at(location_for(root))


def _half_created_by_us(root: str) -> bool:
    if os.path.exists(os.path.join(root, PARTS_DIR)) or os.path.exists(os.path.join(root, "schema.json")):
        return True
    try:
        return "latentstore" in json.loads(read_metadata(location_for(root), "zarr.json")).get("attributes", {})
    except (OSError, ValueError, AttributeError, StoreError):
        return False


def finalize_store(root: str) -> StoreSchema:
    if is_remote(root):
        from .remote.commit import finalize_remote
        return finalize_remote(root)
    marker = os.path.join(root, PARTS_DIR, INIT_MARKER)
    if not os.path.exists(marker):
        raise StoreError(f"{root}: not a latentstore store being written (no {PARTS_DIR}/{INIT_MARKER})")
    schema = read_record(marker, root)
    d = os.path.join(root, PARTS_DIR)
    parts = read_parts(root)
    notes = os.path.join(d, NOTES_FILE)
    if os.path.exists(notes):
        try:
            record = json.loads(read_metadata(location_for(root), f"{PARTS_DIR}/{NOTES_FILE}"))
        except ValueError as e:
            raise StoreError(f"{notes}: unreadable ({str(e).splitlines()[0]})") from None
        schema.notes = check_seal(record, f"{PARTS_DIR}/{NOTES_FILE}")["notes"]
    complete_schema(schema, parts, root)
    backend_for(root, schema).write_schema(schema)
    return read_schema(root)
