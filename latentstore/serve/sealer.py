"""The sealer: intake log records -> the journal -> ordinary store shards -> the search index.

One sealer per store (the process holding `_serve/sealer.lock`; with several uvicorn workers the others
only write intake segments). A seal:
  1. closed intake segments are read (torn tails dropped), records whose sha256 the store or the journal
     already holds are skipped (exactly once), the rest get the next slots in order;
  2. they are appended to the journal of their shard (`_serve/journal/shard-K.jnl`, fsynced), and only then
     are the intake segments deleted;
  3. the store grows if a new shard is needed (store/append.py) and every touched shard is rewritten whole
     from its journal (a shard's bytes depend on its samples alone, as in a conversion), then the schema
     is re-finalized;
  4. the index gets the records; a shard that is full has its journal deleted: the store now holds it.
A crash between any two steps leaves a state the next start repairs: journals are re-sealed (rewriting a
shard from its journal is idempotent), intake records already journaled are skipped by sha256.
"""
from __future__ import annotations

import logging
import os
import threading
import time

import numpy as np
import zarr

from ..errors import UsageError
from ..store.append import create_growing_store, grow, open_growing_store
from ..store.lock import LOCK_DIR
from ..store.writer import Sample, finalize_store
from .index import SearchIndex
from .wal import WalRecord, append_durably, closed_segments, fsync_dir, repair

log = logging.getLogger("latentstore.serve")
SOURCE_PREFIX = "sha256:"  # a sample's `source` in the store: its upload's sha256, so the store alone dedups


class Sealer:
    def __init__(self, root: str, codec_file: str, new_schema, state_dir: str, index: SearchIndex,
                 on_sealed=None, metrics=None):
        """new_schema(): the schema to create the store with when it does not exist yet."""
        self.root, self.codec_file, self.new_schema = root, codec_file, new_schema
        self.intake_dir = os.path.join(state_dir, "intake")
        self.journal_dir = os.path.join(state_dir, "journal")
        self.index, self.on_sealed, self.metrics = index, on_sealed, metrics
        self.writer = None
        self.journal: dict[int, list[WalRecord]] = {}  # shard -> every record of that not-yet-full shard
        self.sealed: set[str] = set()  # sha256 of every upload in the store or the journal
        self.next_slot = 0
        self.dirty: set[int] = set()  # journaled shards whose store rewrite has not succeeded yet
        self.lock = threading.Lock()
        self.last_error: str | None = None

    # ------------------------------------------------------------------------------ start
    def open(self) -> None:
        """Create or reopen the store (its writer lock taken) and reload the journal; `recover` then re-seals."""
        if os.path.exists(os.path.join(self.root, "_parts", "INIT.json")):
            self.writer = open_growing_store(self.root, self.codec_file)
        elif os.path.isdir(self.root) and set(os.listdir(self.root)) - {LOCK_DIR}:
            raise UsageError(f"{self.root} exists and is not a latentstore store (no _parts/INIT.json); "
                             "give a new STORE, or an existing store")
        else:
            self.writer = create_growing_store(self.root, self.new_schema(), self.codec_file)
        os.makedirs(self.journal_dir, exist_ok=True)  # after the store: a new store's folder must be empty
        S = self.writer.schema.shard_size
        g = zarr.open_group(self.root, mode="r")
        valid = np.flatnonzero(g["valid"][:])
        sources = g["sources"][:] if len(valid) else []
        self.sealed = {str(sources[i])[len(SOURCE_PREFIX):] for i in valid if str(sources[i]).startswith(SOURCE_PREFIX)}
        self.next_slot = int(valid[-1]) + 1 if len(valid) else 0
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

    def recover(self) -> None:
        """Re-seal every journaled shard (a crash may have cut its last seal short) and index it; idempotent."""
        if self.journal:
            log.info("re-sealing %d journaled shard(s) after a restart", len(self.journal))
            self._write_shards(sorted(self.journal))
        self._close_full(self.writer.schema.shard_size)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    # ------------------------------------------------------------------------------ sealing
    def seal_once(self) -> int:
        """Seal every closed intake segment; returns the number of new samples stored."""
        with self.lock:
            t0 = time.time()
            segments = closed_segments(self.intake_dir)
            if not segments and not self.dirty:
                return 0
            fresh: list[WalRecord] = []
            for path in segments:
                for r in repair(path):
                    sha = r.meta["sha256"]
                    if sha in self.sealed:
                        continue
                    self.sealed.add(sha)
                    r.meta["slot"] = self.next_slot
                    self.next_slot += 1
                    fresh.append(r)
            S = self.writer.schema.shard_size
            by_shard: dict[int, list[WalRecord]] = {}
            for r in fresh:
                by_shard.setdefault(r.meta["slot"] // S, []).append(r)
            for k, recs in sorted(by_shard.items()):  # durable in the journal before the intake goes
                with open(self._journal_path(k), "ab") as f:
                    append_durably(f, recs)
                self.journal.setdefault(k, []).extend(recs)
            if by_shard:
                fsync_dir(self.journal_dir)
            for path in segments:
                os.remove(path)
            fsync_dir(self.intake_dir)
            self.dirty |= set(by_shard)
            if self.dirty:
                self._write_shards(sorted(self.dirty))
                self.dirty.clear()
                self._close_full(S)
            if self.metrics is not None:
                self.metrics.seal_seconds.observe(time.time() - t0)
                self.metrics.stored_samples.set(self.next_slot)
            return len(fresh)

    def _journal_path(self, k: int) -> str:
        return os.path.join(self.journal_dir, f"shard-{k:06d}.jnl")

    def _write_shards(self, shards: list[int]) -> None:
        schema = self.writer.schema
        S = schema.shard_size
        names = list(schema.label_names)
        for k in shards:
            for r in self.journal[k]:
                lab = r.meta.get("label")
                if lab is not None and lab not in names:
                    names.append(lab)
        grow(self.writer, max(schema.num_slots, (max(shards) + 1) * S), names)
        for k in shards:
            samples = [self._sample(r, names) for r in self.journal[k]]
            self.writer.write_shard(k, samples, [])
        finalize_store(self.root)
        metas = [r.meta for k in shards for r in self.journal[k]]
        self.index.add(metas)
        if self.on_sealed is not None:
            self.on_sealed(metas)

    def _close_full(self, S: int) -> None:
        """A full shard is in the store for good: its journal goes (after the index has it)."""
        for k in sorted(self.journal):
            if (k + 1) * S <= self.next_slot and len(self.journal[k]) == S:
                os.remove(self._journal_path(k))
                del self.journal[k]
        fsync_dir(self.journal_dir)

    def _sample(self, r: WalRecord, names: list) -> Sample:
        m = r.meta
        sym = np.frombuffer(r.blobs[0], np.uint8).reshape(m["latent_shape"])
        return Sample(slot=m["slot"], label=names.index(m["label"]) if m.get("label") is not None else -1,
                      symbols=sym, size=tuple(m["size"]), stored_size=tuple(m["stored_size"]),
                      source=SOURCE_PREFIX + m["sha256"], source_bytes=int(m["source_bytes"]), payload=r.blobs[1])

    # ------------------------------------------------------------------------------ background
    def run(self, stop: threading.Event, wake: threading.Event, interval_s: float) -> None:
        """Seal whenever woken or every interval_s, until stop is set (the caller seals once more after)."""
        while not stop.is_set():
            wake.wait(interval_s)
            wake.clear()
            try:
                self.seal_once()
                self.last_error = None
            except Exception as e:  # keep serving: the intake holds the uploads; the next seal retries
                self.last_error = f"{type(e).__name__}: {e}"
                log.exception("seal failed (will retry)")
