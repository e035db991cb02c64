"""The rest of the CLI, in-process: flops, info, decode, eval rd, codecs."""
import csv
import json
import os

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
    # the rates are the store's own bytes over its pixels (14 samples of 32x32), not constants
    assert 0 < d["latent_bytes"] < d["bytes_on_disk"]
    assert d["bpp_stored"] == pytest.approx(d["latent_bytes"] * 8 / (14 * 32 * 32))
    proj = d["imagenet_projection"]
    per_image = 256 * 256 * proj["bpp"] / 8 + proj["overhead_bytes_per_sample"]
    assert proj["bpp"] == pytest.approx(d["bpp_payload"]) and proj["gb_at_256x256"] == pytest.approx(
        proj["images"] * per_image / 1e9)
    res = r.invoke(main, ["decode", store, "--out", str(tmp_path / "png"), "--index", "0", "--index", "3"])
    assert res.exit_code == 0, res.output
    assert sorted(os.listdir(tmp_path / "png")) == ["0000000.png", "0000003.png"]
    assert Image.open(tmp_path / "png" / "0000000.png").size == (32, 32)
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
