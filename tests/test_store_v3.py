"""Stores in bitstream v3 (`latentstore.rans3`): conversion and recode with tables fitted to the store, both
layouts, fixed and native size, every reader path (symbols, batch decode on the CPU, the GPU decoder, plain zarr,
verify, info, decode, the loaders); the v3 golden stores keep decoding."""
import copy
import glob
import os
import shutil

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner
from PIL import Image

from latentstore.cli import main
from latentstore.codec import bitstream as bs
from latentstore.codec.entropy import rans_v3
from latentstore.data.datasets import LatentMapDataset, collate
from latentstore.errors import StoreError
from latentstore.store import open_store
from latentstore.store.backends import CorruptSampleError, decode_bitstream
from latentstore.store.coders import lane_coder, tables_from_json, tables_to_json
from latentstore.store.verify import verify
from latentstore.store.zarr_codec import LatentRans3Numcodec
from tests.store_fixtures import make_store, make_stores

G = os.path.join(os.path.dirname(__file__), "golden")
V3 = os.path.join(G, "v3")


def _needs_triton():
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs a GPU or TRITON_INTERPRET=1")


@pytest.fixture(scope="module")
def stores(codec_path, tmp_path_factory):
    d = tmp_path_factory.mktemp("v3")
    specs = {"v2": ("v2.zarr", dict(size=64)), "v3": ("v3.zarr", dict(size=64, bitstream="v3")),
             "v2w": ("v2w", dict(size=64, fmt="wds")), "v3w": ("v3w", dict(size=64, fmt="wds", bitstream="v3")),
             "v2n": ("v2n.zarr", dict(size=None)), "v3n": ("v3n.zarr", dict(size=None, bitstream="v3"))}
    return {**make_stores(d, codec_path, specs), "dir": d}


def _all(s) -> list:
    return [s.symbols(i) for i in range(len(s))]


def _shard_files(root: str) -> list:
    return sorted(os.path.relpath(f, root) for f in glob.glob(f"{root}/latents/c/**", recursive=True)
                  if os.path.isfile(f))


@pytest.mark.parametrize("v2, v3", [("v2", "v3"), ("v2w", "v3w"), ("v2n", "v3n")])
def test_v3_stores_hold_v2s_symbols_in_fewer_bytes(stores, v2, v3):
    a, b = open_store(stores[v2]), open_store(stores[v3])
    c = b.schema.codec
    assert c["coder"] == "latentstore.rans3" and "rans_tables" not in c
    assert set(c["rans3_tables"]) == {"shape", "dtype", "zlib_base64"}  # compact: 49x v2's numbers
    assert tables_from_json(c["rans3_tables"]).shape == (c["C"], (c["L"] + 1) ** 3, c["L"])
    assert c["rans3_tables_fit"] == a.schema.codec["rans_tables_fit"]  # the same seeded sample as v2's fit
    assert len(a) == len(b) > 0 and all(np.array_equal(x, y) for x, y in zip(_all(a), _all(b)))
    if b.mode == "fixed":  # the batch paths: one rans_v3.decode_batch call
        order = list(range(len(b)))[::-1]
        assert np.array_equal(b.read_batch(order), np.stack([a.symbols(i) for i in order]))
    if b.kind == "wds" or b.mode == "native":
        assert b.bitstream(0)[:3] == b"LS\x03" and a.bitstream(0)[:3] == b"LS\x02"
    ta, tb = a.schema.totals, b.schema.totals
    assert tb["entropy_payload_bytes"] < ta["entropy_payload_bytes"], (ta, tb)
    assert tb["entropy_bits"] < ta["entropy_bits"]
    # tar members are padded to 512-byte blocks: a WebDataset store's files shrink only in whole blocks
    assert tb["latent_bytes"] < ta["latent_bytes"] if b.kind == "zarr" else tb["latent_bytes"] <= ta["latent_bytes"]
    # the estimate is v3's model under the store's tables (what the payload spends, bar the lanes' few bytes)
    assert tb["entropy_bits"] / 8 < tb["entropy_payload_bytes"] < tb["entropy_bits"] / 8 * 1.2 + 16 * len(b)
    assert verify(stores[v3])["ok"]


def test_plain_zarr_opens_v3_latents_through_the_entry_points(stores):
    s = open_store(stores["v3"])
    g = zarr.open_group(stores["v3"], mode="r")
    assert g["latents"].metadata.codecs[0].codecs[0].to_dict()["name"] == "latentstore.rans3"
    lat, valid = g["latents"][:], g["valid"][:]
    assert np.array_equal(lat[valid], np.stack(_all(s))) and not lat[~valid].any()
    # the numcodecs twin, found by its id
    import numcodecs
    tables = tables_from_json(s.schema.codec["rans3_tables"])
    chunk = np.stack(_all(s)[:3])
    nc = numcodecs.get_codec({"id": "latentstore.rans3", "tables": tables.tolist(), "shape": list(chunk.shape)})
    assert isinstance(nc, LatentRans3Numcodec)
    data = nc.encode(chunk)
    assert np.array_equal(nc.decode(data), chunk)
    assert data == b"".join(rans_v3.encode_batch(chunk, tables))  # a chunk is its images' v3 payloads
    with pytest.raises(ValueError, match="latentstore.rans3"):
        nc.decode(data[:-1])


@pytest.mark.parametrize("kind", ["v3", "v3w"])
def test_verify_passes_and_catches_a_damaged_byte(stores, kind, tmp_path):
    assert verify(stores[kind])["ok"]
    d = str(tmp_path / kind)
    shutil.copytree(stores[kind], d)
    s = open_store(d)
    slot = int(s.slots[1])
    if kind == "v3w":
        from latentstore.store.backends.webdataset import LATENT
        e = s.backend.index[slot]
        path, (off, size) = e["tar"], e[LATENT]
    else:
        k, j = divmod(slot, s.schema.shard_size)
        path = s.backend.shard_reader.shard_path(k)
        off, size = (int(v) for v in s.backend.shard_reader.shard_index(k)[j])
    with open(path, "r+b") as f:  # a byte in the middle of the sample's payload
        f.seek(off + size // 2)
        b = f.read(1)
        f.seek(off + size // 2)
        f.write(bytes([b[0] ^ 0x10]))
    r = verify(d)
    assert not r["ok"] and any("checksum mismatch" in e for e in r["errors"])
    assert any("sample" in e and "does not decode" in e or "corrupt" in e or "crc" in e.lower()
               for e in r["errors"]), r["errors"]
    with pytest.raises(StoreError, match="sample"):
        open_store(d).symbols(1)
    res = CliRunner().invoke(main, ["verify", d])
    assert res.exit_code == 1 and "FAIL" in res.output


def test_a_lane_that_does_not_decode_under_a_valid_crc_is_a_named_corrupt_sample(stores):
    s = open_store(stores["v3w"])
    header, payload = bs.unpack(s.bitstream(0))
    tables = tables_from_json(s.schema.codec["rans3_tables"]).astype(np.uint16)
    bad = bytearray(payload)
    bad[-1] ^= 0x01  # the last lane's last word: the lane no longer ends in state 0
    forged = bs.pack(header, bytes(bad), tables)  # a CRC that matches the damaged payload
    with pytest.raises(CorruptSampleError, match="here: rANS payload of sample 0 is corrupt"):
        decode_bitstream(s.schema, forged, "here")
    other = tables.copy()
    i = int(np.argmax(other[0, 0]))
    other[0, 0, i] -= 1
    other[0, 0, (i + 1) % other.shape[-1]] += 1
    sch = copy.deepcopy(s.schema)
    sch.codec["rans3_tables"] = tables_to_json(other, compact=True)
    with pytest.raises(CorruptSampleError, match="other tables"):  # the CRC is seeded with the store's tables
        decode_bitstream(sch, s.bitstream(0), "here")


def test_recode_v2_to_v3_and_back_gives_the_v2_bytes(stores, tmp_path):
    """recode refits on a seeded sample of the source's symbols; at <= 512 samples that is every sample, as
    conversion's fit is, so v2 -> v3 -> v2 gives back the converted v2 store's tables and latent bytes."""
    for src, fmt in ((stores["v2"], "zarr"), (stores["v2w"], "wds")):
        v3, back = str(tmp_path / f"{fmt}-3"), str(tmp_path / f"{fmt}-2")
        for a, b, version in ((src, v3, "v3"), (v3, back, "v2")):
            res = CliRunner().invoke(main, ["recode", a, b, "--bitstream", version, "--quiet"])
            assert res.exit_code == 0, res.output
        s2, s3, r2 = open_store(src), open_store(v3), open_store(back)
        assert s3.schema.codec["coder"] == "latentstore.rans3" and "rans_tables" not in s3.schema.codec
        assert r2.schema.codec["coder"] == "latentstore.rans" and "rans3_tables" not in r2.schema.codec
        assert r2.schema.codec["rans_tables"] == s2.schema.codec["rans_tables"]
        assert s3.schema.totals["entropy_payload_bytes"] < s2.schema.totals["entropy_payload_bytes"]
        assert r2.schema.totals["entropy_payload_bytes"] == s2.schema.totals["entropy_payload_bytes"]
        assert all(np.array_equal(x, y) for x, y in zip(_all(s2), _all(s3))) and verify(v3)["ok"]
        if fmt == "zarr":
            assert _shard_files(src) == _shard_files(back) and _shard_files(src)
            assert all(open(os.path.join(src, f), "rb").read() == open(os.path.join(back, f), "rb").read()
                       for f in _shard_files(src))
        else:
            assert [s2.bitstream(i) for i in range(len(s2))] == [r2.bitstream(i) for i in range(len(r2))]


def test_writer_round_trip_without_conversion(codec, codec_path, tmp_path):
    """StoreWriter given symbols alone (no payloads): the fixed-size Zarr backend codes them with v3 itself."""
    from latentstore.store.schema import StoreSchema
    from latentstore.store.writer import Sample, StoreWriter, finalize_store
    rng = np.random.default_rng(0)
    C, L = codec.cfg.C, codec.cfg.L
    syms = {i: rng.integers(0, L, size=(C, 5, 5), dtype=np.uint8) for i in range(7) if i != 4}
    tables = rans_v3.fit_tables(np.stack(list(syms.values())), L)
    for kind in ("zarr", "wds"):
        schema = StoreSchema(kind=kind, codec={"id": codec.name, "weights_hash": codec.hash, "C": C, "L": L,
                                               "centres": codec.centres().tolist(), "freqs": codec.freqs.tolist(),
                                               "coder": "latentstore.rans3", "rans3_tables": tables.tolist()},
                             policy={"mode": "fixed", "size": 40}, shard_size=3, num_slots=7, label_names=["a", "b"],
                             inputs_sha256="x")
        d = str(tmp_path / kind)
        w = StoreWriter.open(d, schema, codec_path, resume=False)
        for k in range(3):
            samples = [Sample(i, i % 2, syms[i], (40, 40), (40, 40), f"img{i}", 100,
                              codec.pack(syms[i], (40, 40), "latentstore.rans3", tables))
                       for i in w.shard_slots(k) if i in syms]
            w.write_shard(k, samples, [])
        w.close()
        finalize_store(d)
        s = open_store(d)
        assert [int(x) for x in s.slots] == sorted(syms)
        assert all(np.array_equal(s.symbols(i), syms[int(slot)]) for i, slot in enumerate(s.slots))
        assert np.isclose(s.schema.totals["entropy_bits"], rans_v3.ideal_bits(np.stack(list(syms.values())), tables))
        assert verify(d)["ok"]


def test_a_damaged_v3_table_in_the_schema_is_refused(stores):
    from latentstore.store.validate import validate_schema
    sch = copy.deepcopy(open_store(stores["v3"]).schema)
    t = tables_from_json(sch.codec["rans3_tables"]).copy()
    t[1, 5, 0] += 1  # that row no longer sums to 4096
    sch.codec["rans3_tables"] = tables_to_json(t, compact=True)
    with pytest.raises(StoreError, match="codec.rans3_tables: rans3 table for channel 1 context 5 sums to 4097"):
        validate_schema(sch, "here")
    sch.codec["rans3_tables"] = [[[4096]]]
    with pytest.raises(StoreError, match="codec.rans3_tables"):
        validate_schema(sch, "here")
    good = tables_to_json(t, compact=True)
    for bad, why in (({**good, "zlib_base64": good["zlib_base64"][:-8]}, "is truncated"),
                     ({**good, "shape": [1, 2, 3]}, "decompresses to"), ({**good, "dtype": "<u4"}, "needs shape"),
                     ({**good, "zlib_base64": "!!"}, "does not decode")):
        sch.codec["rans3_tables"] = bad
        with pytest.raises(StoreError, match=f"codec.rans3_tables: compact table .*({why})"):
            validate_schema(sch, "here")


def test_the_loaders_and_the_cli_read_v3_as_v2(stores, tmp_path):
    for key in ("v3", "v3w"):
        a = LatentMapDataset(stores[key.replace("3", "2")], train=True, crop=5, seed=3)
        b = LatentMapDataset(stores[key], train=True, crop=5, seed=3)
        idx = [0, 3, 4, 7]
        x, y = collate(a.samples(idx, epoch=1)), collate(b.samples(idx, epoch=1))
        assert torch.equal(x["latent"], y["latent"]) and torch.equal(x["label"], y["label"])
    res = CliRunner().invoke(main, ["info", stores["v3"]])
    assert res.exit_code == 0 and "coder latentstore.rans3" in res.output, res.output
    outs = {}
    for key in ("v2", "v3"):
        res = CliRunner().invoke(main, ["decode", stores[key], "--out", str(tmp_path / key), "--index", "2"])
        assert res.exit_code == 0, res.output
        (name,) = os.listdir(tmp_path / key)
        outs[key] = np.asarray(Image.open(tmp_path / key / name))
    assert np.array_equal(outs["v2"], outs["v3"])  # the same symbols, so the same pixels


def test_gpu_decode_path_gives_the_cpu_samples(stores):
    """DeviceDecoder on a v3 store runs latentstore_kernels.rans3 (TRITON_INTERPRET=1 without a GPU)."""
    _needs_triton()
    from latentstore.data.gpu_decode import DeviceDecoder
    cpu = LatentMapDataset(stores["v3"], train=True, crop=5, seed=3)
    pay = LatentMapDataset(stores["v3"], train=True, crop=5, seed=3, output="payload")
    idx = [0, 3, 4, 7, 9]
    want = collate(cpu.samples(idx, epoch=2))
    batch = collate(pay.samples(idx, epoch=2))
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dec = DeviceDecoder(pay.store, dev, output="symbols")
    assert dec.coder is lane_coder("latentstore.rans3")
    got = dec(batch)
    assert torch.equal(got["latent"].cpu(), want["latent"]) and torch.equal(got["label"].cpu(), want["label"])
    one = collate(pay.samples([0], 0))
    one["payload"][-1] ^= 0x01  # the last lane's last word
    with pytest.raises(StoreError, match="sample 0: rANS payload is corrupt"):
        DeviceDecoder(pay.store, dev)(one)
    with pytest.raises(StoreError, match="fixed-size bitstream v2 or v3 store"):
        DeviceDecoder(open_store(stores["v3n"]), dev)


def test_gpu_entropy_coder_writes_the_same_v3_store(stores, codec_path, tmp_path):
    """Conversion's GPU path (v3 context counts in torch, Triton rANS3 lanes assembled on the host; here through
    TRITON_INTERPRET) writes the store numba writes."""
    _needs_triton()
    sym = torch.from_numpy(np.stack(_all(open_store(stores["v3"]))))
    lc = lane_coder("latentstore.rans3")
    assert np.array_equal(lc.context_counts_t(sym, 6).numpy(), rans_v3.context_counts(sym.numpy(), 6))
    dst = str(tmp_path / "triton" / "v3.zarr")
    make_store(stores["src"], dst, codec_path, size=64, bitstream="v3", entropy="triton")
    a, b = open_store(stores["v3"]), open_store(dst)
    assert a.schema.checksums == b.schema.checksums and a.schema.totals == b.schema.totals


def test_bitstream_v3_refuses_an_alphabet_over_six_in_one_line(stores, tmp_path):
    from latentstore.codec.model import CodecConfig, LatentCodec
    from latentstore.codec.zoo import save_codec
    torch.manual_seed(0)
    model = LatentCodec(CodecConfig(name="l8", C=4, N=8, L=8)).eval()
    model.update(np.ones((4, 8), np.int64) * 10)
    path = str(tmp_path / "l8.safetensors")
    save_codec(model, path, {"note": "test codec, L = 8"})
    dst = str(tmp_path / "l8.zarr")
    res = CliRunner().invoke(main, ["convert", stores["src"], dst, "--codec", path, "--size", "32", "--bitstream", "v3",
                                    "--quiet"])
    assert res.exit_code == 2, res.output
    line = res.output.strip()
    assert "\n" not in line and "--bitstream v3" in line and "L = 8" in line and "--bitstream v2" in line, line
    assert not os.path.exists(dst)  # refused before any work


def test_golden_v3_stores_still_decode():
    want = np.load(os.path.join(V3, "store_symbols.npy"))
    assert np.array_equal(want, np.load(os.path.join(G, "store_symbols.npy")))  # make_golden.py's inputs
    for name in ("store.zarr", "store_wds"):
        s = open_store(os.path.join(V3, name))
        assert s.schema.codec["coder"] == "latentstore.rans3"
        assert np.array_equal(np.stack(_all(s)), want) and np.array_equal(s.read_batch(range(len(s))), want)
        assert verify(os.path.join(V3, name))["ok"]
    assert open_store(os.path.join(V3, "store_wds")).bitstream(0)[:3] == b"LS\x03"
    g = zarr.open_group(os.path.join(V3, "store.zarr"), mode="r")  # plain zarr, through the entry point
    assert np.array_equal(g["latents"][:][g["valid"][:]], want)
