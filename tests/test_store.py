"""Stores: round trips, upstream readers, verify on damage, DDP coverage, exact mid-epoch resume."""
import os
import shutil

import numpy as np
import pytest
import torch
import webdataset as wds
from click.testing import CliRunner

from latentstore.cli import main
from latentstore.errors import StoreError
from latentstore.store import open_store, webdataset_decoder
from latentstore.data.datasets import (LatentBatchStream, LatentMapDataset, ResumableLoader, dequantize_on,
                                        epoch_indices)
from latentstore.store.schema import StoreSchema
from latentstore.store.verify import verify
from latentstore.store.writer import Sample, StoreWriter, finalize_store
from tests.store_fixtures import make_store, make_tree


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return make_tree(str(tmp_path_factory.mktemp("src") / "src"), with_bad=False)


@pytest.fixture(scope="module")
def stores(src, codec_path, tmp_path_factory):
    d = tmp_path_factory.mktemp("stores")
    make_store(src, str(d / "z.zarr"), codec_path, size=64)
    make_store(src, str(d / "w"), codec_path, fmt="wds", size=64)
    return {"zarr": str(d / "z.zarr"), "wds": str(d / "w")}


@pytest.mark.parametrize("coder", ["latentstore.ans", "latentstore.rans"])
@pytest.mark.parametrize("kind", ["zarr", "wds"])
def test_writer_symbol_round_trip(kind, coder, codec, codec_path, tmp_path):
    rng = np.random.default_rng(0)
    C, L = codec.cfg.C, codec.cfg.L
    schema = StoreSchema(kind=kind, codec={"id": codec.name, "weights_hash": codec.hash, "C": C, "L": L,
                                           "centres": codec.centres().tolist(), "freqs": codec.freqs.tolist(),
                                           "coder": coder},
                         policy={"mode": "fixed", "size": 40}, shard_size=3, num_slots=7, label_names=["a", "b"],
                         inputs_sha256="x")
    syms = {i: rng.integers(0, L, size=(C, 5, 5), dtype=np.uint8) for i in range(7) if i != 4}
    tables = None
    if coder == "latentstore.rans":  # a store's own tables, fitted to its symbols
        from latentstore.codec.entropy.rans_v2 import fit_tables
        tables = fit_tables(np.stack(list(syms.values())), L)
        schema.codec["rans_tables"] = tables.tolist()
    w = StoreWriter.open(str(tmp_path / "s"), schema, codec_path, resume=False)
    for k in range(3):
        samples = [Sample(i, i % 2, syms[i], (40, 40), (40, 40), f"img{i}", 100,
                          codec.pack(syms[i], (40, 40), coder, tables)) for i in w.shard_slots(k) if i in syms]
        w.write_shard(k, samples, [{"path": "img4", "reason": "test"}] if k == 1 else [])
    finalize_store(str(tmp_path / "s"))
    s = open_store(str(tmp_path / "s"))
    assert [int(x) for x in s.slots] == sorted(syms)
    for i, slot in enumerate(s.slots):
        assert np.array_equal(s.symbols(i), syms[int(slot)]) and s.label(i) == slot % 2
    assert s.schema.num_rejected == 1 and verify(str(tmp_path / "s"))["ok"]


def test_upstream_webdataset_reads_the_store(stores):
    s = open_store(stores["wds"])
    shards = sorted(f for f in os.listdir(stores["wds"]) if f.endswith(".tar"))
    ds = wds.WebDataset([os.path.join(stores["wds"], f) for f in shards], shardshuffle=False).decode(
        webdataset_decoder(stores["wds"]))
    got = list(ds)
    assert len(got) == len(s)
    for i, sample in enumerate(got):
        assert np.array_equal(sample["latent"], s.symbols(i))
        assert int(sample["cls"]) == s.label(i)


def test_schema_refuses_unknown_versions_and_codecs(stores, tmp_path):
    import json
    d = str(tmp_path / "w2")
    shutil.copytree(stores["wds"], d)
    meta = json.load(open(os.path.join(d, "schema.json")))
    meta["schema_version"] = 99
    json.dump(meta, open(os.path.join(d, "schema.json"), "w"))
    with pytest.raises(StoreError, match="schema version 99"):
        open_store(d)
    meta["schema_version"] = 1
    del meta["codec"]["freqs"]
    json.dump(meta, open(os.path.join(d, "schema.json"), "w"))
    with pytest.raises(StoreError, match="freqs"):
        open_store(d)
    res = CliRunner().invoke(main, ["info", d])
    assert res.exit_code != 0 and "freqs" in res.output and "Traceback" not in res.output


def _flip_bit(path: str, offset_from_end: int = 40):
    with open(path, "r+b") as f:
        f.seek(-offset_from_end, os.SEEK_END)
        b = f.read(1)
        f.seek(-offset_from_end, os.SEEK_END)
        f.write(bytes([b[0] ^ 0x04]))


@pytest.mark.parametrize("kind", ["zarr", "wds"])
def test_verify_catches_a_flipped_bit_and_a_truncated_shard(stores, kind, tmp_path):
    d = str(tmp_path / kind)
    shutil.copytree(stores[kind], d)
    s = open_store(d)
    files = sorted(s.schema.checksums)
    target = next(f for f in files if f.endswith(".tar") or f.startswith("latents"))
    if kind == "wds":
        # flip a bit inside the first sample's .latent payload
        off, size = s.backend.index[int(s.slots[0])]["latent"]
        with open(os.path.join(d, target), "r+b") as f:
            f.seek(off + size - 3)
            b = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([b[0] ^ 0x04]))
    else:
        _flip_bit(os.path.join(d, target), 60)
    r = verify(d)
    assert not r["ok"]
    assert any("checksum mismatch" in e for e in r["errors"])
    assert any("sample" in e for e in r["errors"]), r["errors"]  # the damaged sample is named
    res = CliRunner().invoke(main, ["verify", d])
    assert res.exit_code == 1 and "FAIL" in res.output
    # truncate another shard
    d2 = str(tmp_path / f"{kind}_trunc")
    shutil.copytree(stores[kind], d2)
    victim = os.path.join(d2, files[-1] if kind == "wds" else next(f for f in files if f.startswith("latents")))
    size = os.path.getsize(victim)
    with open(victim, "r+b") as f:
        f.truncate(size // 2)
    r = verify(d2)
    assert not r["ok"] and any("checksum mismatch" in e for e in r["errors"])


def test_ddp_split_covers_every_sample_once():
    for n, world in [(10, 3), (12, 4), (7, 2), (5, 8)]:
        parts = [epoch_indices(n, epoch=3, seed=1, rank=r, world=world, pad=False) for r in range(world)]
        flat = np.concatenate(parts)
        assert sorted(flat.tolist()) == list(range(n))
        padded = [epoch_indices(n, 3, 1, r, world) for r in range(world)]
        assert len({len(p) for p in padded}) == 1  # every rank gets the same number of batches
        assert set(np.concatenate(padded).tolist()) == set(range(n))


@pytest.mark.parametrize("kind", ["zarr", "wds"])
def test_stream_over_ranks_and_workers(stores, kind):
    n = len(open_store(stores[kind]))
    seen = []
    for rank in range(2):
        ds = LatentBatchStream(stores[kind], batch_size=3, crop=4, seed=5, rank=rank, world=2)
        batches = list(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=0))
        seen += [int(i) for b in batches for i in b["index"]]
    assert set(seen) == set(range(n))
    one = list(torch.utils.data.DataLoader(LatentBatchStream(stores[kind], 3, crop=4, seed=5), batch_size=None))
    two = list(torch.utils.data.DataLoader(LatentBatchStream(stores[kind], 3, crop=4, seed=5), batch_size=None,
                                           num_workers=2))
    assert len(one) == len(two)
    assert all(torch.equal(a["latent"], b["latent"]) and torch.equal(a["label"], b["label"]) for a, b in zip(one, two))


@pytest.mark.parametrize("make", ["map", "stream"])
def test_mid_epoch_resume_is_exact(stores, make):
    def loader():
        if make == "map":
            ds = LatentMapDataset(stores["zarr"], train=True, crop=4, output="float", seed=3)
            return ResumableLoader(ds, batch_size=2, num_workers=2, seed=3)
        return ResumableLoader(LatentBatchStream(stores["wds"], 2, crop=4, output="float", seed=3), batch_size=2,
                               num_workers=2)

    full = loader()
    full.set_epoch(1)
    ref = list(full)
    first = loader()
    first.set_epoch(1)
    it = iter(first)
    head = [next(it) for _ in range(3)]
    state = first.state_dict()
    assert state == {"epoch": 1, "batches_done": 3}
    resumed = loader()
    resumed.load_state_dict(state)
    rest = list(resumed)
    got = head + rest
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        assert torch.equal(a["latent"], b["latent"]) and torch.equal(a["index"], b["index"])
    e0 = loader()
    assert [b["index"].tolist() for b in e0] != [b["index"].tolist() for b in ref]  # epochs differ


def test_augmentation_and_gpu_style_dequantize(stores):
    s = open_store(stores["zarr"])
    ev = LatentMapDataset(stores["zarr"], train=False, crop=4, output="symbols")
    x = ev[0]["latent"]
    assert x.dtype == torch.uint8 and x.shape == (s.schema.codec["C"], 4, 4)
    assert torch.equal(x, torch.from_numpy(s.symbols(0)[:, 2:6, 2:6]))  # centre crop of 8x8
    f = dequantize_on(x[None], s.centres, "cpu")
    assert torch.allclose(f[0], torch.from_numpy(s.centres[s.symbols(0)[:, 2:6, 2:6]]))


def test_a_samples_crop_and_flip_depend_on_it_alone(stores):
    """The batched path draws each sample's crop and flip from (seed, epoch, index): the same in any batch, in
    any order, and the same as cropping that sample by hand; the draws cover every offset and both flips."""
    from latentstore.data.datasets import LatentAugment, sample_uniforms
    u = sample_uniforms(0, 3, np.arange(4000), 3)
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.02
    assert np.array_equal(sample_uniforms(0, 3, [17, 5], 3), u[[17, 5]])
    assert not np.array_equal(sample_uniforms(0, 4, [17], 3), u[[17]])  # a new epoch, new draws
    p = LatentAugment(crop=5).params(8, 8, 0, 3, np.arange(4000))
    assert set(p[:, 0]) == set(range(4)) and set(p[:, 1]) == set(range(4)) and set(p[:, 4]) == {0, 1}
    ds = LatentMapDataset(stores["zarr"], crop=5)
    s = open_store(stores["zarr"])
    one = {d["index"]: d["latent"] for d in ds.samples([3, 0, 2], epoch=1)}
    other = {d["index"]: d["latent"] for d in ds.samples([2, 3], epoch=1)}
    assert torch.equal(one[2], other[2]) and torch.equal(one[3], other[3])
    y, x, ch, cw, flip = LatentAugment(crop=5).params(8, 8, 0, 1, [3])[0]
    ref = s.symbols(3)[:, y: y + ch, x: x + cw]
    assert torch.equal(one[3], torch.from_numpy(np.ascontiguousarray(ref[:, :, ::-1] if flip else ref)))
