"""The codec training program: a few real steps on real photos, exact resume, an installable codec."""
import json

import numpy as np

from latentstore.codec.model import CodecConfig
from latentstore.codec.zoo import load_codec_file
from latentstore_train.codec import CodecTrainConfig, train


def _cfg(stop_at=0):
    return CodecTrainConfig(codec=CodecConfig(name="t-c8", C=8, N=8, target_bpp=0.2), steps=6, batch_size=2,
                            crop=32, photo_side=96, max_photos=3, ckpt_every=2, device="cpu", seed=3, stop_at=stop_at)


def test_resume_continues_the_loss_curve_exactly(tmp_path):
    train(_cfg(), str(tmp_path / "a"), progress=False)
    train(_cfg(stop_at=3), str(tmp_path / "b"), progress=False)  # interrupted after step 3 (checkpointed there)
    r = train(_cfg(), str(tmp_path / "b"), install_to=str(tmp_path / "c.safetensors"), progress=False)
    a = json.load(open(tmp_path / "a" / "ckpt.json"))["log"]
    b = json.load(open(tmp_path / "b" / "ckpt.json"))["log"]
    assert [x["loss"] for x in a] == [x["loss"] for x in b]
    codec = load_codec_file(str(tmp_path / "c.safetensors"))
    assert codec.freqs.shape == (8, 6) and (codec.freqs > 0).all()
    assert codec.meta["seed"] == 3 and r["steps"] == 6
    assert (tmp_path / "b" / "curves.png").exists() and (tmp_path / "b" / "config.json").exists()


def test_train_all_installs_a_family_and_keeps_the_old_codec_by_version(tmp_path, monkeypatch):
    """`latentstore train codec --all` (smoke recipe): every MS-SSIM variant is trained and installed; a second
    install of a different codec under the same name keeps the first as NAME@1, which still decodes its bytes."""
    from click.testing import CliRunner

    from latentstore.cli import main
    from latentstore.codec import zoo
    from latentstore.codec.api import compress, decompress
    monkeypatch.setattr(zoo, "WEIGHTS_DIR", str(tmp_path / "zoo"))
    (tmp_path / "zoo").mkdir()
    r = CliRunner()
    res = r.invoke(main, ["train", "codec", "--all", "--family", "msssim", "--recipe", "smoke", "--out",
                          str(tmp_path / "runs"), "--install", "--quiet", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert zoo.available_codecs() == ["ls-c8-msssim", "ls-c16-msssim", "ls-c32-msssim"]
    first = zoo.load_codec("ls-c8-msssim")
    assert json.load(open(tmp_path / "runs" / "ls-c8-msssim" / "config.json"))["distortion"] == "msssim"
    rgb = np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    old_bytes = compress(rgb, first, "latentstore.ans")  # v1 names the codec: found again by name and hash
    res = r.invoke(main, ["train", "codec", "--name", "ls-c8-msssim", "--recipe", "smoke", "--seed", "7", "--out",
                          str(tmp_path / "again"), "--install", "--quiet", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "ls-c8-msssim@1" in zoo.available_codecs() and zoo.load_codec("ls-c8-msssim").hash != first.hash
    assert zoo.load_codec("ls-c8-msssim@1").hash == first.hash
    assert decompress(old_bytes).shape == rgb.shape  # no codec given: the zoo finds ls-c8-msssim@1 by hash
