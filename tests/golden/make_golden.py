"""Makes the golden fixtures ONCE. Never rerun it to "fix" a failing golden test: a failure means a
format change, which needs a new version number and a reader for the old one.

    python tests/golden/make_golden.py   # writes into tests/golden/
"""
import os
import shutil
import sys

import numpy as np
import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from latentstore.codec.api import compress, image_symbols  # noqa: E402
from latentstore.codec.model import CodecConfig, LatentCodec  # noqa: E402
from latentstore.codec.zoo import load_codec_file, save_codec  # noqa: E402
from latentstore.store.zarr_codec import LatentANSNumcodec  # noqa: E402
from tests.store_fixtures import make_store  # noqa: E402


def main():
    torch.manual_seed(1234)
    model = LatentCodec(CodecConfig(name="golden-c4", C=4, N=8, L=6, target_bpp=0.3)).eval()
    rng = np.random.default_rng(7)
    model.update(rng.integers(1, 5000, size=(4, 6)), floor_fraction=1e-3)
    codec_path = os.path.join(HERE, "golden-c4.safetensors")
    save_codec(model, codec_path, {"note": "golden fixture codec; never retrain"})
    codec = load_codec_file(codec_path)
    freqs = codec.freqs
    img = (rng.random((29, 43, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(os.path.join(HERE, "image.png"))
    open(os.path.join(HERE, "image.lsb"), "wb").write(compress(img, codec))
    np.save(os.path.join(HERE, "image_symbols.npy"), image_symbols(codec, img))
    chunk = rng.integers(0, 6, size=(1, 4, 3, 5)).astype(np.uint8)
    nc = LatentANSNumcodec(freqs, chunk.shape)
    open(os.path.join(HERE, "chunk.ans"), "wb").write(nc.encode(chunk))
    np.save(os.path.join(HERE, "chunk.npy"), chunk)
    src = os.path.join(HERE, "_src")
    os.makedirs(os.path.join(src, "a"), exist_ok=True)
    os.makedirs(os.path.join(src, "b"), exist_ok=True)
    for i in range(3):
        Image.fromarray((rng.random((20 + i, 24, 3)) * 255).astype(np.uint8)).save(os.path.join(src, "ab"[i % 2], f"{i}.png"))
    for kind, name in (("zarr", "store.zarr"), ("wds", "store_wds")):
        dst = os.path.join(HERE, name)
        shutil.rmtree(dst, ignore_errors=True)
        make_store(src, dst, codec_path, fmt=kind, size=16, shard_size=2)
    from latentstore.store import open_store
    s = open_store(os.path.join(HERE, "store.zarr"))
    np.save(os.path.join(HERE, "store_symbols.npy"), np.stack([s.symbols(i) for i in range(len(s))]))
    shutil.rmtree(src)


if __name__ == "__main__":
    main()
