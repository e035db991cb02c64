"""`latentstore predict`: a classify run's top-k labels for a store, an image folder or files; images are encoded by
the run's store codec and classified from their latents, never decoded to pixels."""
import json
import os
import shutil

import pytest
from click.testing import CliRunner
from PIL import Image

from latentstore.cli import main
from tests.badfiles import make_bad_files
from tests.conftest import make_codec_file
from tests.store_fixtures import make_store, make_tree

TINY = ["--model", "cresnet39", "--width", "8", "--depth-scale", "0.3", "--batch-size", "4", "--epochs", "1",
        "--num-workers", "0", "--crop", "0", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def run(codec_path, tmp_path_factory):
    d = tmp_path_factory.mktemp("predict")
    src = make_tree(str(d / "src"), with_bad=False)
    make_store(src, str(d / "s.zarr"), codec_path, size=32)
    out = str(d / "run")
    res = CliRunner().invoke(main, ["train", "classify", "--train", str(d / "s.zarr"), "--val", str(d / "s.zarr"),
                                    "--out", out, *TINY])
    assert res.exit_code == 0, res.output
    return {"d": d, "src": src, "store": str(d / "s.zarr"), "run": out}


def _predict(*args):
    return CliRunner().invoke(main, ["predict", *map(str, args)])


def test_predict_a_store_as_json(run):
    res = _predict(run["store"], "--run", run["run"], "--json", "--top-k", "2")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert len(rows) == 14
    for r in rows:
        assert len(r["predictions"]) == 2 and r["error"] is None
        assert {p["label"] for p in r["predictions"]} <= {"cats", "nothing_here", "space"}
        assert r["predictions"][0]["score"] >= r["predictions"][1]["score"] and sum(
            p["score"] for p in r["predictions"]) <= 1.0 + 1e-5
        assert r["label"] in ("cats", "space")
    table = _predict(run["store"], "--run", run["run"])
    assert table.exit_code == 0 and "top-1 " in table.output and "of 14 labelled samples" in table.output


def test_images_are_encoded_and_classified_like_the_service(run, monkeypatch):
    """Images: the same labels and scores as the ingest service's engine with the same run; no pixel decoded."""
    import latentstore.codec.api as api
    from latentstore.data.imageio import load_image
    from latentstore.predict import image_files
    from latentstore.serve.engine import IngestEngine
    from latentstore.store import open_store

    def no_decoding(*a, **k):
        raise AssertionError("predict decoded latents to pixels")
    monkeypatch.setattr(api, "symbols_to_rgb", no_decoding)
    res = _predict(run["src"], "--run", run["run"], "--json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    files = image_files([run["src"]])
    assert [r["source"] for r in rows] == files and len(files) == 14
    eng = IngestEngine(os.path.join(run["store"], "codec.safetensors"), run["run"], "cpu")
    eng.bind(open_store(run["store"]).schema)
    served = eng.run([eng.prepare(load_image(f)) for f in files])
    for r, s in zip(rows, served):
        assert [p["label"] for p in r["predictions"]] == [p["label"] for p in s.predictions]
        assert [p["score"] for p in r["predictions"]] == pytest.approx([p["score"] for p in s.predictions], abs=1e-5)
    one = json.loads(_predict(files[3], "--run", run["run"], "--json").output)  # batching does not matter
    assert [p["label"] for p in one[0]["predictions"]] == [p["label"] for p in rows[3]["predictions"]]
    assert [p["score"] for p in one[0]["predictions"]] == pytest.approx([p["score"] for p in rows[3]["predictions"]],
                                                                         abs=1e-5)


def test_a_bad_image_is_reported_and_the_rest_predicted(run, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(os.path.join(run["src"], "cats"), folder)
    shutil.copy(make_bad_files(str(tmp_path / "bad"))["truncated.jpg"][0], folder / "zz_truncated.jpg")
    res = _predict(folder, "--run", run["run"])
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert lines[-1].startswith("error: 1 of ") and "zz_truncated.jpg" in lines[-1]
    assert sum("error:" not in ln for ln in lines[1:-1]) == len(os.listdir(folder)) - 1


def test_mistakes_are_one_line_usage_errors(run, tmp_path, codec_path):
    other = str(tmp_path / "c2.zarr")
    make_store(run["src"], other, make_codec_file(str(tmp_path / "c2.safetensors"), seed=1, name="test-c8b"), size=32)
    Image.new("RGB", (40, 40)).save(tmp_path / "x.png")
    runs = {}
    for name, cfg in (("rgb", {"input": "rgb", "model": "resnet50", "num_classes": 3}),
                      ("seg", {"input": "latent", "model": "cresnet51d", "num_classes": 11})):
        os.makedirs(tmp_path / name)
        json.dump({**cfg, "train": run["store"]}, open(tmp_path / name / "config.json", "w"))
        runs[name] = str(tmp_path / name)
    cases = [([run["store"], "--run", str(tmp_path / "no-run")], "no such run"),
             ([str(tmp_path / "missing.jpg"), "--run", run["run"]], "no such image"),
             ([other, "--run", run["run"]], "codec"),
             ([run["store"], str(tmp_path / "x.png"), "--run", run["run"]], "not both"),
             ([run["store"], "--run", run["run"], "--top-k", "0"], "--top-k"),
             (["s3:/bucket/x.zarr", "--run", run["run"]], "looks like a URL"),
             ([run["store"], "--run", runs["rgb"]], "trained on --input rgb"),
             ([run["store"], "--run", runs["seg"]], "not a `train classify` run")]
    for args, words in cases:
        res = _predict(*args)
        assert res.exit_code == 2 and words in res.output and len(res.output.strip().splitlines()) == 1, res.output
