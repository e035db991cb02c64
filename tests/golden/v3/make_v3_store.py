"""Makes the v3 (`latentstore.rans3`) golden stores ONCE. Never rerun it to "fix" a failing golden test: a failure
means a format change, which needs a new coder id and a reader for the old one.

    python tests/golden/v3/make_v3_store.py   # writes tests/golden/v3/store.zarr, store_wds, store_symbols.npy

The inputs are tests/golden/make_golden.py's (its seeded generator replayed up to its three images, written to a
temporary folder), converted by the golden codec (golden-c4, L = 6) with `--bitstream v3` as make_golden.py
converts them (size 16, shard size 2): tables fitted to the three images, bitstream v3 in both layouts. The
symbols must be those of the v1 golden stores (tests/golden/store_symbols.npy): same inputs, same codec.
"""
import os
import shutil
import sys
import tempfile

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
G = os.path.dirname(HERE)
sys.path.insert(0, os.path.dirname(os.path.dirname(G)))

from latentstore.store import open_store  # noqa: E402
from tests.store_fixtures import make_store  # noqa: E402


def golden_inputs(src: str) -> None:
    """make_golden.py's three input images: its generator's draws replayed in its order."""
    rng = np.random.default_rng(7)
    rng.integers(1, 5000, size=(4, 6))  # the codec's counts
    rng.random((29, 43, 3))  # image.png
    rng.integers(0, 6, size=(1, 4, 3, 5))  # chunk.npy
    for d in "ab":
        os.makedirs(os.path.join(src, d), exist_ok=True)
    for i in range(3):
        Image.fromarray((rng.random((20 + i, 24, 3)) * 255).astype(np.uint8)).save(os.path.join(src, "ab"[i % 2], f"{i}.png"))


def main():
    codec_path = os.path.join(G, "golden-c4.safetensors")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "_src")
        golden_inputs(src)
        for kind, name in (("zarr", "store.zarr"), ("wds", "store_wds")):
            dst = os.path.join(HERE, name)
            shutil.rmtree(dst, ignore_errors=True)
            make_store(src, dst, codec_path, fmt=kind, size=16, shard_size=2, bitstream="v3")
    z, w = open_store(os.path.join(HERE, "store.zarr")), open_store(os.path.join(HERE, "store_wds"))
    sym = np.stack([z.symbols(i) for i in range(len(z))])
    assert z.schema.codec["coder"] == w.schema.codec["coder"] == "latentstore.rans3"
    assert np.array_equal(sym, np.stack([w.symbols(i) for i in range(len(w))]))
    assert np.array_equal(sym, np.load(os.path.join(G, "store_symbols.npy"))), "not make_golden.py's inputs"
    np.save(os.path.join(HERE, "store_symbols.npy"), sym)


if __name__ == "__main__":
    main()
