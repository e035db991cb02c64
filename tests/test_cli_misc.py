"""The rest of the CLI, in-process: flops, info, decode, eval rd, codecs."""
import csv
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from latentstore.cli import main
from latentstore.codec.zoo import available_codecs
from tests.store_fixtures import make_store, make_tree


def test_flops_compares_decoder_plus_resnet_with_cresnet():
    res = CliRunner().invoke(main, ["flops", "--size", "64", "--json"])
    assert res.exit_code == 0, res.output
    t = json.loads(res.output)
    assert t["rgb"]["resnet71"] > t["rgb"]["resnet50"] > 0
    assert t["latent"]["cresnet39"]["8"] < t["latent"]["cresnet51"]["8"] < t["latent"]["cresnet72"]["8"]
    from latentstore.models.flops import format_flop_table
    t["codec"] = {int(k): v for k, v in t["codec"].items()}
    t["latent"] = {n: {int(k): v for k, v in d.items()} for n, d in t["latent"].items()}
    text = format_flop_table(t)
    assert "decoder + ResNet-50" in text and "cResNet-51" in text


@pytest.fixture(scope="module")
def store(codec_path, tmp_path_factory):
    d = tmp_path_factory.mktemp("misc")
    src = make_tree(str(d / "src"), with_bad=False)
    make_store(src, str(d / "s.zarr"), codec_path, size=32)
    return str(d / "s.zarr")


def test_info_and_decode(store, tmp_path):
    r = CliRunner()
    res = r.invoke(main, ["info", store, "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["num_samples"] == 14 and d["format"] == "zarr"
    assert d["class_names"] == ["cats", "nothing_here", "space"]
    text = r.invoke(main, ["info", store]).output
    assert "classes        0: cats, 1: nothing_here, 2: space" in text
    # the embedded codec is paid once per store: the ratio without it is given beside the whole-store one
    assert d["ratio_to_source_without_codec"] == pytest.approx(
        d["source_bytes"] / (d["bytes_on_disk"] - d["codec_file_bytes"]))
    assert "without the embedded codec" in text
    # the rates are the store's own bytes over its pixels (14 samples of 32x32), not constants
    assert 0 < d["latent_bytes"] < d["bytes_on_disk"]
    assert d["bpp_stored"] == pytest.approx(d["latent_bytes"] * 8 / (14 * 32 * 32))
    proj = d["imagenet_projection"]
    per_image = 256 * 256 * proj["bpp"] / 8 + proj["overhead_bytes_per_sample"]
    assert proj["bpp"] == pytest.approx(d["bpp_payload"]) and proj["gb_at_256x256"] == pytest.approx(
        proj["images"] * per_image / 1e9)
    res = r.invoke(main, ["decode", store, "--out", str(tmp_path / "png"), "--index", "0", "--index", "3"])
    assert res.exit_code == 0, res.output
    from latentstore.store import open_store
    s = open_store(store)
    stems = [os.path.splitext(os.path.basename(s.meta(i)["source"]))[0] for i in (0, 3)]
    names = sorted(os.listdir(tmp_path / "png"))
    # by slot (unique, sorts like the store) and by source name (what a user knows), issue #28
    assert names == [f"0000000-{stems[0]}.png", f"0000003-{stems[1]}.png"], names
    assert Image.open(tmp_path / "png" / names[0]).size == (32, 32)
    res = r.invoke(main, ["decode", store, "--out", str(tmp_path / "png"), "--index", "99"])
    assert res.exit_code == 2 and "out of range" in res.output
    res = r.invoke(main, ["info", str(tmp_path / "nothing")])  # a missing path given as an argument: usage (2)
    assert res.exit_code == 2 and "no such store" in res.output and "Traceback" not in res.output


def test_eval_rd_writes_csv_and_plot(codec_path, tmp_path):
    from tests.badfiles import base_photo
    for i, side in enumerate((64, 72)):
        Image.fromarray(base_photo(side)).save(tmp_path / f"p{i}.png")
    res = CliRunner().invoke(main, ["eval", "rd", str(tmp_path / "p0.png"), str(tmp_path / "p1.png"), "--out",
                                    str(tmp_path / "rd"), "--codec", codec_path, "--max-side", "0"])
    assert res.exit_code == 0, res.output
    (w0, h0), (w1, h1) = (Image.open(tmp_path / f"p{i}.png").size for i in (0, 1))
    assert f"scale: 2 photos at full size (--max-side 0), {w0}x{h0} to {w1}x{h1}" in res.output
    rows = list(csv.DictReader(open(tmp_path / "rd" / "rd_points.csv")))
    methods = {r["method"] for r in rows}
    assert {"JPEG", "JPEG2000", "WebP", codec_path} <= methods
    assert all(float(r["bpp"]) > 0 for r in rows)
    assert os.path.getsize(tmp_path / "rd" / "rd_curves.png") > 1000


@pytest.mark.skipif(not available_codecs(), reason="no shipped codecs")
def test_codecs_json_lists_the_operating_points(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTSTORE_CACHE", str(tmp_path))  # never the user's cache
    res = CliRunner().invoke(main, ["codecs", "--json", "--max-side", "128"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output)}
    for name, C in (("ls-c8", 8), ("ls-c16", 16), ("ls-c32", 32)):
        assert rows[name]["C"] == C and rows[name]["L"] == 6 and rows[name]["bpp"] > 0
        assert rows[name]["source"] == "measured now" and rows[name]["max_side"] == 128
    assert rows["ls-c8"]["bpp"] < rows["ls-c16"]["bpp"] < rows["ls-c32"]["bpp"]
    res = CliRunner().invoke(main, ["codecs", "--max-side", "128"])  # the second call reads the cache
    assert res.exit_code == 0 and res.output.count("cache (") == len(available_codecs()), res.output


def test_a_run_directory_is_resumed_restarted_or_refused(store, tmp_path):
    """--out of train classify: refused without --resume/--force, resumed only with the same options, a finished
    run says so instead of training again, --force starts over; the run ends in one summary line."""
    out = str(tmp_path / "run")
    tiny = ["--train", store, "--val", store, "--out", out, "--model", "cresnet39", "--width", "8", "--depth-scale",
            "0.3", "--batch-size", "4", "--epochs", "2", "--num-workers", "0", "--device", "cpu", "--quiet"]
    r = CliRunner()
    steps = lambda: len(json.load(open(os.path.join(out, "ckpt.json")))["log"])  # noqa: E731
    res = r.invoke(main, ["train", "classify", *tiny, "--max-steps", "3"])
    assert res.exit_code == 0 and "stopped at step 3" in res.output and steps() == 3, res.output
    res = r.invoke(main, ["train", "classify", *tiny])
    assert res.exit_code == 2 and "unfinished training run" in res.output and "--resume" in res.output, res.output
    res = r.invoke(main, ["train", "classify", *tiny, "--resume", "--lr", "0.5"])
    assert res.exit_code == 2 and "--lr 0.1 -> 0.5" in res.output and steps() == 3, res.output
    res = r.invoke(main, ["train", "classify", *tiny, "--resume"])
    assert res.exit_code == 0 and steps() == 8, res.output  # 14 samples, batch 4: 4 steps an epoch, 2 epochs
    line = res.output.strip().splitlines()[-1]
    assert line.startswith("done: best val top-1 ") and "2 epochs, 8 steps" in line and "ckpt.safetensors" in line
    eps = json.load(open(os.path.join(out, "ckpt.json")))["epochs_log"]
    assert f"top-1 {max(e['top1'] for e in eps):.1f}%" in line
    res = r.invoke(main, ["train", "classify", *tiny, "--resume"])
    assert res.exit_code == 0 and "already finished" in res.output and line in res.output and steps() == 8
    res = r.invoke(main, ["train", "classify", *tiny])
    assert res.exit_code == 2 and "a finished training run" in res.output
    res = r.invoke(main, ["train", "classify", *tiny, "--force", "--max-steps", "2"])
    assert res.exit_code == 0 and steps() == 2, res.output  # started over, not resumed at step 8


def test_eval_rd_says_when_it_downscales(codec_path, tmp_path):
    from tests.badfiles import base_photo
    Image.fromarray(base_photo(96)).save(tmp_path / "p.png")
    res = CliRunner().invoke(main, ["eval", "rd", str(tmp_path / "p.png"), "--out", str(tmp_path / "rd"), "--codec",
                                    codec_path, "--max-side", "48"])
    assert res.exit_code == 0, res.output
    w, h = Image.open(tmp_path / "p.png").size
    assert f"scale: 1 of 1 photos downscaled to a 48-px shorter side ({w}x{h} -> " in res.output
    assert "--max-side 0" in open(tmp_path / "rd" / "rd_scale.txt").read()


def test_eval_rd_crop_measures_the_centre_square_at_full_resolution(codec_path, tmp_path):
    from latentstore.eval.rd import centre_crop
    from tests.badfiles import base_photo
    img = base_photo(96)
    Image.fromarray(img).save(tmp_path / "p.png")
    h, w = img.shape[:2]
    assert np.array_equal(centre_crop(img, 32), img[(h - 32) // 2:(h - 32) // 2 + 32, (w - 32) // 2:(w - 32) // 2 + 32])
    assert centre_crop(img[:20], 32).shape[:2] == (20, min(32, w))  # a shorter side stays whole
    res = CliRunner().invoke(main, ["eval", "rd", str(tmp_path / "p.png"), "--out", str(tmp_path / "rd"), "--codec",
                                    codec_path, "--max-side", "0", "--crop", "32"])
    assert res.exit_code == 0, res.output
    assert "centre 32x32 crop (--crop)" in open(tmp_path / "rd" / "rd_scale.txt").read()
    rows = list(csv.DictReader(open(tmp_path / "rd" / "rd_points.csv")))
    for r in rows:  # bpp is 8 * bytes / pixels: every point measured the 32 x 32 crop, not the photo
        assert round(8 * int(r["bytes"]) / float(r["bpp"])) in range(1020, 1029), r


def test_decompress_writes_the_format_its_suffix_names(codec_path, tmp_path):
    from tests.badfiles import base_photo
    Image.fromarray(base_photo(48)).save(tmp_path / "p.png")
    r = CliRunner()
    assert r.invoke(main, ["compress", str(tmp_path / "p.png"), str(tmp_path / "p.lsb"), "--codec", codec_path]).exit_code == 0
    for suffix, fmt in ((".jpg", "JPEG"), (".JPEG", "JPEG"), (".webp", "WEBP"), (".png", "PNG"), (".tif", "TIFF")):
        out = tmp_path / f"o{suffix}"
        res = r.invoke(main, ["decompress", str(tmp_path / "p.lsb"), str(out), "--codec", codec_path])
        assert res.exit_code == 0, res.output
        with Image.open(out) as im:
            assert im.format == fmt and im.size == Image.open(tmp_path / "p.png").size
    png, webp = (np.asarray(Image.open(tmp_path / f"o{s}")) for s in (".png", ".webp"))
    assert np.array_equal(png, webp)  # WebP is written lossless: the decoded pixels, exactly


def test_a_recipe_added_to_the_trainer_is_accepted_by_the_cli():
    """--recipe's choices come from latentstore_train.codec.RECIPES when the command is first used (a fresh
    interpreter: in this one the command may already have built its options)."""
    import subprocess
    import sys
    code = ("import copy, latentstore_train.codec as c; c.RECIPES['made-up'] = copy.deepcopy(c.RECIPES['smoke']); "
            "from click.testing import CliRunner; from latentstore.cli import main; "
            "r = CliRunner().invoke(main, ['train', 'codec', '--recipe', '{}', '--out', 'x', '--steps', '0']); "
            "print(r.exit_code, r.output.strip().splitlines()[-1])")
    for name, words in (("made-up", "--steps must be >= 1"), ("not-made", "Invalid value for '--recipe'")):
        out = subprocess.run([sys.executable, "-c", code.format(name)], capture_output=True, text=True, timeout=120)
        assert out.stdout.startswith("2 ") and words in out.stdout, (out.stdout, out.stderr[-2000:])
