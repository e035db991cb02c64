"""Classifiers: the five names' layer counts, a few CPU training steps of each model, exact resume."""
import json
import os

import numpy as np
import pytest
import torch

from latentstore.models.resnet import ARCHS, build, count_layers
from latentstore_train.classify import ClassifyConfig, train
from tests.store_fixtures import make_store, make_tree


@pytest.mark.parametrize("name,k", [("resnet50", 50), ("resnet71", 71), ("cresnet39", 39), ("cresnet51", 51),
                                    ("cresnet72", 72)])
def test_layer_counts(name, k):
    assert count_layers(build(name)) == k


def test_shapes_and_output_stride():
    x = torch.randn(2, 3, 64, 64)
    assert build("resnet50", width=8, num_classes=7).forward_features(x).shape[-1] == 2
    assert build("resnet50", width=8, output_stride=8).forward_features(x).shape[-1] == 8
    z = torch.randn(2, 16, 8, 8)
    assert build("cresnet51", in_channels=16, width=8).forward_features(z).shape[-1] == 2
    assert build("cresnet51", in_channels=16, width=8, output_stride=1).forward_features(z).shape[-1] == 8
    assert build("cresnet39", in_channels=16, width=8, num_classes=7)(z).shape == (2, 7)


@pytest.fixture(scope="module")
def stores(codec_path, tmp_path_factory):
    d = tmp_path_factory.mktemp("cls")
    src = make_tree(str(d / "src"), with_bad=False)
    make_store(src, str(d / "s.zarr"), codec_path, size=64)
    rng = np.random.default_rng(0)
    np.savez(d / "rgb.npz", images=rng.integers(0, 255, (12, 32, 32, 3), dtype=np.uint8),
             labels=rng.integers(0, 3, 12), num_classes=3)
    return {"store": str(d / "s.zarr"), "npz": str(d / "rgb.npz"), "src": src}


@pytest.mark.parametrize("model", list(ARCHS))
def test_a_few_training_steps_of_each_model(model, stores, tmp_path):
    if model.startswith("cresnet"):
        cfg = ClassifyConfig(input="latent", train=stores["store"], val=stores["store"], crop=6)
    else:
        cfg = ClassifyConfig(input="rgb", train=stores["npz"], val=stores["npz"])
    cfg.model, cfg.width, cfg.depth_scale, cfg.batch_size, cfg.epochs, cfg.num_workers = model, 8, 0.3, 4, 1, 0
    r = train(cfg, str(tmp_path), progress=False)
    assert r["steps"] == -(-r["config"]["train_samples"] // 4) and all(np.isfinite(x["loss"]) for x in r["log"])
    ev = r["epochs"][0]
    assert ev["n"] == r["config"]["val_samples"] and ev["top1"] <= ev["top5"]
    assert abs(ev["top1"] * ev["n"] / 100 - round(ev["top1"] * ev["n"] / 100)) < 1e-9  # a whole number of hits
    assert json.load(open(tmp_path / "config.json"))["model"] == model
    assert os.path.exists(tmp_path / "curves.png")


def test_recon_input_and_exact_resume(stores, tmp_path):
    base = dict(input="recon", train=stores["store"], val=stores["store"], model="resnet50", width=8,
                depth_scale=0.3, batch_size=2, epochs=2, num_workers=0)
    straight = train(ClassifyConfig(**base, max_steps=9), str(tmp_path / "a"), progress=False)
    train(ClassifyConfig(**base, max_steps=4), str(tmp_path / "b"), progress=False)  # stops mid-epoch
    resumed = train(ClassifyConfig(**base, max_steps=9), str(tmp_path / "b"), progress=False)
    a = [r["loss"] for r in straight["log"]]
    b = [r["loss"] for r in resumed["log"]]
    assert len(a) == len(b) == 9
    assert a == b  # bit-for-bit: model, optimizer, loader position and augmentation all resume exactly


def test_ddp_under_torchrun_on_cpu(stores, tmp_path):
    import subprocess
    import sys
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "latentstore_train.classify", "--input", "latent",
           "--train", stores["store"], "--val", stores["store"], "--model", "cresnet39", "--width", "8",
           "--depth-scale", "0.3", "--batch-size", "2", "--epochs", "1", "--num-workers", "0", "--crop", "6",
           "--device", "cpu", "--out", str(tmp_path / "ddp")]  # gloo on the CPU, even where CUDA exists
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    cfg = json.load(open(tmp_path / "ddp" / "config.json"))
    assert cfg["world_size"] == 2
    log = json.load(open(tmp_path / "ddp" / "ckpt.json"))["log"]
    assert len(log) == -(-cfg["train_samples"] // 4)  # each rank takes half of every batch-of-4 worth of samples


def test_train_classify_through_the_cli(stores, tmp_path):
    from click.testing import CliRunner

    from latentstore.cli import main
    r = CliRunner()
    res = r.invoke(main, ["train", "classify", "--out", str(tmp_path / "x"), "--model", "cresnet99",
                          "--train", stores["store"], "--val", stores["store"]])
    assert res.exit_code == 2 and "cresnet99" in res.output and "Traceback" not in res.output
    res = r.invoke(main, ["train", "classify", "--out", str(tmp_path / "c"), "--input", "latent", "--train",
                          stores["store"], "--val", stores["store"], "--model", "cresnet39", "--width", "8",
                          "--depth-scale", "0.3", "--batch-size", "4", "--epochs", "1", "--num-workers", "0",
                          "--crop", "6", "--quiet"])
    assert res.exit_code == 0, res.output
    assert json.load(open(tmp_path / "c" / "config.json"))["model"] == "cresnet39"
    assert "--depth-scale" in r.invoke(main, ["train", "classify", "--help"]).output
