"""What benchmarks/loader.py and benchmarks/loader_s3.py share: the JPEG inputs, the DataLoader set-ups and the
measuring loop (one home, so the local and the object-storage rows are measured the same way)."""
from __future__ import annotations

import os
import time

import numpy as np


def make_jpegs(root: str, n: int, seed: int = 0) -> str:
    from PIL import Image
    from latentstore.data.photos import available_photos, resize_shorter
    done = os.path.join(root, ".done")
    if os.path.exists(done):
        return root
    rng = np.random.default_rng(seed)
    photos = [resize_shorter(p.load(), 700) for p in available_photos()]
    for i in range(n):
        a = photos[i % len(photos)]
        h, w = a.shape[:2]
        ch, cw = min(h, int(rng.integers(300, 400))), min(w, int(rng.integers(350, 500)))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        cls = f"c{i % 10}"
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        Image.fromarray(a[y: y + ch, x: x + cw]).save(os.path.join(root, cls, f"{i:06d}.jpg"), quality=90)
    open(done, "w").close()
    return root


def measure(make_iter, n_samples: int, min_seconds: float = 2.0, after_warmup=None, stats: dict | None = None) -> float:
    """samples/s over whole passes after a warm-up pass, repeated until at least min_seconds have passed (a fast
    source reads 600 samples in 30 ms: one pass would measure noise). `after_warmup()` runs between the two."""
    for _ in make_iter():
        pass
    if after_warmup is not None:
        after_warmup()
    t = time.perf_counter()
    n = passes = 0
    while passes == 0 or time.perf_counter() - t < min_seconds:
        got = sum(len(b) for b in make_iter())
        assert got == n_samples, (got, n_samples)
        n, passes = n + got, passes + 1
    if stats is not None:
        stats["samples"] = n  # delivered in the timed passes
    return n / (time.perf_counter() - t)


def torch_loader(ds, workers: int, batch: int = 64):
    import torch
    from latentstore.data.datasets import EpochSampler, collate
    sampler = EpochSampler(len(ds), seed=0)
    # one DataLoader, persistent workers: a training run starts its workers once, not once per pass
    dl = torch.utils.data.DataLoader(ds, batch_size=batch, sampler=sampler, collate_fn=collate, num_workers=workers,
                                     persistent_workers=workers > 0, multiprocessing_context=_context(ds, workers))
    return lambda: (b["label"] for b in dl)


def stream_loader(path: str, workers: int, batch: int = 64):
    import torch
    from latentstore.data.datasets import LatentBatchStream
    ds = LatentBatchStream(path, batch, train=True, crop=28)
    dl = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers, persistent_workers=workers > 0,
                                     multiprocessing_context=_context(ds, workers))
    return lambda: (b["label"] for b in dl)


FORCE_CONTEXT: list = []  # loader_s3's control row: local stores read by forkserver workers too


def _context(ds, workers: int):
    """forkserver workers for an object store (obstore does not survive fork), the default otherwise."""
    from latentstore.data.datasets import worker_context
    if workers == 0:
        return None
    return FORCE_CONTEXT[0] if FORCE_CONTEXT else worker_context(ds)
