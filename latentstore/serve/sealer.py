"""The sealer: intake log records -> the journal -> ordinary store shards -> the search index.

One sealer per store (the process holding `_locks/serve-sealer.lock`; with several uvicorn workers the others
only write intake segments). A seal:
  1. closed intake segments are read (torn tails dropped), records whose sha256 the store or the journal
     already holds are skipped (exactly once), the rest get the next slots in order;
  2. they are appended to the journal of their shard (`_serve/journal/shard-K.jnl`), fsynced, folder fsynced;
     only then are they counted as journaled (slots taken, sha256 known);
  3. the seal marker is written (store/append.py), the store grows if a new shard is needed, every touched
     shard is rewritten whole from its journal (a shard's bytes depend on its samples alone, as in a
     conversion), the schema is re-finalized, every file and folder written is fsynced, the marker removed;
  4. the index gets the records; only now are the intake segments deleted, and a shard that is full has
     its journal deleted: the store holds it for good, durably.
Any failed write (ENOSPC, EIO, EROFS, at any point: `wal.FAULTS` names them) fails the round: nothing is
deleted, the journal is cut back to what was durable, and the next round starts again from what is on disk
(`_reload`), so every record stays in the intake or the journal until the store holds it durably. A crash
between any two steps leaves a state the next start repairs: journals are re-sealed (rewriting a shard from
its journal is idempotent), intake records already journaled are skipped by sha256, and a store left with the
seal marker is re-finalized (until then readers refuse it in one line: `append.interrupted_seal`).
"""
from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
import time

import numpy as np
import zarr

from ..errors import UsageError, first_line
from ..store.append import (SEAL_MARKER, create_growing_store, grow, init_record, mark_seal, open_growing_store,
                            sync_store, unmark_seal)
from ..store.backends import backend_for, schema_tables, store_coder
from ..store.lock import LOCK_DIR
from ..store.writer import Sample, finalize_store
from .index import SearchIndex
from .wal import FAULTS, WalRecord, append_durably, closed_segments, fsync_dir, repair

log = logging.getLogger("latentstore.serve")
SOURCE_PREFIX = "sha256:"  # a sample's `source` in the store: its upload's sha256, so the store alone dedups


STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG}
SQLITE_STORAGE = ("disk is full", "disk I/O", "readonly")  # how sqlite words the same (the index)


def storage_failure(e: BaseException) -> str | None:
    """One line when `e` (or what it wraps: the atomic writes re-raise one-line errors) is the disk refusing a
    write (full, failing, read-only), else None."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            return os.strerror(e.errno)
        if isinstance(e, sqlite3.OperationalError) and any(w in str(e) for w in SQLITE_STORAGE):
            return str(e)
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


class Sealer:
    def __init__(self, root: str, codec_file: str, new_schema, state_dir: str, index: SearchIndex,
                 on_sealed=None, metrics=None, bitstream=None):
        """new_schema(): the schema to create the store with when it does not exist yet. bitstream(symbols shape,
        payload, (H, W)) -> the complete bitstream a native store keeps (IngestEngine.bitstream)."""
        self.root, self.codec_file, self.new_schema, self.bitstream = root, codec_file, new_schema, bitstream
        self.intake_dir = os.path.join(state_dir, "intake")
        self.journal_dir = os.path.join(state_dir, "journal")
        self.index, self.on_sealed, self.metrics = index, on_sealed, metrics
        self.writer = None
        self.journal: dict[int, list[WalRecord]] = {}  # shard -> every record of that not-yet-full shard
        self.sealed: set[str] = set()  # sha256 of every upload in the store or the (durable) journal
        self.next_slot = 0
        self.dirty: set[int] = set()  # journaled shards whose store rewrite has not succeeded yet
        self.lock = threading.Lock()
        self.last_error: str | None = None  # one line: why the last round failed (None: it succeeded)
        self.storage_error: str | None = None  # ... when that was the disk refusing a write (full, EIO, EROFS)
        self._stale = False  # a round failed: memory may not match the disk; the next round reloads

    # ------------------------------------------------------------------------------ start
    def open(self) -> None:
        """Create or reopen the store (its writer lock taken) and load the journal; `recover` then re-seals."""
        if os.path.exists(os.path.join(self.root, "_parts", "INIT.json")):
            self.writer = open_growing_store(self.root, self.codec_file)
        elif os.path.isdir(self.root) and set(os.listdir(self.root)) - {LOCK_DIR}:
            raise UsageError(f"{self.root} exists and is not a latentstore store (no _parts/INIT.json); "
                             "give a new STORE, or an existing store")
        else:
            self.writer = create_growing_store(self.root, self.new_schema(), self.codec_file)
        os.makedirs(self.journal_dir, exist_ok=True)  # after the store: a new store's folder must be empty
        self._load()

    def _load(self) -> None:
        """What is sealed, the next slot and the journal, from the disk alone."""
        S = self.writer.schema.shard_size
        g = zarr.open_group(self.root, mode="r")
        valid = np.flatnonzero(g["valid"][:])
        sources = g["sources"][:] if len(valid) else []
        self.sealed = {str(sources[i])[len(SOURCE_PREFIX):] for i in valid if str(sources[i]).startswith(SOURCE_PREFIX)}
        self.next_slot = int(valid[-1]) + 1 if len(valid) else 0
        self.journal = {}
        for name in sorted(os.listdir(self.journal_dir)):
            if name.startswith("shard-") and name.endswith(".jnl"):
                recs = repair(os.path.join(self.journal_dir, name))
                if recs:
                    self.journal[int(name[6:12])] = recs
        for recs in self.journal.values():
            self.sealed |= {r.meta["sha256"] for r in recs}
            self.next_slot = max(self.next_slot, max(r.meta["slot"] for r in recs) + 1)
        if self.next_slot % S and self.next_slot // S not in self.journal:
            # a partial shard this service did not journal (a converted store): never rewritten, start after it
            self.next_slot += S - self.next_slot % S
        self.dirty = set(self.journal)  # harmless when already sealed: a rewrite is idempotent

    def _reload(self) -> None:
        self.writer.schema = init_record(self.root)
        self.writer.backend = backend_for(self.root, self.writer.schema)
        self._load()

    def recover(self) -> None:
        """Re-seal every journaled shard (a crash may have cut its last seal short) and index it; idempotent.
        A failure is kept in last_error (the service starts not ready; the background rounds retry)."""
        if self.journal:
            log.info("re-sealing %d journaled shard(s) after a restart", len(self.journal))
        self.seal_once()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    # ------------------------------------------------------------------------------ sealing
    def seal_once(self) -> int:
        """Seal every closed intake segment; returns the number of new samples stored. A failure raises, is
        kept in last_error / storage_error, and leaves every record where the next round finds it."""
        with self.lock:
            t0 = time.time()
            try:
                if self._stale:
                    self._reload()
                    self._stale = False
                n = self._seal()
            except Exception as e:
                self._stale = True
                self.storage_error = storage_failure(e)
                self.last_error = first_line(e, 300, with_type=True)
                if self.metrics is not None:
                    self.metrics.seal_failures.inc()
                raise
            self.last_error = self.storage_error = None
            if self.metrics is not None and n:
                self.metrics.seal_seconds.observe(time.time() - t0)
            if self.metrics is not None:
                self.metrics.stored_samples.set(self.next_slot)
            return n

    def _seal(self) -> int:
        segments = closed_segments(self.intake_dir)
        S = self.writer.schema.shard_size
        marked = os.path.exists(os.path.join(self.root, SEAL_MARKER))
        if not segments and not self.dirty and not marked and not self._full(S):
            return 0
        fresh: list[WalRecord] = []
        skipped: list[dict] = []  # records of uploads already stored or journaled
        seen: set[str] = set()
        slot = self.next_slot
        for path in segments:
            for r in repair(path):
                sha = r.meta["sha256"]
                if sha in self.sealed or sha in seen:
                    skipped.append(r.meta)
                    continue
                seen.add(sha)
                r.meta["slot"] = slot
                slot += 1
                fresh.append(r)
        by_shard: dict[int, list[WalRecord]] = {}
        for r in fresh:
            by_shard.setdefault(r.meta["slot"] // S, []).append(r)
        for k, recs in sorted(by_shard.items()):  # durable in the journal before anything counts them
            with open(self._journal_path(k), "ab") as f:
                append_durably(f, recs, "journal")
        if by_shard:
            FAULTS.check("journal.dirsync")
            fsync_dir(self.journal_dir)
        for k, recs in by_shard.items():
            self.journal.setdefault(k, []).extend(recs)
        self.sealed |= seen
        self.next_slot = slot
        self.dirty |= set(by_shard)
        if self.dirty or marked:
            self._commit(sorted(self.dirty), unfinished=marked)
            self.dirty.clear()
        for path in segments:  # every record of these is durable in the store (and the journal) now
            FAULTS.check("intake.delete")
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
        if segments:
            fsync_dir(self.intake_dir)
        self._close_full(S)
        self._report_skipped(skipped)
        return len(fresh)

    def _report_skipped(self, metas: list[dict]) -> None:
        """A skipped record's upload is stored and indexed under its first record, but this process may hold it
        as pending too (accepted while its first record was being sealed): on_sealed lets it go, as it does for
        the records it stores; else GET would say sealed:false, and its blobs stay in memory, for good."""
        if self.on_sealed is None or not metas:
            return
        done = [m for m in metas if self.index.has_sha(m["sha256"])]  # only what GET can answer from the index
        if done:
            self.on_sealed(done)

    def _journal_path(self, k: int) -> str:
        return os.path.join(self.journal_dir, f"shard-{k:06d}.jnl")

    def _commit(self, shards: list[int], unfinished: bool) -> None:
        """Rewrite `shards` from their journals into the store, durably, under the seal marker; then index.
        `unfinished`: an earlier seal left its marker (its growth may not be durable yet: everything is fsynced)."""
        schema = self.writer.schema
        S, before = schema.shard_size, schema.num_shards
        names = list(schema.label_names)
        for k in shards:
            for r in self.journal[k]:
                lab = r.meta.get("label")
                if lab is not None and lab not in names:
                    names.append(lab)
        FAULTS.check("seal.marker")
        mark_seal(self.root)
        FAULTS.check("store.grow")
        grow(self.writer, max(schema.num_slots, (max(shards, default=0) + 1) * S), names)
        for k in shards:
            self._decode(self.journal[k])
            samples = [self._sample(r, names) for r in self.journal[k]]
            FAULTS.check("store.shard")
            self.writer.write_shard(k, samples, [])
        FAULTS.check("store.finalize")
        finalize_store(self.root)
        FAULTS.check("store.sync")
        after, grown = self.writer.schema.num_shards, self.writer.schema is not schema  # grow() replaced it
        sync_store(self.writer, sorted(set(shards) | set(range(before, after))) if shards else list(range(after)),
                   grown or unfinished)
        FAULTS.check("seal.unmark")
        unmark_seal(self.root)
        metas = [r.meta for k in shards for r in self.journal[k]]
        FAULTS.check("index.add")
        self.index.add(metas)
        if self.on_sealed is not None:
            self.on_sealed(metas)

    def _full(self, S: int) -> bool:
        return any(len(recs) == S for recs in self.journal.values())

    def _close_full(self, S: int) -> None:
        """A full shard is in the store for good, durably: its journal goes (after the index has it)."""
        removed = False
        for k in sorted(self.journal):
            if len(self.journal[k]) == S:
                FAULTS.check("journal.close")
                os.remove(self._journal_path(k))
                del self.journal[k]
                removed = True
        if removed:
            fsync_dir(self.journal_dir)

    def _decode(self, records: list[WalRecord]) -> None:
        """Each record's symbols: format 1 carries them, format 2 decodes its payload (once per record)."""
        todo = []
        for r in records:
            if r.symbols is None and r.symbols_bytes is not None:
                r.symbols = np.frombuffer(r.symbols_bytes, np.uint8).reshape(r.meta["latent_shape"])
            elif r.symbols is None:
                todo.append(r)
        from ..codec.entropy.rans_v2 import decode_batch
        by_shape: dict[tuple, list[WalRecord]] = {}  # a fixed-size store has one shape; a native one, many
        for r in todo:
            by_shape.setdefault(tuple(r.meta["latent_shape"]), []).append(r)
        schema = self.writer.schema
        for shape, recs in by_shape.items():
            out = decode_batch([r.payload for r in recs], schema_tables(schema, store_coder(schema)), shape)
            for r, sym in zip(recs, out):
                r.symbols = sym

    def _sample(self, r: WalRecord, names: list) -> Sample:
        m = r.meta
        native = self.writer.schema.policy.get("mode") == "native"  # the complete bitstream, at the photo's size
        return Sample(slot=m["slot"], label=names.index(m["label"]) if m.get("label") is not None else -1,
                      symbols=r.symbols, size=tuple(m["size"]), stored_size=tuple(m["stored_size"]),
                      source=SOURCE_PREFIX + m["sha256"], source_bytes=int(m["source_bytes"]),
                      payload=None if native else r.payload,
                      bitstream=self.bitstream(r.symbols.shape, r.payload, tuple(m["size"])) if native else b"")
