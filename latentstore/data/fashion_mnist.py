"""Fashion-MNIST from Debian's `dataset-fashion-mnist` (idx files): the classification experiment's data
and the items pasted into the segmentation scenes."""
from __future__ import annotations

import gzip
import os

import numpy as np

from ..errors import UsageError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                         "ankle-boot"]


def read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist(split: str, root: str = FASHION_MNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,)): split "train", or "test"/"val" (the t10k files)."""
    prefix = "train" if split == "train" else "t10k"
    files = [os.path.join(root, f"{prefix}-{k}-idx{n}-ubyte.gz") for k, n in (("images", 3), ("labels", 1))]
    if not all(os.path.exists(f) for f in files):
        raise UsageError(f"{files[0]} not found: apt-get update && apt-get install -y dataset-fashion-mnist")
    return read_idx(files[0]), read_idx(files[1])
