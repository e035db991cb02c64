"""Bitstream v2 (`latentstore.rans`) through the codec, the stores, the loaders and the CLI; v1 keeps decoding."""
import os
import shutil

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

from latentstore.cli import main
from latentstore.codec.api import compress, decompress
from latentstore.codec.zoo import load_codec_file
from latentstore.data.datasets import LatentMapDataset, collate
from latentstore.errors import BitstreamError, StoreError
from latentstore.store import open_store
from latentstore.store.verify import verify
from latentstore.store.zarr_codec import LatentRansNumcodec
from tests.store_fixtures import make_stores

G = os.path.join(os.path.dirname(__file__), "golden")
V2 = os.path.join(G, "v2")


def test_golden_v2_bitstream_chunk_and_stores():
    codec = load_codec_file(os.path.join(G, "golden-c4.safetensors"))
    data = open(os.path.join(V2, "image.lsb"), "rb").read()
    header, sym = codec.parse(data)
    assert header.version == 2 and np.array_equal(sym, np.load(os.path.join(V2, "image_symbols.npy")))
    chunk = np.load(os.path.join(V2, "chunk.npy"))
    nc = LatentRansNumcodec(np.load(os.path.join(V2, "tables.npy")), chunk.shape)
    assert np.array_equal(nc.decode(open(os.path.join(V2, "chunk.rans"), "rb").read()), chunk)
    want = np.load(os.path.join(V2, "store_symbols.npy"))
    for name in ("store.zarr", "store_wds"):
        s = open_store(os.path.join(V2, name))
        assert s.schema.codec["coder"] == "latentstore.rans"
        assert np.array_equal(np.stack([s.symbols(i) for i in range(len(s))]), want)
        assert verify(os.path.join(V2, name))["ok"]
    g = zarr.open_group(os.path.join(V2, "store.zarr"), mode="r")  # plain zarr, through the entry point
    assert np.array_equal(g["latents"][:][g["valid"][:]], want)


def test_compress_writes_v2_on_request_decompress_reads_both(codec, photo):
    v2 = compress(photo, codec, "latentstore.rans")  # the default is v3 (tests/test_bitstream_v3.py)
    v1 = compress(photo, codec, "latentstore.ans")
    assert v2[:3] == b"LS\x02" and v1[:4] == b"LSB1"
    assert np.array_equal(decompress(v2, codec), decompress(v1, codec))  # same symbols, so the same pixels
    assert codec.parse(v2)[1].shape == codec.parse(v1)[1].shape


@pytest.mark.parametrize("coder", ["latentstore.rans", "latentstore.rans3"])
def test_damaged_v2_and_v3_bytes_are_bitstream_errors_never_crashes(codec, photo, coder):
    data = compress(photo, codec, coder)
    for bad in (data[:-3], data[:10], data + b"\x00"):
        with pytest.raises(BitstreamError):
            codec.parse(bad)
    rng = np.random.default_rng(0)
    for _ in range(300):  # random single-byte changes and random garbage: a named error or the right symbols
        b = bytearray(data)
        b[int(rng.integers(len(b)))] = int(rng.integers(256))
        for candidate in (bytes(b), bytes(rng.integers(0, 256, int(rng.integers(1, 200)), dtype=np.uint8))):
            try:
                _, sym = codec.parse(candidate)
                assert sym.max(initial=0) < codec.cfg.L
            except BitstreamError:
                pass


def test_other_tables_fail_the_crc(codec, photo):
    from latentstore.codec.entropy.rans_v2 import fit_tables
    data = compress(photo, codec)
    other = fit_tables(np.zeros((1, codec.cfg.C, 4, 4), np.uint8), codec.cfg.L)
    with pytest.raises(BitstreamError, match="other tables"):
        codec.parse(data, other)


@pytest.fixture(scope="module")
def stores(codec_path, tmp_path_factory):
    d = tmp_path_factory.mktemp("v2")
    specs = {"v2": ("v2.zarr", dict(size=64)), "v1": ("v1.zarr", dict(size=64, bitstream="v1")),
             "wds": ("v2w", dict(size=64, fmt="wds"))}
    return {**make_stores(d, codec_path, specs), "dir": d}


def test_v1_and_v2_stores_hold_the_same_symbols_and_v2_is_smaller(stores):
    a, b, w = open_store(stores["v1"]), open_store(stores["v2"]), open_store(stores["wds"])
    assert b.schema.codec["coder"] == "latentstore.rans" and "rans_tables_fit" in b.schema.codec
    for i in range(len(a)):
        assert np.array_equal(a.symbols(i), b.symbols(i)) and np.array_equal(a.symbols(i), w.symbols(i))
    assert np.array_equal(b.read_batch(range(len(b))), np.stack([a.symbols(i) for i in range(len(a))]))
    assert b.schema.totals["entropy_payload_bytes"] < a.schema.totals["entropy_payload_bytes"]
    # WebDataset v2: the batch path (one decode call over the members' payloads) gives the same symbols
    order = list(range(len(w)))[::-1]
    assert np.array_equal(w.read_batch(order), np.stack([a.symbols(i) for i in order]))


def test_a_damaged_member_in_a_webdataset_batch_is_named(stores, tmp_path):
    import shutil
    from latentstore.errors import StoreError
    from latentstore.store.backends.webdataset import LATENT, pread
    dst = tmp_path / "w"
    shutil.copytree(stores["wds"], dst)
    s = open_store(str(dst))
    e = s.backend.index[int(s.slots[2])]
    off, size = e[LATENT]
    raw = bytearray(pread(e["tar"], off, size))
    raw[-3] ^= 0xFF  # in the payload: the container's CRC catches it
    with open(e["tar"], "r+b") as f:
        f.seek(off + size - 3)
        f.write(raw[-3:-2])
    from latentstore.store.backends.webdataset import sample_key
    with pytest.raises(StoreError, match=f"sample {sample_key(int(s.slots[2]))}: .*(CRC|corrupt|checksum)"):
        open_store(str(dst)).read_batch([0, 1, 2, 3])


def test_recode_turns_v1_into_v2_with_equal_symbols(stores, tmp_path):
    res = CliRunner().invoke(main, ["recode", stores["v1"], str(tmp_path / "r.zarr"), "--quiet"])
    assert res.exit_code == 0, res.output
    a, r = open_store(stores["v1"]), open_store(str(tmp_path / "r.zarr"))
    assert r.schema.codec["coder"] == "latentstore.rans" and len(a) == len(r)
    assert all(np.array_equal(a.symbols(i), r.symbols(i)) for i in range(len(a)))
    assert r.schema.totals["source_bytes"] == a.schema.totals["source_bytes"] and verify(str(tmp_path / "r.zarr"))["ok"]


def test_resume_refuses_another_bitstream(stores, codec_path, tmp_path):
    d = str(tmp_path / "s.zarr")
    shutil.copytree(stores["v1"], d)
    res = CliRunner().invoke(main, ["convert", stores["src"], d, "--codec", codec_path, "--size", "64",
                                    "--shard-size", "4", "--resume", "--quiet"])
    assert res.exit_code == 2 and "entropy coder" in res.output


def test_loader_batches_and_the_gpu_decode_path_give_the_cpu_samples(stores):
    """The payload path (workers read bytes; Triton decodes, crops, flips) equals the CPU path sample for sample.
    On a machine without a GPU the Triton kernel runs in the interpreter (TRITON_INTERPRET=1)."""
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs a GPU or TRITON_INTERPRET=1")
    from latentstore.data.gpu_decode import DeviceDecoder
    cpu = LatentMapDataset(stores["v2"], train=True, crop=5, seed=3)
    pay = LatentMapDataset(stores["v2"], train=True, crop=5, seed=3, output="payload")
    idx = [0, 3, 4, 7, 9]
    want = collate(cpu.samples(idx, epoch=2))
    batch = collate(pay.samples(idx, epoch=2))
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    got = DeviceDecoder(pay.store, dev, output="symbols")(batch)
    assert torch.equal(got["latent"].cpu(), want["latent"]) and torch.equal(got["label"].cpu(), want["label"])
    one = collate(pay.samples([0], 0))
    one["payload"][5] ^= 0xFF  # inside the lane index
    with pytest.raises(StoreError, match="sample 0"):
        DeviceDecoder(pay.store, dev)(one)


def test_classify_with_decode_on_gpu_runs_and_matches_the_cpu_loss(stores, tmp_path):
    """decode_on="gpu" (Triton in the interpreter here) gives the CPU path's inputs, so the same losses."""
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs a GPU or TRITON_INTERPRET=1")
    from latentstore_train.classify import ClassifyConfig, train
    base = dict(input="latent", train=stores["v2"], val=stores["v2"], model="cresnet39", width=8, depth_scale=0.3,
                batch_size=4, epochs=1, num_workers=0, crop=6, max_steps=2, device="cpu")
    a = train(ClassifyConfig(**base), str(tmp_path / "cpu"), progress=False)
    b = train(ClassifyConfig(**base, decode_on="gpu"), str(tmp_path / "gpu"), progress=False)
    assert [r["loss"] for r in a["log"]] == [r["loss"] for r in b["log"]]
