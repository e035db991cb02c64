"""Fixed-size Zarr v2 shard files written directly from payloads: byte for byte what zarr writes, read by zarr."""
import json
import os
import shutil

import numpy as np
import pytest
import zarr

from latentstore.codec.entropy.rans_v2 import encode_batch, fit_tables
from latentstore.store import open_store
from latentstore.store.backends.zarr_shards import shard_file_bytes
from latentstore.store.schema import StoreSchema
from latentstore.store.verify import verify
from latentstore.store.writer import Sample, StoreWriter, finalize_store

N, S = 8, 3  # shards [0, 3), [3, 6), [6, 8) + one padding row


@pytest.fixture
def written(codec, codec_path, tmp_path):
    """A v2 store written by StoreWriter: slot 1 all zeros (an empty chunk), slots 3-5 rejected (no shard file),
    slot 7 without a pre-encoded payload (the backend codes it), the rest with their payloads."""
    rng = np.random.default_rng(1)
    C, L = codec.cfg.C, codec.cfg.L
    syms = {i: rng.integers(0, L, size=(C, 5, 5), dtype=np.uint8) for i in range(N) if i not in (3, 4, 5)}
    syms[1][:] = 0
    tables = fit_tables(np.stack(list(syms.values())), L)
    schema = StoreSchema(kind="zarr", codec={"id": codec.name, "weights_hash": codec.hash, "C": C, "L": L,
                                             "centres": codec.centres().tolist(), "freqs": codec.freqs.tolist(),
                                             "coder": "latentstore.rans", "rans_tables": tables.tolist()},
                         policy={"mode": "fixed", "size": 40}, shard_size=S, num_slots=N, label_names=["a"],
                         inputs_sha256="x")
    root = str(tmp_path / "s.zarr")
    w = StoreWriter.open(root, schema, codec_path, resume=False)
    for k in range(3):
        samples = []
        for i in (i for i in w.shard_slots(k) if i in syms):
            payload = None if i == 7 else encode_batch(syms[i][None], tables)[0]
            samples.append(Sample(i, 0, syms[i], (40, 40), (40, 40), f"img{i}", 100, payload=payload))
        w.write_shard(k, samples, [{"path": f"img{i}", "reason": "test"} for i in (3, 4, 5) if i in w.shard_slots(k)])
    w.close()
    finalize_store(root)
    return root, syms


def test_shard_files_are_zarrs_own_bytes(written, tmp_path):
    root, syms = written
    full = np.zeros((N,) + syms[0].shape, np.uint8)
    for i, s in syms.items():
        full[i] = s
    # the same array, written by zarr itself (the legacy path: zarr runs latentstore.rans per chunk)
    ref = str(tmp_path / "ref")
    os.makedirs(ref)
    shutil.copy(os.path.join(root, "latents", "zarr.json"), ref)
    a = zarr.open_array(ref, mode="r+")
    for lo in range(0, N, S):
        a[lo: lo + S] = full[lo: lo + S]
    for k in range(3):
        key = os.path.join("c", str(k), "0", "0", "0")
        ours, theirs = os.path.join(root, "latents", key), os.path.join(ref, key)
        assert os.path.exists(ours) == os.path.exists(theirs) == (k != 1), k  # shard 1: no sample, no file
        if k != 1:
            assert open(ours, "rb").read() == open(theirs, "rb").read(), f"shard {k} differs from zarr's"
    # plain zarr reads ours; empty chunks (slot 1's zeros, rejects, padding) read as the fill value
    assert np.array_equal(zarr.open_group(root, mode="r")["latents"][:], full)
    st = open_store(root)
    assert [int(s) for s in st.slots] == sorted(syms)
    assert all(np.array_equal(st.symbols(i), syms[int(s)]) for i, s in enumerate(st.slots))
    assert verify(root)["ok"]


def test_index_layout_and_empty_shard():
    payloads = [b"\x01\x02\x03", None, b"\x04"]
    data = shard_file_bytes(payloads)
    index = np.frombuffer(data[-4 - 3 * 16: -4], "<u8").reshape(3, 2)
    assert index.tolist() == [[0, 7], [2 ** 64 - 1, 2 ** 64 - 1], [7, 5]]
    assert data[:3] == b"\x01\x02\x03" and data[7:8] == b"\x04"
    import google_crc32c
    assert int.from_bytes(data[3:7], "little") == google_crc32c.value(b"\x01\x02\x03")
    assert int.from_bytes(data[-4:], "little") == google_crc32c.value(data[-4 - 48: -4])
    assert shard_file_bytes([None, None]) is None


def test_v1_stores_stay_on_zarrs_path(codec, codec_path, tmp_path):
    """A v1 store has no payloads to write from: zarr codes its chunks with latentstore.ans, as before."""
    C, L = codec.cfg.C, codec.cfg.L
    schema = StoreSchema(kind="zarr", codec={"id": codec.name, "weights_hash": codec.hash, "C": C, "L": L,
                                             "centres": codec.centres().tolist(), "freqs": codec.freqs.tolist(),
                                             "coder": "latentstore.ans"},
                         policy={"mode": "fixed", "size": 40}, shard_size=2, num_slots=2, label_names=["a"],
                         inputs_sha256="x")
    sym = np.random.default_rng(2).integers(0, L, size=(2, C, 5, 5), dtype=np.uint8)
    w = StoreWriter.open(str(tmp_path / "v1"), schema, codec_path, resume=False)
    w.write_shard(0, [Sample(i, 0, sym[i], (40, 40), (40, 40), f"i{i}", 1) for i in range(2)], [])
    w.close()
    finalize_store(str(tmp_path / "v1"))
    meta = json.load(open(tmp_path / "v1" / "latents" / "zarr.json"))
    assert meta["codecs"][0]["configuration"]["codecs"][0]["name"] == "latentstore.ans"
    assert np.array_equal(zarr.open_group(str(tmp_path / "v1"), mode="r")["latents"][:], sym)


def test_symbol_statistics_of_mixed_shapes_match_a_count_per_sample():
    """symbol_counts and the v2 context counts stack a shard's same-shape samples (one bincount per shape): the
    counts must equal counting each sample on its own, shapes mixed as in a native store."""
    from types import SimpleNamespace

    import numpy as np

    from latentstore.codec.entropy.rans_v2 import context_counts
    from latentstore.store.writer import same_shape_stacks, symbol_counts
    rng = np.random.default_rng(3)
    shapes = [(16, 32, 32)] * 3 + [(16, 17, 9), (16, 32, 32), (16, 1, 40)]
    samples = [SimpleNamespace(symbols=rng.integers(0, 6, size=sh, dtype=np.uint8)) for sh in shapes]
    one_by_one = sum(np.stack([np.bincount(s.symbols[c].ravel(), minlength=6) for c in range(16)]) for s in samples)
    assert np.array_equal(symbol_counts(samples, 16, 6), one_by_one)
    assert np.array_equal(sum(context_counts(st, 6) for st in same_shape_stacks(samples)),
                          sum(context_counts(s.symbols, 6) for s in samples))
    assert len(same_shape_stacks(samples)) == 3
