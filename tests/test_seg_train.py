"""Segmentation end to end (issue #14): `datasets scenes`, `convert VOCROOT --split` with mask rejects, mask
geometry equal to DALI's, one CPU training step per input through `train seg`, exact resume, bad input."""
import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from latentstore.cli import main
from latentstore.convert.masks import fit_mask, load_mask, resized_shape
from latentstore.data.datasets import LatentMapDataset
from latentstore.data.scenes import make_scenes
from latentstore.data.seg_datasets import ArrayPairs, PixelSegDataset
from latentstore.data.voc import read_mask, write_palette_png
from latentstore.errors import BadImageError
from latentstore.store import open_store
from tests.test_segmentation import _items

# one torch thread: these nets are tiny, and two threads on a busy 2-core machine spend their time waiting
TINY = ["--width", "4", "--depth-scale", "0.3", "--batch-size", "4", "--num-workers", "0", "--grid", "2", "--threads", "1",
        "--quiet"]
SETS = "ImageSets/Segmentation"


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()  # `--threads 1` sets the process's count: give the other tests theirs back
    yield
    torch.set_num_threads(n)


def _cli(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in r.output, r.output
    return r


def _backgrounds():
    rng = np.random.default_rng(7)
    return {s: [(f"{s}{k}", rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)) for k in range(2)]
            for s in ("train", "val")}


def _add_pair(root, sid, rgb, mask, split="train", raw_mask: bytes | None = None):
    Image.fromarray(rgb).save(os.path.join(root, "JPEGImages", sid + ".jpg"), quality=95)
    mpath = os.path.join(root, "SegmentationClass", sid + ".png")
    if raw_mask is not None:
        open(mpath, "wb").write(raw_mask)
    else:
        write_palette_png(mask, mpath)
    with open(os.path.join(root, SETS, split + ".txt"), "a") as f:
        f.write(sid + "\n")


@pytest.fixture(scope="module")
def seg(codec_path, tmp_path_factory):
    """Scenes at 32 px (10 train + 4 val), plus an odd-sized pair and three bad masks in train; both splits
    converted with the test codec."""
    d = tmp_path_factory.mktemp("seg")
    root = str(d / "scenes")
    make_scenes(root, 10, 4, size=32, seed=0, items={"train": _items(), "val": _items(10)},
                backgrounds=_backgrounds(), progress=False)
    rng = np.random.default_rng(1)
    odd = np.zeros((37, 45), np.uint8)
    odd[5:30, 9:31], odd[0] = 3, 255
    _add_pair(root, "odd_000000", rng.integers(0, 255, (37, 45, 3), dtype=np.uint8), odd)  # W 45 x H 37
    _add_pair(root, "bad_size", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), np.zeros((31, 32), np.uint8))
    _add_pair(root, "bad_label", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), np.full((32, 32), 42, np.uint8))
    _add_pair(root, "bad_bytes", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), None, raw_mask=b"not a png")
    tr, va = str(d / "tr.zarr"), str(d / "va.zarr")
    r = _cli("convert", root, tr, "--split", "train", "--codec", codec_path, "--size", 32, "--shard-size", 8, "--quiet")
    assert r.exit_code == 0, r.output
    # the split file itself is a SRC too (what --split resolves to)
    r = _cli("convert", os.path.join(root, SETS, "val.txt"), va, "--codec", codec_path, "--size", 32, "--quiet")
    assert r.exit_code == 0, r.output
    return {"root": root, "train": tr, "val": va, "dir": d}


def test_voc_root_conversion_stores_masks_and_records_bad_ones(seg):
    s = open_store(seg["train"])
    assert s.schema.has_masks and s.schema.label_names[0] == "background" and len(s.schema.label_names) == 11
    assert len(s) == 11  # 10 scenes + the odd pair; the three bad masks are rejects, with their reasons
    reasons = {os.path.basename(r["path"]): r["reason"] for r in s.schema.rejects}
    assert set(reasons) == {"bad_size.jpg", "bad_label.jpg", "bad_bytes.jpg"}
    assert "mask is 32x31 but its image is 32x32" in reasons["bad_size.jpg"]
    assert "label(s) 42 out of range 0..10" in reasons["bad_label.jpg"]
    assert "unreadable mask" in reasons["bad_bytes.jpg"] and reasons["bad_bytes.jpg"].startswith("bad mask (")
    info = json.loads(_cli("info", seg["train"], "--json").output)
    assert len(info["rejects"]) == 3
    for i in range(len(s)):  # each stored mask is its file's, with the conversion's geometry
        src = s.meta(i)["source"]
        want = fit_mask(read_mask(src.replace("JPEGImages", "SegmentationClass")[:-4] + ".png"), 32)
        assert np.array_equal(s.mask(i), want), src
    odd = [i for i in range(len(s)) if "odd_" in s.meta(i)["source"]][0]
    assert set(np.unique(s.mask(odd))) == {0, 3, 255}
    assert _cli("verify", seg["train"]).exit_code == 0
    assert len(open_store(seg["val"])) == 4 and open_store(seg["val"]).schema.has_masks


def test_bad_voc_input_is_one_line(seg, codec_path, tmp_path):
    root = seg["root"]
    for args, want in ((["convert", root, tmp_path / "a"], "a VOC root; choose a split with --split"),
                       (["convert", root, tmp_path / "b", "--split", "test"], "split file not found (splits here:"),
                       (["convert", root, tmp_path / "c", "--split", "train", "--native"], "--native stores no masks"),
                       (["convert", tmp_path, tmp_path / "d", "--split", "train"], "not a VOC root")):
        r = _cli(*args, "--codec", codec_path, "--quiet")
        assert r.exit_code == 2 and want in r.output and len(r.output.strip().splitlines()) == 1, r.output
    with pytest.raises(BadImageError, match="mask is 45x37 but its image is 44x37"):
        load_mask(os.path.join(root, "SegmentationClass", "odd_000000.png"), 32, (37, 44), 11)


@pytest.mark.parametrize("h,w,edge_y,edge_x", [(37, 45, 17, 23), (45, 77, 21, 40), (64, 101, 29, 47), (40, 33, 21, 15)])
def test_mask_geometry_is_dalis(h, w, edge_y, edge_x):
    """A step edge through the real conversion stage (DALI, antialiased linear) and through fit_mask: the
    bright pixels and the labelled ones must be the same (away from the blended edge itself). A centre crop
    rounded down, or the longer side rounded half to even (Python's round), is one pixel off here."""
    from latentstore.convert.decode import DaliImageStage
    mask = np.zeros((h, w), np.uint8)
    mask[edge_y:, :] += 1
    mask[:, edge_x:] += 2
    rgb = np.stack([(mask & 1) * 250, (mask >> 1) * 250, np.zeros_like(mask)], -1).astype(np.uint8)
    out = DaliImageStage(32, 1).geometry([rgb])[0].astype(int)
    m = fit_mask(mask, 32)
    assert m.shape == out.shape[:2] == (32, 32)
    for bit, ch in ((1, 0), (2, 1)):
        clear = np.abs(out[..., ch] - 125) > 20  # not on the blended edge
        assert clear.mean() > 0.8 and np.array_equal(((m & bit) > 0)[clear], (out[..., ch] > 125)[clear])
    assert resized_shape(64, 77, 32) == (32, 39)  # 38.5 rounds up, as DALI's output shows


def test_datasets_scenes_through_the_cli(tmp_path, monkeypatch):
    import latentstore.data.scenes as scenes

    class FakePhotos(list):  # the photo packages stand-in: CI has no apt packages and this keeps the test fast
        def __init__(self, split, max_side):
            super().__init__(_backgrounds()[split])

        def names(self):
            return [n for n, _ in self]

    monkeypatch.setattr(scenes, "PhotoBackgrounds", FakePhotos)
    monkeypatch.setattr(scenes, "fashion_items", lambda split: _items(20 if split == "train" else 10))
    for out in ("a", "b"):
        r = _cli("datasets", "scenes", tmp_path / out, "--train", 3, "--val", 2, "--size", 32, "--seed", 5, "--quiet")
        assert r.exit_code == 0 and "wrote 3 train and 2 val scenes of 32x32 px" in r.output, r.output
    for f in ("JPEGImages/train_000002.jpg", "SegmentationClass/val_000001.png", f"{SETS}/val.txt"):
        assert open(tmp_path / "a" / f, "rb").read() == open(tmp_path / "b" / f, "rb").read()  # the seed decides
    assert json.load(open(tmp_path / "a" / "scenes.json"))["num_classes"] == 11
    r = _cli("datasets", "scenes", tmp_path / "a", "--train", 1, "--val", 1, "--size", 32)
    assert r.exit_code == 2 and "not empty" in r.output
    r = _cli("datasets", "scenes", tmp_path / "c", "--size", 30)
    assert r.exit_code == 2 and "multiple of 8" in r.output


def test_pixels_get_the_latents_crops_and_flips(seg):
    """Sample i of epoch e: the same mask crop and flip whether read with its latents or with its pixels."""
    lat = LatentMapDataset(seg["train"], train=True, crop=2, seed=3)
    s = lat.store
    masks = np.stack([s.mask(i) for i in range(len(s))])
    pix = PixelSegDataset(ArrayPairs(np.zeros(masks.shape + (3,), np.uint8), masks), train=True, crop=2, seed=3)
    flips = set()
    for i in range(len(s)):
        for e in range(3):
            a, b = lat[(i, e)], pix[(i, e)]
            assert a["mask"].shape == b["mask"].shape == (16, 16) and b["image"].shape == (3, 16, 16)
            assert torch.equal(a["mask"], b["mask"]), (i, e)
            # the mask is a 16 px window of the stored one at a multiple of 8 (the latent grid), maybe flipped
            got = a["mask"].numpy()
            wins = [masks[i][8 * y: 8 * y + 16, 8 * x: 8 * x + 16] for y in range(3) for x in range(3)]
            plain, flipped = any(np.array_equal(got, w) for w in wins), any(np.array_equal(got, w[:, ::-1]) for w in wins)
            assert plain or flipped
            if plain != flipped:
                flips.add(flipped)
    assert flips == {False, True}  # both happened, so the check above saw flips
    full = PixelSegDataset(ArrayPairs(np.zeros(masks.shape + (3,), np.uint8), masks), train=False)[0]["mask"]
    assert torch.equal(full, torch.from_numpy(masks[0]))  # eval: the whole image, as it was stored


@pytest.mark.parametrize("inp", ["latent", "recon", "rgb"])
def test_one_training_epoch_per_input_through_the_cli(inp, seg, tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTSTORE_CACHE", str(tmp_path / "cache"))
    data = [seg["root"]] * 2 if inp == "rgb" else [seg["train"], seg["val"]]
    model = "cresnet51d" if inp == "latent" else "resnet50d"
    r = _cli("train", "seg", "--input", inp, "--train", data[0], "--val", data[1], "--model", model, "--size", 32,
             "--epochs", 1, *TINY, "--out", tmp_path / "run")
    assert r.exit_code == 0, r.output
    cfg = json.load(open(tmp_path / "run" / "config.json"))
    assert cfg["train_samples"] == 11 and cfg["val_samples"] == 4 and cfg["num_classes"] == 11  # bad masks left out
    m = json.load(open(tmp_path / "run" / "seg_metrics.json"))
    assert len(m["per_class"]) == 11 and 0 <= m["miou"] <= 100 and 0 < m["pixels"] <= 4 * 32 * 32
    assert open(tmp_path / "run" / "seg_metrics.csv").readline().startswith("class_id,class,iou")
    assert Image.open(tmp_path / "run" / "predictions.png").size[0] > 200
    log = json.load(open(tmp_path / "run" / "ckpt.json"))["log"]
    assert len(log) == 3 and all(np.isfinite(x["loss"]) for x in log)  # ceil(11 / 4) steps


def test_exact_resume_mid_epoch(seg, tmp_path):
    from latentstore_train.seg import SegConfig, train
    base = dict(input="latent", train=seg["train"], val=seg["val"], model="cresnet51d", width=4, depth_scale=0.3,
                batch_size=4, epochs=2, num_workers=0, crop=2, grid=0, threads=1)  # 3 steps an epoch
    straight = train(SegConfig(**base, max_steps=5), str(tmp_path / "a"), progress=False)
    train(SegConfig(**base, max_steps=2), str(tmp_path / "b"), progress=False)  # stops inside epoch 1
    resumed = train(SegConfig(**base, max_steps=5), str(tmp_path / "b"), progress=False)
    a, b = [r["loss"] for r in straight["log"]], [r["loss"] for r in resumed["log"]]
    assert len(a) == len(b) == 5 and a == b  # bit for bit: model, optimizer, loader position, crops and flips


def test_bad_training_input_is_one_line(seg, tmp_path, codec_path):
    r = _cli("train", "seg", "--input", "latent", "--model", "resnet50d", "--train", seg["train"], "--val", seg["val"],
             "--out", tmp_path / "x")
    assert r.exit_code == 2 and "does not read latent input" in r.output
    r = _cli("train", "seg", "--input", "rgb", "--model", "resnet50d", "--train", seg["root"], "--val", seg["root"],
             "--val-split", "test", "--size", 32, *TINY, "--out", tmp_path / "y")
    errors = [x for x in r.output.splitlines() if x.startswith("error: ")]  # beside the note on left-out pairs
    assert r.exit_code == 2 and len(errors) == 1 and "split file not found" in errors[0]
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(flat / "a.png")
    assert _cli("convert", flat, tmp_path / "nomask.zarr", "--codec", codec_path, "--size", 32, "--quiet").exit_code == 0
    r = _cli("train", "seg", "--train", tmp_path / "nomask.zarr", "--val", tmp_path / "nomask.zarr", *TINY,
             "--out", tmp_path / "z")
    assert r.exit_code == 2 and "holds no masks" in r.output
    from tests.conftest import make_codec_file
    other = make_codec_file(str(tmp_path / "other.safetensors"), seed=1, name="other-c8")
    assert _cli("convert", seg["root"], tmp_path / "va2.zarr", "--split", "val", "--codec", other, "--size", 32,
                "--quiet").exit_code == 0
    r = _cli("train", "seg", "--train", seg["train"], "--val", tmp_path / "va2.zarr", *TINY, "--out", tmp_path / "w")
    assert r.exit_code == 2 and "convert both with one codec" in r.output  # before any step, not after an epoch


def test_ddp_under_torchrun_on_cpu(seg, tmp_path):
    import subprocess
    import sys
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "latentstore_train.seg", "--input", "latent",
           "--train", seg["train"], "--val", seg["val"], "--model", "cresnet51d", "--epochs", "1", "--device", "cpu",
           *TINY, "--out", str(tmp_path / "ddp")]  # gloo on the CPU, even where CUDA exists
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    cfg = json.load(open(tmp_path / "ddp" / "config.json"))
    assert cfg["world_size"] == 2
    assert len(json.load(open(tmp_path / "ddp" / "ckpt.json"))["log"]) == 2  # 11 samples padded to 12: 6 a rank
    assert json.load(open(tmp_path / "ddp" / "seg_metrics.json"))["pixels"] > 0


def test_backbone_from_a_classification_run(seg, tmp_path):
    from latentstore.models.resnet import build
    from latentstore_train.checkpoint import save_checkpoint
    clf = build("cresnet51", in_channels=8, num_classes=5, width=4, depth_scale=0.3)
    run = tmp_path / "clf"
    run.mkdir()
    save_checkpoint(str(run), 1, clf, torch.optim.SGD(clf.parameters(), lr=0.1), torch.Generator(),
                    {"model": "cresnet51"})
    r = _cli("train", "seg", "--train", seg["train"], "--val", seg["val"], "--backbone", run, "--max-steps", 1,
             *TINY, "--out", tmp_path / "seg")
    assert r.exit_code == 0, r.output
    note = json.load(open(tmp_path / "seg" / "config.json"))["backbone_loaded"]
    assert "backbone tensors loaded, 2 head tensors skipped" in note and "missing" not in note
    r = _cli("train", "seg", "--train", seg["train"], "--val", seg["val"], "--backbone", run, "--width", 8,
             "--out", tmp_path / "seg2")  # another width: one line, exit 2
    assert r.exit_code == 2 and "does not fit the cresnet51d backbone" in r.output
