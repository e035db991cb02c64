"""Dynamic batching behind `submit(x) -> Future`, as Triton's dynamic batcher does it.

    b = DynamicBatcher(run_batch, BatcherConfig(max_batch=16, max_delay_ms=5, queue_size=256))
    fut = b.submit(x)          # concurrent.futures.Future; QueueFull when the bounded queue is full
    fut.result()               # run_batch([... x ...])[i]; an Exception instance there fails that item only

One thread runs the model. When it is idle, a request is dispatched at once, with whatever else is queued
(no fixed wait: at concurrency 1 a timer would only add latency). When it was busy, requests that
arrived meanwhile form the next batch, and it waits up to max_delay_ms for the batch to fill, since
more are arriving, unless `fill_pays` says the batch's first item gains nothing from company (work whose cost
per item does not fall with the batch: it takes what is queued, and arrivals during one batch form the next,
which is group commit without a timer). The queue is bounded: submit raises QueueFull rather than building a backlog (the
service answers 503 with Retry-After). A caller that stops waiting (a client that disconnected) does not
cancel its item: the batch it is in runs and completes as if it had stayed. `drain()` stops intake and
returns once every accepted item has its result (SIGTERM). Any engine (a Ray Serve deployment, one
Kubernetes replica) can wrap `submit` unchanged.
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass


class QueueFull(Exception):
    """The bounded queue is full: try again later."""


class Draining(Exception):
    """The batcher is shutting down and takes no new work."""


@dataclass
class BatcherConfig:
    max_batch: int = 16  # items per model call at most; 1 = one request at a time (no batching)
    max_delay_ms: float = 5.0  # how long a batch waits to fill, only while the model was busy
    queue_size: int = 256  # items waiting at most; beyond it submit raises QueueFull


@dataclass
class _Item:
    x: object
    future: Future
    t_submit: float


class DynamicBatcher:
    def __init__(self, run_batch, cfg: BatcherConfig, on_batch=None, name: str = "batcher", fill_pays=None):
        """run_batch(list of x) -> list of results (or Exception instances), in order.
        on_batch(size, queue_seconds list, compute_seconds): a metrics hook, called after each batch.
        fill_pays(x) -> bool: whether a batch starting with x is worth waiting up to max_delay_ms for (a model
        that runs cheaper per item in a batch); False: it takes what is queued and goes (None: always True)."""
        if cfg.max_batch < 1 or cfg.queue_size < 1 or cfg.max_delay_ms < 0:
            raise ValueError("max_batch and queue_size must be >= 1, max_delay_ms >= 0")
        self.run_batch, self.cfg, self.on_batch = run_batch, cfg, on_batch
        self.fill_pays = fill_pays
        self._q: queue.Queue[_Item] = queue.Queue(maxsize=cfg.queue_size)
        self._accepting = True
        self._busy = False
        self._submit_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._stop = False
        self._thread.start()

    def submit(self, x) -> Future:
        fut: Future = Future()
        with self._submit_lock:
            if not self._accepting:
                raise Draining("shutting down")
            try:
                self._q.put_nowait(_Item(x, fut, time.perf_counter()))
            except queue.Full:
                raise QueueFull(f"queue full ({self.cfg.queue_size} waiting)") from None
        return fut

    @property
    def depth(self) -> int:
        return self._q.qsize()

    # ------------------------------------------------------------------------------ the model thread
    def _take(self, first: _Item, was_busy: bool) -> list[_Item]:
        batch = [first]
        deadline = time.perf_counter() + self.cfg.max_delay_ms / 1000.0
        while len(batch) < self.cfg.max_batch:
            try:
                batch.append(self._q.get_nowait())
                continue
            except queue.Empty:
                pass
            left = deadline - time.perf_counter()
            if not was_busy or left <= 0 or self._stop:
                break
            try:
                batch.append(self._q.get(timeout=left))
            except queue.Empty:
                break
        return batch

    def _loop(self) -> None:
        while True:
            was_busy = not self._q.empty()  # requests waited while the previous batch ran: more are coming
            try:
                first = self._q.get(timeout=0.1)
            except queue.Empty:
                if self._stop:
                    return
                continue
            wait = was_busy and self.cfg.max_batch > 1 and (self.fill_pays is None or self.fill_pays(first.x))
            batch = self._take(first, wait)
            t0 = time.perf_counter()
            try:
                results = self.run_batch([it.x for it in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} items")
            except Exception as e:  # the whole batch failed: every item gets the error
                results = [e] * len(batch)
            t1 = time.perf_counter()
            for it, r in zip(batch, results):
                if it.future.cancelled():  # its caller gave up: the item ran anyway, the others are unaffected
                    continue
                try:
                    it.future.set_exception(r) if isinstance(r, BaseException) else it.future.set_result(r)
                except InvalidStateError:  # cancelled just now
                    pass
            if self.on_batch is not None:
                try:
                    self.on_batch(len(batch), [t0 - it.t_submit for it in batch], t1 - t0)
                except Exception:
                    pass

    def drain(self, timeout_s: float = 60.0) -> bool:
        """Refuse new items, finish the queued ones, stop the thread; True when all finished in time."""
        with self._submit_lock:
            self._accepting = False
        self._stop = True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()
