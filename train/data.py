"""Data helpers for the training jobs: stores decoded to RGB (cached), their masks; Fashion-MNIST lives in latentstore.data."""
from __future__ import annotations

import hashlib
import os

import numpy as np
import torch



def cache_dir() -> str:
    d = os.environ.get("LATENTSTORE_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "latentstore"))
    os.makedirs(d, exist_ok=True)
    return d


@torch.no_grad()
def decoded_store(path: str, batch: int = 256) -> tuple[np.ndarray, np.ndarray, int]:
    """Every sample of a fixed-size store decoded to RGB by the store's own codec: (images, labels, classes).

    Cached by the store's checksums, so a store is decoded once however many runs read it."""
    from latentstore.store import open_store
    s = open_store(path)
    key = hashlib.sha256(repr(sorted(s.schema.checksums.items())).encode()).hexdigest()[:16]
    cache = os.path.join(cache_dir(), f"recon-{key}.npz")
    if os.path.exists(cache):
        z = np.load(cache, allow_pickle=False)
        return z["images"], z["labels"], int(z["num_classes"])
    if s.mode != "fixed":
        raise ValueError("decoding to an RGB training set needs a fixed-size store")
    codec = s.codec
    size = s.schema.policy["size"]
    out = np.empty((len(s), size, size, 3), np.uint8)
    for b0 in range(0, len(s), batch):
        sym = torch.from_numpy(np.stack([s.symbols(i) for i in range(b0, min(len(s), b0 + batch))]))
        x = codec.reconstruct(sym)
        out[b0: b0 + len(sym)] = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    labels = s.labels.astype(np.int64)
    tmp = cache + f".tmp{os.getpid()}.npz"
    np.savez(tmp, images=out, labels=labels, num_classes=len(s.schema.label_names))
    os.replace(tmp, cache)
    return out, labels, len(s.schema.label_names)


def store_masks(path: str) -> np.ndarray:
    """(N, S, S) uint8 class masks of a fixed-size store, in sample order (the order decoded_store's images have);
    255 where nothing is labelled. A store without masks is a UsageError: it cannot train segmentation."""
    from latentstore.store import open_store
    s = require_masks(open_store(path))
    return np.stack([s.mask(i) for i in range(len(s))])


def require_masks(store):
    """The store, if it holds S x S masks; else a UsageError saying how to make one that does."""
    from latentstore.errors import UsageError
    if not store.schema.has_masks or store.mode != "fixed":
        raise UsageError(f"{store.path}: the store holds no masks (convert a VOC-layout root with --split)")
    return store
