"""Joint codec + classifier finetuning: the loss, where gradients go, and a CPU run that yields a usable codec."""
import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from latentstore.cli import main
from latentstore.codec.zoo import load_codec_file
from latentstore.errors import UsageError
from latentstore.models.resnet import build
from latentstore_train.classify import ClassifyConfig, train as train_classify
from latentstore_train.joint import JointConfig, JointModel, joint_loss, load_classifier, train as train_joint
from tests.store_fixtures import make_store, make_tree


def test_loss_against_a_hand_computation():
    x = torch.tensor([[[[0.0, 1.0]]]]).expand(1, 3, 1, 2).contiguous()  # (1, 3, 1, 2)
    x_hat = x + 0.1  # every pixel off by 0.1 -> MSE on 0..255 = (25.5)^2 = 650.25
    logits = torch.tensor([[2.0, 0.0]])
    y = torch.tensor([0])
    out = {"x_hat": x_hat, "entropy_soft": torch.tensor(1.5), "logits": logits}
    cfg = JointConfig(gamma=0.01)
    t = joint_loss(out, x, y, cfg, beta=10.0, target_bits=1.0)
    ce = np.log(1 + np.exp(-2.0))  # -log softmax([2, 0])[0] = 0.126928
    hand = 0.01 * (650.25 + 10.0 * (1.5 - 1.0)) + ce  # = 6.5525 + 0.126928
    assert abs(t["loss"].item() - hand) < 1e-4, (t["loss"].item(), hand)
    cfg.freeze_codec = True  # the control optimises the classifier's CE alone
    assert abs(joint_loss(out, x, y, cfg, 10.0, 1.0)["loss"].item() - ce) < 1e-6


@pytest.mark.parametrize("freeze", [False, True])
def test_gradients_reach_the_encoder_only_in_joint_mode(codec_path, freeze):
    codec = load_codec_file(codec_path)
    clf = build("cresnet39", in_channels=codec.cfg.C, num_classes=3, width=8, depth_scale=0.3)
    m = JointModel(codec, clf, freeze).train()
    x = torch.rand(2, 3, 32, 32)
    t = joint_loss(m(x), x, torch.tensor([0, 2]), JointConfig(freeze_codec=freeze), 600.0, 0.5)
    t["loss"].backward()
    enc = codec.encoder.conv1.weight.grad
    if freeze:
        assert enc is None
    else:
        assert enc is not None and enc.abs().sum() > 0
    assert clf.head[-1].weight.grad.abs().sum() > 0  # the classifier learns either way


@pytest.fixture(scope="module")
def setup(codec_path, tmp_path_factory):
    d = tmp_path_factory.mktemp("joint")
    src = make_tree(str(d / "src"), with_bad=False)
    make_store(src, str(d / "s.zarr"), codec_path, size=32)
    train_classify(ClassifyConfig(input="latent", train=str(d / "s.zarr"), val=str(d / "s.zarr"), model="cresnet39",
                                  width=8, depth_scale=0.3, batch_size=4, epochs=1, num_workers=0, max_steps=2),
                   str(d / "cls"), progress=False)
    rng = np.random.default_rng(0)
    np.savez(d / "rgb.npz", images=rng.integers(0, 255, (10, 32, 32, 3), dtype=np.uint8),
             labels=rng.integers(0, 3, 10), num_classes=3)
    return {"cls": str(d / "cls"), "npz": str(d / "rgb.npz"), "codec": codec_path, "dir": d}


def test_a_joint_step_writes_a_codec_compress_can_use_and_resumes_exactly(setup, tmp_path):
    base = dict(codec=setup["codec"], classifier=setup["cls"], train=setup["npz"], val=setup["npz"], batch_size=2,
                epochs=2, num_workers=0, eval_images=4)
    straight = train_joint(JointConfig(**base, max_steps=6), str(tmp_path / "a"), progress=False)
    train_joint(JointConfig(**base, max_steps=3), str(tmp_path / "b"), progress=False)
    resumed = train_joint(JointConfig(**base, max_steps=6), str(tmp_path / "b"), progress=False)
    assert [r["loss"] for r in straight["log"]] == [r["loss"] for r in resumed["log"]]  # exact resume
    out = tmp_path / "a"
    res = json.load(open(out / "result.json"))
    start = load_codec_file(setup["codec"])
    new = load_codec_file(str(out / "codec.safetensors"))
    assert res["mode"] == "joint" and new.hash == res["codec_hash"] != start.hash and new.name == "test-c8-joint"
    assert not torch.equal(new.encoder.conv1.weight, start.encoder.conv1.weight)  # the encoder was finetuned
    img = tmp_path / "p.png"
    from PIL import Image
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(img)
    r = CliRunner()
    assert r.invoke(main, ["compress", str(img), str(tmp_path / "p.lsb"), "--codec", str(out / "codec.safetensors")]).exit_code == 0
    res2 = r.invoke(main, ["decompress", str(tmp_path / "p.lsb"), str(tmp_path / "q.png"), "--codec",
                           str(out / "codec.safetensors")])
    assert res2.exit_code == 0, res2.output
    clf, c = load_classifier(str(out / "classifier"), new.cfg.C)  # a classify-style run: a backbone for seg
    assert c["model"] == "cresnet39"


def test_the_control_keeps_the_codec(setup, tmp_path):
    cfg = JointConfig(codec=setup["codec"], classifier=setup["cls"], train=setup["npz"], val=setup["npz"],
                      batch_size=2, epochs=1, num_workers=0, freeze_codec=True, eval_images=2)
    r = train_joint(cfg, str(tmp_path / "c"), progress=False)
    assert r["mode"] == "control" and r["codec_hash"] == load_codec_file(setup["codec"]).hash


def test_bad_configs_are_one_line(setup, tmp_path, codec_path):
    with pytest.raises(UsageError, match="gamma"):
        train_joint(JointConfig(codec=codec_path, classifier=setup["cls"], train=setup["npz"], val=setup["npz"],
                                gamma=0), str(tmp_path / "g"))
    from tests.conftest import make_codec_file
    c16 = make_codec_file(str(tmp_path / "c16.safetensors"), C=16, name="test-c16")
    with pytest.raises(UsageError, match="C=16"):
        train_joint(JointConfig(codec=c16, classifier=setup["cls"], train=setup["npz"], val=setup["npz"]),
                    str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w" / "ckpt.json")


@pytest.mark.parametrize("freeze", [False, True])
def test_ddp_under_torchrun_on_cpu(setup, tmp_path, freeze):
    """Two processes (gloo, CPU): joint and control runs finish, each rank taking half of every batch."""
    import subprocess
    import sys
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    out = tmp_path / "ddp"
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "latentstore.cli", "train", "joint",
           "--codec", setup["codec"], "--classifier", setup["cls"], "--train", setup["npz"], "--val", setup["npz"],
           "--batch-size", "5", "--epochs", "2", "--num-workers", "0", "--eval-images", "2", "--device", "cpu",
           "--out", str(out), "--quiet"] + (["--freeze-codec"] if freeze else [])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.load(open(out / "result.json"))
    assert res["mode"] == ("control" if freeze else "joint")
    assert json.load(open(out / "config.json"))["world_size"] == 2
    assert len(json.load(open(out / "ckpt.json"))["log"]) == 2  # 10 images, 2 ranks x batch 5: a step per epoch
