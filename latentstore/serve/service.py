"""The ingest service without HTTP: the engine, the batcher, the intake log, the sealer and the index of one
serving process, started and drained together.

An upload: sha256 of its bytes (a known one is answered from the index, stored once) -> decode and fit to
the store's size (thread pool) -> `batcher.submit` -> encode + classify in a micro-batch -> the batch's
records appended to the intake log and fsynced (one fsync per batch) -> answered. The sealer (in the one
process holding `_locks/serve-sealer.lock`) moves records into store shards in the background.

Nothing is answered 200 that is not fsynced. While the disk refuses writes (the last intake append or the
last seal failed with ENOSPC, EIO or EROFS) uploads are 507 with the reason and `ready_reason()` says why
/readyz is not ready; the background loop probes the intake with the failed batch's size and retries the
seal every interval, so both clear by themselves once space returns. An idempotency key is bound to the
bytes it was first sent with: the same key with other bytes is a 409.
"""
from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..errors import UsageError, first_line
from ..store.lock import LOCK_DIR
from .batcher import BatcherConfig, DynamicBatcher, Draining, QueueFull
from .config import ServeConfig
from .engine import IngestEngine
from .index import SearchIndex
from .metrics import ServeMetrics
from .health import WriteHealth
from .native import FullLatent, NativeCoder, read_blobs, stored_fields
from .pending import PendingUploads, label_note
from .sealer import Sealer
from .uploads import Rejected, screen_and_decode
from .wal import IntakeLog, WalRecord, live_segments, lock_held

log = logging.getLogger("latentstore.serve")
STATE_DIR = "_serve"  # inside the store: intake, journal, index.sqlite
SEALER_LOCK = "serve-sealer.lock"  # in the store's _locks/: held (flock) by the one sealing process


# A body up to this size is hashed on the event loop, and a client's bitstream for a fixed-size store is checked
# there too (its size is bounded to S x S before a lane decodes: about 0.1 ms for ls-c16 at 256 px): a hop to the
# decode pool and back is two thread wake-ups and GIL handoffs for that much work. Alone it changed latent uploads'
# req/s within the run-to-run noise. Pixels, and a native store's bitstreams (any size), still go to the pool.
INLINE_BYTES = 64 << 10


def image_id(sha: str) -> str:
    return sha[:32]  # stable: the same bytes always get the same id


@dataclass
class _Job:
    rgb: object  # what the batch encodes and/or classifies: (S, S, 3) uint8 pixels, or a CheckedLatent
    meta: dict  # what the record will carry, filled in by the batch
    full: FullLatent | None = None  # a native store: the whole photo's latent (what is stored); None: fixed


class IngestService:
    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.metrics = ServeMetrics(cfg.max_batch)
        self.ready = False
        self.engine: IngestEngine | None = None
        self.sealer: Sealer | None = None
        self.index: SearchIndex | None = None
        self.pending = PendingUploads()  # accepted (durable), not yet sealed and indexed: served from memory
        self._stop, self._wake = threading.Event(), threading.Event()
        self._bg: threading.Thread | None = None
        self._lock_f = None
        self.pool = ThreadPoolExecutor(cfg.decode_threads, thread_name_prefix="decode")
        # admission: every upload past the cheap checks counts from before its hash/decode until its answer, so
        # uploads waiting for the decode pool are bounded too (else the backlog hides in front of the queue)
        self.admit_limit = cfg.queue + cfg.max_batch  # --queue waiting + one batch running
        self._in_flight = 0
        self._admit_lock = threading.Lock()
        self.health = WriteHealth(os.path.join(cfg.store, STATE_DIR, "intake"))

    # ------------------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        cfg = self.cfg
        self.engine = IngestEngine(cfg.codec, cfg.classifier, cfg.device)
        from ..store.append import init_record
        if os.path.exists(os.path.join(cfg.store, "_parts", "INIT.json")):
            self.engine.bind(init_record(cfg.store))  # the codec and layout checked before anything is written
        elif os.path.isdir(cfg.store) and set(os.listdir(cfg.store)) - {LOCK_DIR} and not self._sealer_busy():
            raise UsageError(f"{cfg.store} exists and is not a latentstore store (no _parts/INIT.json); "
                             "give a new STORE, or an existing store")
        os.makedirs(os.path.join(cfg.store, LOCK_DIR), exist_ok=True)
        self._try_become_sealer()
        if self.sealer is None:  # another worker seals: wait for it to have created the store
            self._wait_for_store()
        self.engine.bind(self.sealer.writer.schema if self.sealer else init_record(cfg.store))
        self.native = NativeCoder(self.engine) if self.engine.native else None
        state = os.path.join(cfg.store, STATE_DIR)
        self.index = self.index or SearchIndex(os.path.join(state, "index.sqlite"))
        owner = f"{int(time.time() * 1000):013d}-{os.getpid()}"
        self.intake = IntakeLog(os.path.join(state, "intake"), owner)
        import numpy as np
        self.engine.run([np.zeros((self.engine.side, self.engine.side, 3), np.uint8)])  # warm up
        # the batcher's queue holds every admitted upload: admission (queue + max_batch in flight) is the one bound.
        # A queue of only --queue refused admitted uploads whenever the batcher had not yet taken its batch off it
        # (or took a short one): a 503 'queue full' for an upload admission had let in
        self.batcher = DynamicBatcher(self._run_batch, BatcherConfig(cfg.max_batch, cfg.max_delay_ms, self.admit_limit),
                                      on_batch=self.metrics.on_batch, fill_pays=self._fill_pays)
        self._bg = threading.Thread(target=self._background, name="sealer", daemon=True)
        self._bg.start()
        self.ready = True

    def _sealer_busy(self) -> bool:
        """Another process holds the sealer lock: with `--workers`, a store without INIT.json yet is one being
        created by the worker that took it (this one waits for it), not a foreign folder."""
        return bool(lock_held(os.path.join(self.cfg.store, LOCK_DIR, SEALER_LOCK)))

    def _try_become_sealer(self) -> bool:
        path = os.path.join(self.cfg.store, LOCK_DIR, SEALER_LOCK)
        f = open(path, "a")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            return False
        self._lock_f = f
        state = os.path.join(self.cfg.store, STATE_DIR)
        sealer = Sealer(self.cfg.store, self.engine.codec_file,
                        lambda: self.engine.new_schema(self.cfg.size, self.cfg.shard_size, "uploads", self.cfg.native),
                        state, None, on_sealed=lambda metas: self.pending.forget([m["sha256"] for m in metas]),
                        metrics=self.metrics, bitstream=self.engine.bitstream)
        try:
            sealer.open()
        except BaseException:
            self._lock_f.close()
            self._lock_f = None
            raise
        self.index = self.index or SearchIndex(os.path.join(state, "index.sqlite"))
        sealer.index = self.index
        try:  # what a killed run left in the journal and its intake: stored and searchable before we are ready
            sealer.recover()
        except Exception:
            if sealer.storage_error is None:
                sealer.close()
                self._lock_f.close()
                self._lock_f = None
                raise
            log.warning("cannot seal at start (%s); starting not ready, retrying every %.1f s", sealer.last_error,
                        self.cfg.seal_interval_s)
        self.sealer = sealer
        return True

    def _wait_for_store(self, timeout_s: float = 300.0) -> None:
        t0 = time.time()
        while not os.path.exists(os.path.join(self.cfg.store, STATE_DIR, "journal")):
            if time.time() - t0 > timeout_s:
                raise UsageError(f"{self.cfg.store}: no sealer created the store within {timeout_s:.0f} s")
            time.sleep(0.2)

    def _background(self) -> None:
        """Rotate this process's intake and seal (sealer) or offer to take over sealing (other workers)."""
        while not self._stop.is_set():
            self._wake.wait(self.cfg.seal_interval_s)
            self._wake.clear()
            if self._stop.is_set():  # stop() rotates and seals once more itself
                break
            try:
                self.health.probe(self.intake)
                self.intake.rotate()
                if self.sealer is None:
                    self._try_become_sealer()
                if self.sealer is not None:
                    self.sealer.seal_once()
                else:
                    self.pending.prune(self.index)
                self.health.round_ok()
            except Exception as e:  # the intake keeps the uploads: the next round retries
                self.health.round_failed(e, self.cfg.seal_interval_s)

    def storage_refusal(self) -> Rejected | None:
        """The 507 an upload gets while the disk refuses writes (health.py), else None."""
        return self.health.refusal(self.sealer)

    def ready_reason(self) -> str | None:
        """None when ready (/readyz 200), else one line saying why not."""
        return self.health.ready_reason(self.ready, self.sealer)

    def stop(self) -> None:
        """Drain: refuse new uploads, finish the queued ones, seal everything, release the store."""
        self.ready = False
        if getattr(self, "batcher", None) is not None:
            self.batcher.drain()
        self._stop.set()
        self._wake.set()
        if self._bg is not None:
            self._bg.join(60)
        try:
            if getattr(self, "intake", None) is not None:
                self.intake.close()
            if self.sealer is not None:
                t0 = time.time()  # other workers stopping too: wait (bounded) for their last segments to close
                while live_segments(self.sealer.intake_dir) and time.time() - t0 < self.cfg.drain_wait_s:
                    time.sleep(0.1)
                self.sealer.seal_once()
        except Exception as e:  # a full disk at shutdown: the records stay in the log for the next start
            log.warning("could not seal everything at shutdown (%s); the next start seals it",
                        first_line(e, with_type=True))
        if self.sealer is not None:
            self.sealer.close()
        if self._lock_f is not None:
            self._lock_f.close()
        self.pool.shutdown(wait=False)

    # ------------------------------------------------------------------------------ lookups
    def lookup(self, image_id_: str) -> dict | None:
        m = self.pending.lookup(image_id_)
        if m is not None:
            return m
        m = self.index.get(image_id_)
        return {**m, "sealed": True} if m else None

    def blobs(self, meta: dict) -> tuple:
        """(symbols (C, h, w) uint8, payload bytes) of an upload, from memory or the store."""
        import numpy as np
        b = self.pending.blobs_of(meta["sha256"])
        if b is not None:
            return np.frombuffer(b[0], np.uint8).reshape(meta["latent_shape"]).copy(), b[1]
        if self.native is not None:
            return read_blobs(self.cfg.store, int(meta["slot"]))
        from ..store.backends import schema_tables
        from ..store.backends.zarr_shards import ShardReader
        from ..store.schema import read_schema
        schema = read_schema(self.cfg.store)
        reader = ShardReader.for_store(self.cfg.store, lambda c: schema_tables(schema, c), recorded=schema.checksums)
        slot = int(meta["slot"])
        return reader.read(slot), reader.payload(slot)

    def search(self, label: str, min_score: float, limit: int) -> list[dict]:
        hits = self.index.search(label, min_score, limit)
        hits += self.pending.search(label, min_score, {h["id"] for h in hits})
        hits.sort(key=lambda h: (-h["score"], h["id"]))
        return hits[:limit]

    # ------------------------------------------------------------------------------ uploads
    def _admit(self) -> None:
        with self._admit_lock:
            if self._in_flight >= self.admit_limit:
                n = self._in_flight
            else:
                self._in_flight += 1
                n = None
        if n is not None:
            raise Rejected(503, f"busy: {n} uploads in flight (limit {self.admit_limit}); retry later", "queue_full",
                           {"Retry-After": "1"})
        self.metrics.in_flight.inc()

    def _release(self, *_ignored) -> None:
        with self._admit_lock:
            self._in_flight -= 1
        self.metrics.in_flight.dec()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def upload(self, data: bytes, label: str | None, key: str | None, t_start: float, latent: bool = False,
                     companion: bytes | None = None) -> dict:
        """Admitted at once or 503 (before any hashing or decoding); the slot is held until the answer, or,
        when the client leaves mid-batch, until its batch finishes. `latent`: `data` is a client's bitstream
        (checked in full, never decoded to pixels); `companion`: a native store's S x S bitstream for the classifier."""
        if not self.ready:
            raise Rejected(503, "not ready", "not_ready", {"Retry-After": "1"})
        refusal = self.storage_refusal()
        if refusal is not None:
            raise refusal
        self._admit()
        held = [None]  # the batch future once submitted: the slot is released when it is done
        try:
            return await self._upload(data, label, key, t_start, held, latent, companion)
        finally:
            fut = held[0]
            if fut is not None and not fut.done():
                fut.add_done_callback(self._release)
            else:
                self._release()

    async def _upload(self, data: bytes, label, key, t_start: float, held: list, latent: bool, companion) -> dict:
        loop = asyncio.get_running_loop()
        small = len(data) + len(companion or b"") <= INLINE_BYTES
        sha = hashlib.sha256(data).hexdigest() if small else \
            await loop.run_in_executor(self.pool, lambda: hashlib.sha256(data).hexdigest())
        known = self.pending.known(sha, key, self.index, image_id(sha))
        if known is not None:
            self.metrics.uploads.labels("duplicate").inc()
            return {**known, **label_note(known, label), "duplicate": True, "timings_ms": {"total": round((time.perf_counter() - t_start) * 1e3, 2)}}
        t0 = time.perf_counter()
        if latent and small and self.native is None:  # S x S at most (checked before any lane decodes): ~0.1 ms
            rgb = self._decode(data, latent, companion)
        else:
            rgb = await loop.run_in_executor(self.pool, self._decode, data, latent, companion)
        full = rgb[2] if len(rgb) > 2 else None
        t1 = time.perf_counter()
        meta = {"id": image_id(sha), "sha256": sha, "label": label, "key": key, "size": list(rgb[1]),
                "shape": list(rgb[1]), "source_bytes": len(data), "encoded_by": "client" if latent else "server",
                "created": time.time()}
        try:
            fut = self.batcher.submit(_Job(rgb[0], meta, full))
        except QueueFull as e:
            raise Rejected(503, f"busy: {e}; retry later", "queue_full", {"Retry-After": "1"}) from None
        except Draining:
            raise Rejected(503, "shutting down", "draining", {"Retry-After": "5"}) from None
        held[0] = fut
        self.metrics.queue_depth.set(self.batcher.depth)
        out = await asyncio.shield(asyncio.wrap_future(fut))  # a client that leaves does not cancel its batch
        t2 = time.perf_counter()
        return {**out, "duplicate": out.get("duplicate", False), "worker": os.getpid(),
                "timings_ms": {"decode": round((t1 - t0) * 1e3, 2), "queue_and_compute": round((t2 - t1) * 1e3, 2),
                               **out.get("timings_ms", {}), "total": round((t2 - t_start) * 1e3, 2)}}

    def _decode(self, data: bytes, latent: bool = False, companion: bytes | None = None):
        """The decode pool: (what the batch runs, the image's (H, W)). A client's bitstream is checked in full
        (latent_ingest), never decoded to pixels; anything refused is a 4xx before a byte of it is stored.
        A native store: also the whole photo's latent, (..., FullLatent) (serve/native.py)."""
        if self.native is not None:
            return self.native.prepare(data, latent, companion, self.cfg.max_pixels)
        if latent:
            c = self.engine.check_latent(data, self.cfg.max_pixels)
            return c, (c.header.H, c.header.W)
        rgb = screen_and_decode(data, self.cfg.max_pixels, self.engine.side)
        return self.engine.prepare(rgb), rgb.shape[:2]

    def _fill_pays(self, job: _Job) -> bool:
        """Waiting for a fuller batch pays for the models only: pixels go through the encoder, and with a classifier
        every upload does. A client's bitstream without a classifier costs the batch ~0.1 ms either way: waiting
        max_delay_ms for company would only hold its answer (and cap the rate at batch / max_delay_ms)."""
        from .latent_ingest import CheckedLatent
        return self.engine.classifier is not None or not isinstance(job.rgb, CheckedLatent)

    def _run_batch(self, jobs: list[_Job]) -> list:
        """The batcher's thread: encode + classify the batch, then append its records durably (one fsync)."""
        t0 = time.perf_counter()
        encoded = self.engine.run([j.rgb for j in jobs])
        t1 = time.perf_counter()
        self.metrics.compute_seconds.observe(t1 - t0)
        side = self.engine.side
        records, outs, fresh, keys, blobs = [], [], {}, {}, {}
        with self.pending.lock:
            for j, e in zip(jobs, encoded):
                m = j.meta
                key = m.get("key")
                conflict = self.pending.conflict(key, m["sha256"], keys)  # the same key, other bytes, both in flight
                if conflict is not None:
                    outs.append(conflict)
                    continue
                dup = fresh.get(m["sha256"]) or self.pending.meta.get(m["sha256"])
                if dup is not None:  # the same bytes twice in flight: stored once
                    outs.append({**dup, **label_note(dup, m.get("label")), "duplicate": True})
                    continue
                kept = j.full or e  # what the store keeps: a native store's whole photo, else the S x S latent
                m.update(stored_fields(j.full) if j.full else
                         {"bytes": e.bitstream_bytes, "bpp": round(8 * e.bitstream_bytes / (side * side), 4),
                          "latent_shape": list(e.symbols.shape), "stored_size": [side, side]})
                m["predictions"] = e.predictions
                fresh[m["sha256"]] = m
                if key:
                    keys[key] = m["sha256"]
                blobs[m["sha256"]] = [kept.symbols.tobytes(), kept.payload]  # served from memory until sealed
                records.append(WalRecord.of_payload(m, kept.payload))
                outs.append(m)
        try:
            self.intake.append(records)
        except OSError as ex:
            self.metrics.log_failures.inc()
            return [self.health.append_failed(ex, sum(len(r.to_bytes()) for r in records))] * len(jobs)
        t2 = time.perf_counter()
        self.metrics.wal_seconds.observe(t2 - t1)
        with self.pending.lock:
            for m in fresh.values():
                self.pending.add(m, blobs[m["sha256"]])
        for r in records:
            self.metrics.bytes_stored.inc(r.meta["bytes"])
        self.metrics.uploads.labels("stored").inc(len(records))
        if self.intake.pending >= self.cfg.seal_batch:
            self._wake.set()
        timing = {"compute": round((t1 - t0) * 1e3, 2), "wal_fsync": round((t2 - t1) * 1e3, 2), "batch": len(jobs)}
        return [o if isinstance(o, Exception) else {**o, "timings_ms": timing} for o in outs]
