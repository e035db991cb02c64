"""One network call per core: persistent worker threads with one torch intra-op thread each.

Why: on the 2-core dev machine, shared with other work, two encoders of one thread each ran 1.2-1.8x faster
than one encoder on two threads (benchmarks/results/convert_cpu_policy.md): every intra-op parallel region ends in
a barrier that waits for the slowest thread, and a descheduled core makes it wait. The values do not change:
oneDNN splits a convolution's outputs across threads, never its sums, and an image's symbols do not depend
on its batch (tests/test_cpu_policy.py). Used by conversion's encoder (chunks of a batch) and by tiled
compress / decompress (tiles).

torch.set_num_threads is per thread for the caller, but it also sets the default that threads created later
start with; the pool sets one thread in each worker, waits until all are up, then restores the default.
LATENTSTORE_WORKERS=N sets the number of workers (1: no pool, one call at a time on all cores).
"""
from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import Future

import torch

from ..errors import UsageError

_POOLS: dict[int, "CoreWorkers"] = {}
_LOCK = threading.Lock()
_LOCAL = threading.local()  # .worker: this thread is a pool worker (nested calls then run inline)


def worker_count(workers: int | None = None, device="cpu") -> int:
    """Workers for `device`: the argument, else LATENTSTORE_WORKERS, else one per torch thread on the CPU
    (torch's default: one per physical core); 1 on CUDA (the GPU runs one call on all its SMs)."""
    if workers is None:
        env = os.environ.get("LATENTSTORE_WORKERS", "").strip()
        try:
            workers = int(env) if env else (1 if torch.device(device or "cpu").type == "cuda" else torch.get_num_threads())
        except ValueError:
            raise UsageError(f"LATENTSTORE_WORKERS={env!r}: expected a number of workers") from None
    return max(1, int(workers))


class CoreWorkers:
    """n daemon threads, one torch thread each, taking calls from one queue."""

    def __init__(self, n: int):
        self.n = n
        self.jobs: queue.Queue = queue.Queue()
        default = torch.get_num_threads()
        up = threading.Barrier(n + 1)
        self.threads = [threading.Thread(target=self._loop, args=(up,), daemon=True, name=f"core-{i}")
                        for i in range(n)]
        for t in self.threads:
            t.start()
        up.wait()  # every worker has set its own thread count
        torch.set_num_threads(default)  # the default new threads start with, as it was

    def _loop(self, up: threading.Barrier) -> None:
        _LOCAL.worker = True
        torch.set_num_threads(1)
        up.wait()
        while True:
            fn, arg, fut = self.jobs.get()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(arg))
            except BaseException as e:  # handed to the caller
                fut.set_exception(e)

    def submit(self, fn, arg) -> Future:
        fut: Future = Future()
        self.jobs.put((fn, arg, fut))
        return fut

    def map(self, fn, items: list, on_done=None) -> list:
        """[fn(x) for x in items], computed by the workers; results in order; on_done() after each."""
        futs = [self.submit(fn, x) for x in items]
        out = []
        for f in futs:
            out.append(f.result())
            if on_done is not None:
                on_done()
        return out


def pool(n: int) -> CoreWorkers:
    """The process's pool of n workers (made once, kept: its threads wait on a queue and cost nothing idle)."""
    with _LOCK:
        if n not in _POOLS:
            _POOLS[n] = CoreWorkers(n)
        return _POOLS[n]


def run_all(fn, items: list, workers: int, on_done=None) -> list:
    """[fn(x) for x in items]: on this thread when workers == 1 or there is one item, else on the pool."""
    if workers <= 1 or len(items) <= 1 or getattr(_LOCAL, "worker", False):  # inline: no deadlock on nesting
        out = []
        for x in items:
            out.append(fn(x))
            if on_done is not None:
                on_done()
        return out
    return pool(workers).map(fn, items, on_done)
