"""Committed golden fixtures must decode in every later version (tests/golden/make_golden.py made them once)."""
import os

import numpy as np
import zarr

from latentstore.codec.api import decompress
from latentstore.codec.zoo import load_codec_file
from latentstore.store import open_store
from latentstore.store.verify import verify
from latentstore.store.zarr_codec import LatentANSNumcodec

G = os.path.join(os.path.dirname(__file__), "golden")


def test_golden_bitstream():
    codec = load_codec_file(os.path.join(G, "golden-c4.safetensors"))
    data = open(os.path.join(G, "image.lsb"), "rb").read()
    header, sym = codec.parse(data)
    assert np.array_equal(sym, np.load(os.path.join(G, "image_symbols.npy")))
    assert decompress(data, codec).shape == (29, 43, 3)


def test_golden_numcodecs_chunk():
    chunk = np.load(os.path.join(G, "chunk.npy"))
    codec = load_codec_file(os.path.join(G, "golden-c4.safetensors"))
    nc = LatentANSNumcodec(codec.freqs, chunk.shape)
    assert np.array_equal(nc.decode(open(os.path.join(G, "chunk.ans"), "rb").read()), chunk)


def test_golden_stores():
    want = np.load(os.path.join(G, "store_symbols.npy"))
    for name in ("store.zarr", "store_wds"):
        s = open_store(os.path.join(G, name))
        assert np.array_equal(np.stack([s.symbols(i) for i in range(len(s))]), want)
        assert verify(os.path.join(G, name))["ok"]
    g = zarr.open_group(os.path.join(G, "store.zarr"), mode="r")  # plain zarr, through the entry point
    assert np.array_equal(g["latents"][:][g["valid"][:]], want)


def test_golden_native_store_from_the_previous_release():
    """A native-size Zarr store written by release 0.1.0 (before the backend split) decodes bit-exactly."""
    want = np.load(os.path.join(G, "store_native_symbols.npz"))
    s = open_store(os.path.join(G, "store_native.zarr"))
    assert len(s) == len(want.files) == 3
    for i in range(len(s)):
        assert np.array_equal(s.symbols(i), want[f"arr_{i}"])
        assert s.decode_rgb(i).shape[:2] == tuple(s.meta(i)["size"])
    assert verify(os.path.join(G, "store_native.zarr"))["ok"]
