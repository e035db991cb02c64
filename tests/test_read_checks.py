"""Every read checks what it reads (issue #26): a bit flip in a latent shard is never returned as data.

Both formats (Zarr fixed-size v2 and v1, Zarr native-size, WebDataset), local and one s3:// store on moto:
symbols, read_batch, payloads, decode_rgb, LatentDataset, LatentMapDataset and the training loaders, the
`decode` and `recode` commands, and the service's reader (ShardReader) raise one line naming the store, the
shard and the sample, and every other sample still reads exactly. A scan flips a bit at each byte of a shard
and counts the samples returned different from the good store's: 0. Training stops by default; --skip-corrupt
skips, counts and goes on, and fails above --max-corrupt-fraction.
"""
import csv
import os
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from latentstore.cli import main
from latentstore.data.dataset_api import LatentDataset
from latentstore.data.datasets import LatentBatchStream, LatentMapDataset, ResumableLoader
from latentstore.errors import StoreError
from latentstore.store import open_store
from latentstore.store.backends import CorruptSampleError, ZarrFixedBackend
from latentstore.store.backends.webdataset import WebDatasetBackend
from latentstore.store.remote import location_for
from tests.s3server import s3  # noqa: F401  (the session fixture)
from tests.store_fixtures import make_store, make_stores

KINDS = ["zarr", "v1", "native", "wds"]
VICTIM = 5  # the damaged sample's index: shard 1 of shards of 4 (the tree has no rejects)


@pytest.fixture(scope="module")
def stores(codec_path, tmp_path_factory):
    specs = {"zarr": dict(size=32), "v1": dict(size=32, bitstream="v1"), "native": dict(size=None),
             "wds": dict(fmt="wds", size=32)}
    made = make_stores(tmp_path_factory.mktemp("reads"), codec_path, {k: (k, specs[k]) for k in KINDS})
    return {k: made[k] for k in KINDS}


def shard_file(path: str, i: int) -> tuple[str, bytes]:
    """(the file holding sample i's latent, the bytes of the sample stored there)."""
    s = open_store(path)
    slot, b = int(s.slots[i]), s.backend
    if isinstance(b, WebDatasetBackend):
        return b.index[slot]["tar"], b.bitstream(slot)
    if isinstance(b, ZarrFixedBackend):
        r = b.shard_reader
        return r.shard_path(slot // r.S), r.payload(slot)
    return b.chunk_file(b.group["bitstreams"], slot // b.rows_per_shard), b.bitstream(slot)


def damaged(path: str, tmp_path, i: int = VICTIM) -> str:
    """A copy of the store with one bit flipped in the middle of sample i's stored bytes."""
    d = str(tmp_path / ("bad-" + os.path.basename(path)))
    shutil.copytree(path, d)
    f, data = shard_file(path, i)
    f = os.path.join(d, os.path.relpath(f, path))
    raw = bytearray(open(f, "rb").read())
    at = raw.find(data)
    assert at >= 0 and raw.find(data, at + 1) < 0
    raw[at + len(data) // 2] ^= 0x10
    with open(f, "wb") as fh:
        fh.write(bytes(raw))
    return d


def assert_names(err: str, store: str, i: int = VICTIM) -> None:
    """One line naming the store, the shard and the sample."""
    s = open_store(store)
    assert "\n" not in err.strip() and "Traceback" not in err, err
    assert store in err and s.backend.where(int(s.slots[i])) in err, err


def readers(kind: str):
    """name -> f(store path) that reads sample VICTIM (with neighbours) through one reader."""
    out = {
        "symbols": lambda p: open_store(p).symbols(VICTIM),
        "decode_rgb": lambda p: open_store(p).decode_rgb(VICTIM),
        "LatentDataset": lambda p: LatentDataset(p)[VICTIM],
        "LatentMapDataset": lambda p: LatentMapDataset(p, crop=None).samples([0, VICTIM]),
        "loader": lambda p: list(ResumableLoader(LatentMapDataset(p, crop=1), 4, shuffle=False)),
    }
    if kind != "native":
        out["read_batch"] = lambda p: open_store(p).read_batch([VICTIM - 1, VICTIM])
        out["stream"] = lambda p: list(ResumableLoader(LatentBatchStream(p, 4, crop=None, shuffle=False), 4))
    if kind in ("zarr", "wds"):
        out["payloads"] = lambda p: open_store(p).payloads([VICTIM])
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_every_reader_refuses_the_damaged_sample_and_reads_the_others(stores, kind, tmp_path):
    good = open_store(stores[kind])
    d = damaged(stores[kind], tmp_path)
    for name, read in readers(kind).items():
        with pytest.raises(CorruptSampleError) as e:
            read(d)
        assert_names(str(e.value), d)
    s = open_store(d)
    for i in range(len(s)):
        if i != VICTIM:
            assert np.array_equal(s.symbols(i), good.symbols(i)), i
    assert np.array_equal(s.labels, good.labels)


@pytest.mark.parametrize("kind", ["zarr", "wds"])
def test_decode_and_recode_commands_exit_1_with_one_line(stores, kind, tmp_path):
    d = damaged(stores[kind], tmp_path)
    r = CliRunner()
    for args in (["decode", d, "--out", str(tmp_path / "png"), "--index", "0", "--index", str(VICTIM)],
                 ["recode", d, str(tmp_path / "re"), "--quiet"]):
        res = r.invoke(main, args)
        assert res.exit_code == 1, (args, res.output)
        assert_names(res.output.strip().splitlines()[-1], d)
    ok = r.invoke(main, ["decode", d, "--out", str(tmp_path / "png1"), "--index", "0"])
    assert ok.exit_code == 0, ok.output


def test_the_service_reader_checks_what_it_reads(stores, tmp_path):
    """The service's GETs read a sealed upload through ShardReader (serve/service.py: IngestService.blobs)."""
    from latentstore.store.backends import schema_tables
    from latentstore.store.backends.zarr_shards import ShardReader
    from latentstore.store.schema import read_schema
    d = damaged(stores["zarr"], tmp_path)
    schema = read_schema(d)
    reader = ShardReader.for_store(d, lambda c: schema_tables(schema, c))
    for read in (reader.read, reader.payload):
        with pytest.raises(CorruptSampleError) as e:
            read(VICTIM)
        assert_names(str(e.value), d)
    assert np.array_equal(reader.read(0), open_store(stores["zarr"]).symbols(0))


SCAN_STEP = {"zarr": 1, "v1": 1, "native": 2, "wds": 53}


@pytest.mark.parametrize("kind", KINDS)
def test_a_flip_anywhere_in_a_shard_is_never_returned_as_data(stores, kind, tmp_path):
    """One bit flipped at every byte (every 2nd for native, every 53rd of the 20 kB tar) of sample VICTIM's shard
    file; after each flip the labels and every sample of that shard are read: each read returns the good store's
    data exactly or raises StoreError."""
    good = open_store(stores[kind])
    want = [good.symbols(i) for i in range(len(good))]
    labels = good.labels.copy()
    d = str(tmp_path / "s")
    shutil.copytree(stores[kind], d)
    f = os.path.join(d, os.path.relpath(shard_file(stores[kind], VICTIM)[0], stores[kind]))
    orig = open(f, "rb").read()
    k = int(good.slots[VICTIM]) // good.schema.shard_size
    same_shard = [i for i in range(len(good)) if int(good.slots[i]) // good.schema.shard_size == k]
    returned_wrong = refused = 0
    for off in range(0, len(orig), SCAN_STEP[kind]):
        raw = bytearray(orig)
        raw[off] ^= 0x10
        with open(f, "wb") as fh:
            fh.write(bytes(raw))
        try:
            s = open_store(d)
            got_labels = s.labels
        except StoreError:
            refused += 1
            continue
        returned_wrong += int(not np.array_equal(got_labels, labels))
        for i in same_shard:
            try:
                returned_wrong += int(not np.array_equal(s.symbols(i), want[i]))
            except StoreError:
                refused += 1
    assert returned_wrong == 0 and refused > 0, (returned_wrong, refused)


def test_a_damaged_s3_store_is_read_checked(stores, s3, tmp_path):  # noqa: F811
    """The remote reader: the shard's sha256 when fetched, then the chunk CRCs; one line naming the URL."""
    d = damaged(stores["zarr"], tmp_path)
    url = f"{s3.prefix('reads')}/z"
    dst = location_for(url)
    for root, _, files in os.walk(d):
        for name in files:
            p = os.path.join(root, name)
            dst.put(os.path.relpath(p, d).replace(os.sep, "/"), open(p, "rb").read())
    s = open_store(url)
    for read in (lambda: s.symbols(VICTIM), lambda: s.read_batch([0, VICTIM]), lambda: s.payloads([VICTIM])):
        with pytest.raises(CorruptSampleError) as e:
            read()
        msg = str(e.value)
        assert url in msg and s.backend.where(int(s.slots[VICTIM])) in msg and "\n" not in msg, msg
    skipped = LatentMapDataset(url, crop=None, skip_corrupt=True).samples([0, VICTIM])
    assert [x.get("corrupt") for x in skipped] == [None, VICTIM]


# ------------------------------------------------------------------------------------------------ training
def _classify(train_store, val_store, out, **kw):
    from latentstore_train.classify import ClassifyConfig, train
    cfg = ClassifyConfig(input="latent", train=train_store, val=val_store, model="cresnet39", width=8,
                         depth_scale=0.3, batch_size=4, epochs=1, num_workers=0, device="cpu", **kw)
    return train(cfg, out, progress=False)


def test_training_stops_on_a_corrupt_sample_by_default(stores, tmp_path):
    d = damaged(stores["zarr"], tmp_path)
    with pytest.raises(CorruptSampleError) as e:
        _classify(d, stores["zarr"], str(tmp_path / "run"))
    assert_names(str(e.value), d)
    args = ["train", "classify", "--out", str(tmp_path / "cli"), "--train", d, "--val", stores["zarr"], "--model",
            "cresnet39", "--width", "8", "--depth-scale", "0.3", "--batch-size", "4", "--epochs", "1",
            "--num-workers", "1", "--device", "cpu", "--quiet"]
    res = CliRunner().invoke(main, args)  # through a DataLoader worker: still one line
    assert res.exit_code == 1, res.output
    assert_names(res.output.strip().splitlines()[-1], d)


def test_skip_corrupt_counts_and_continues_and_fails_above_the_fraction(stores, tmp_path):
    d = damaged(stores["zarr"], tmp_path)
    n = len(open_store(d))
    r = _classify(d, d, str(tmp_path / "skip"), skip_corrupt=True, max_corrupt_fraction=0.1)
    assert r["skipped_corrupt"] == 1 and r["steps"] == -(-n // 4)  # the whole epoch ran
    assert r["epochs"][0]["skipped_corrupt"] == 1 and r["epochs"][0]["val_skipped_corrupt"] == 1
    assert r["epochs"][0]["n"] == n - 1  # validation saw every sample but the corrupt one
    with open(tmp_path / "skip" / "epochs.csv") as f:
        assert [row["skipped_corrupt"] for row in csv.DictReader(f)] == ["1"]
    with pytest.raises(StoreError, match="over --max-corrupt-fraction 0.05; last: .*sample"):
        _classify(d, stores["zarr"], str(tmp_path / "strict"), skip_corrupt=True, max_corrupt_fraction=0.05)


def test_decode_on_gpu_stops_or_skips_as_the_cpu_path(stores, tmp_path):
    """--decode-on gpu (Triton; in its interpreter without a GPU): the workers check each payload's CRC."""
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs a GPU or TRITON_INTERPRET=1")
    d = damaged(stores["zarr"], tmp_path)
    with pytest.raises(CorruptSampleError) as e:
        _classify(d, stores["zarr"], str(tmp_path / "g"), decode_on="gpu", max_steps=2)
    assert_names(str(e.value), d)
    r = _classify(d, stores["zarr"], str(tmp_path / "g2"), decode_on="gpu", max_steps=2, skip_corrupt=True,
                  max_corrupt_fraction=0.1)
    assert r["steps"] == 2 and r["skipped_corrupt"] == 1


def test_a_flipped_label_chunk_is_refused_when_read(stores, tmp_path):
    """Zarr's per-slot arrays carry a crc32c (new stores): a flipped bit in labels is an error, not another label."""
    d = str(tmp_path / "z")
    shutil.copytree(stores["zarr"], d)
    f = os.path.join(d, "labels", "c", "1")
    raw = bytearray(open(f, "rb").read())
    raw[len(raw) // 2] ^= 0x10
    open(f, "wb").write(bytes(raw))
    with pytest.raises(StoreError, match="labels"):
        open_store(d).labels


@pytest.fixture(scope="module")
def seg_stores(codec_path, tmp_path_factory):
    """A segmentation store pair (scenes at 32 px, 8 train + 2 val, masks beside the latents)."""
    from latentstore.data.scenes import make_scenes
    from tests.test_segmentation import _items
    d = tmp_path_factory.mktemp("seg")
    rng = np.random.default_rng(7)
    bgs = {s: [(f"{s}{k}", rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)) for k in range(2)] for s in ("train", "val")}
    make_scenes(str(d / "voc"), 8, 2, size=32, seed=0, items={"train": _items(), "val": _items(10)}, backgrounds=bgs,
                progress=False)
    out = {}
    for split in ("train", "val"):
        out[split] = str(d / f"{split}.zarr")
        make_store(str(d / "voc" / "ImageSets" / "Segmentation" / f"{split}.txt"), out[split], codec_path, size=32)
    return out


def test_segmentation_stops_on_a_corrupt_latent_or_mask_and_skip_corrupt_counts(seg_stores, tmp_path):
    d = damaged(seg_stores["train"], tmp_path)
    tiny = ["--model", "cresnet39d", "--width", "4", "--depth-scale", "0.3", "--batch-size", "4", "--num-workers", "0",
            "--grid", "0", "--threads", "1", "--epochs", "1", "--device", "cpu", "--quiet"]
    args = ["train", "seg", "--train", d, "--val", seg_stores["val"], *tiny]
    res = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "stop")])
    assert res.exit_code == 1, res.output
    assert_names(res.output.strip().splitlines()[-1], d)
    res = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "skip"), "--skip-corrupt",
                                    "--max-corrupt-fraction", "0.2"])
    assert res.exit_code == 0, res.output
    assert "skipped 1 corrupt sample(s) in training" in res.output  # the log line (stderr)
    with open(tmp_path / "skip" / "epochs.csv") as fh:
        row = next(csv.DictReader(fh))
    assert (row["skipped_corrupt"], row["val_skipped_corrupt"]) == ("1", "0"), row
    m = str(tmp_path / "m")  # a flipped bit in a mask (zarr checks the masks' crc32c)
    shutil.copytree(seg_stores["train"], m)
    f = os.path.join(m, "masks", "c", "0", "0", "0")
    raw = bytearray(open(f, "rb").read())
    raw[len(raw) // 3] ^= 0x10
    open(f, "wb").write(bytes(raw))
    with pytest.raises(CorruptSampleError):
        LatentMapDataset(m, crop=None).samples(range(len(open_store(m))))


def _rewrite_tar(src: str, dst: str, change) -> None:
    """A copy of tar src with each member's bytes passed through change(name, data)."""
    import io
    import tarfile
    with tarfile.open(src) as tin, tarfile.open(dst, "w", format=tarfile.USTAR_FORMAT) as tout:
        for m in tin:
            data = change(m.name, tin.extractfile(m).read())
            ti = tarfile.TarInfo(m.name)
            ti.size, ti.mtime, ti.mode = len(data), 0, 0o644
            tout.addfile(ti, io.BytesIO(data))


def test_a_webdataset_mask_is_checked_on_every_read(seg_stores, codec_path, tmp_path):
    """A WebDataset mask carries its crc32 in the sample's .json: a flipped bit in it is a CorruptSampleError
    naming the sample. A store written before that field (stripped here) has its tar checked whole, once,
    against the sha256 of its commit record."""
    import glob
    import json
    from latentstore.store.writer import sha256_file
    src = os.path.join(os.path.dirname(seg_stores["train"]), "voc", "ImageSets", "Segmentation", "train.txt")
    wds = str(tmp_path / "wds")
    make_store(src, wds, codec_path, fmt="wds", size=32)
    s = open_store(wds)
    assert s.schema.has_masks and all(s.backend.mask(int(i)) is not None for i in s.slots)
    tar = sorted(glob.glob(os.path.join(wds, "*.tar")))[0]

    def flip_first_mask(name, data):
        if name.endswith(".mask.npy") and not flip_first_mask.done:
            flip_first_mask.done = True
            data = bytearray(data)
            data[-3] ^= 0x10  # in the mask's values, past the npy header
            return bytes(data)
        return data
    flip_first_mask.done = False
    bad = str(tmp_path / "bad")
    shutil.copytree(wds, bad)
    _rewrite_tar(tar, os.path.join(bad, os.path.basename(tar)), flip_first_mask)
    b = open_store(bad)
    with pytest.raises(CorruptSampleError, match="mask fails its checksum"):
        [b.backend.mask(int(i)) for i in b.slots]

    def legacy(name, data):  # no mask_crc32 in the .json, as before it was written
        if name.endswith(".json"):
            meta = json.loads(data)
            meta.pop("mask_crc32")
            return json.dumps(meta, sort_keys=True).encode()
        return data
    for variant, change in (("old", legacy), ("old-bad", lambda n, d: flip_first_mask(n, legacy(n, d)))):
        d = str(tmp_path / variant)
        shutil.copytree(wds, d)
        flip_first_mask.done = False
        _rewrite_tar(tar, os.path.join(d, os.path.basename(tar)), change)
        if variant == "old":  # its commit record names the rewritten tar's sha256: an intact old store
            st = open_store(d)
            rel = os.path.basename(tar)
            st.backend.schema.checksums = {**st.backend.schema.checksums, rel: sha256_file(os.path.join(d, rel))}
            assert all(st.backend.mask(int(i)) is not None for i in st.slots)
            assert st.backend._tars_checked == {os.path.join(d, rel)}  # hashed once, not once per mask
        else:  # the recorded sha256 is the original tar's: the flipped bit fails it
            st = open_store(d)
            with pytest.raises(CorruptSampleError, match="fails its checksum"):
                [st.backend.mask(int(i)) for i in st.slots]


@pytest.mark.parametrize("kind", KINDS)
def test_verify_names_the_damaged_sample_once(stores, kind, tmp_path):
    """verify's decode pass reports a CorruptSampleError as it is (one line already naming the store, shard and
    sample), not wrapped in a second `where: does not decode (...)` that names the sample twice. (Zarr's checked
    read goes through zarr itself, whose errors name no sample: those are wrapped, once.)"""
    from latentstore.store.verify import verify
    d = damaged(stores[kind], tmp_path)
    s = open_store(d)
    where = s.backend.where(int(s.slots[VICTIM]))
    rep = verify(d)
    about = [e for e in rep["errors"] if where in e]
    assert not rep["ok"] and len(about) == 1, rep["errors"]
    assert about[0].count(where) == 1, about[0]
