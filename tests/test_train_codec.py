"""The codec training program: a few real steps on real photos, exact resume, an installable codec."""
import json

import numpy as np

from latentstore.codec.model import CodecConfig
from latentstore.codec.zoo import load_codec_file
from latentstore_train.codec import CodecTrainConfig, train


def _cfg(stop_at=0):
    return CodecTrainConfig(codec=CodecConfig(name="t-c8", C=8, N=8, target_bpp=0.2), steps=6, batch_size=2,
                            crop=32, photo_side=96, max_photos=3, ckpt_every=2, device="cpu", seed=3, stop_at=stop_at,
                            log_every=1)


def _losses(run_dir):
    """The loss column of a run's log.csv (one row a step in these tests: log_every=1)."""
    import csv
    return [float(r["loss"]) for r in csv.DictReader(open(run_dir / "log.csv"))]


def test_resume_continues_the_loss_curve_exactly(tmp_path):
    train(_cfg(), str(tmp_path / "a"), progress=False)
    train(_cfg(stop_at=3), str(tmp_path / "b"), progress=False)  # interrupted after step 3 (checkpointed there)
    r = train(_cfg(), str(tmp_path / "b"), install_to=str(tmp_path / "c.safetensors"), progress=False)
    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert len(a) == 6 and a == b
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


def test_bf16_on_the_cpu_resumes_exactly_and_records_what_ran(tmp_path):
    """bf16 autocast + channels_last on the CPU: an interrupted run continues the loss curve bit for bit, and the
    config beside the checkpoint says which precision ran."""
    import dataclasses

    from latentstore_train.codec import cpu_has_native_bf16, resolve_precision
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert resolve_precision("auto", "cuda") == "bf16" and resolve_precision("fp32", "cuda") == "fp32"
    bf = dataclasses.replace(_cfg(), precision="bf16")
    train(bf, str(tmp_path / "a"), progress=False)
    train(dataclasses.replace(bf, stop_at=3), str(tmp_path / "b"), progress=False)
    train(bf, str(tmp_path / "b"), progress=False)
    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert len(a) == 6 and a == b
    assert json.load(open(tmp_path / "b" / "config.json"))["precision_resolved"] == "bf16"
    fp = train(dataclasses.replace(_cfg(), precision="fp32"), str(tmp_path / "c"), progress=False)
    f = _losses(tmp_path / "c")
    assert fp["precision"] == "fp32" and f[0] != a[0]  # bf16 really ran: not the fp32 numbers
    assert abs(f[0] - a[0]) < 0.05 * f[0]  # ... and close to them


def test_finetune_starts_from_the_given_codec_and_a_time_limit_stops_resumably(tmp_path):
    """init_from copies a trained codec's weights (a wrong shape is a usage error); max_minutes stops after the
    step that crossed it, checkpointed and not installed; running again finishes the same schedule."""
    import dataclasses

    import pytest
    import torch

    from latentstore.errors import UsageError
    src = tmp_path / "src.safetensors"
    train(_cfg(), str(tmp_path / "src"), install_to=str(src), progress=False)
    source = load_codec_file(str(src))
    ft = dataclasses.replace(_cfg(), init_from=str(src), lr=1e-12, distortion="msssim", mse_weight=0.5, seed=4, crop=48)
    r = train(dataclasses.replace(ft, max_minutes=1e-9), str(tmp_path / "ft"), install_to=str(tmp_path / "o.safetensors"),
              progress=False)
    assert r["steps"] == 1 and not r["finished"] and r["installed"] is False and not (tmp_path / "o.safetensors").exists()
    r = train(ft, str(tmp_path / "ft"), install_to=str(tmp_path / "o.safetensors"), progress=False)
    assert r["steps"] == 6 and r["finished"]
    out = load_codec_file(str(tmp_path / "o.safetensors"))
    for k, v in source.encoder.state_dict().items():  # lr 1e-12: still the source's weights
        assert torch.allclose(out.encoder.state_dict()[k], v, atol=1e-6), k
    assert json.load(open(tmp_path / "ft" / "config.json"))["init_from_hash"] == source.hash
    bad = dataclasses.replace(ft, codec=CodecConfig(name="t-c16", C=16, N=8, target_bpp=0.3))
    with pytest.raises(UsageError, match="differ"):
        train(bad, str(tmp_path / "bad"), progress=False)


def test_extra_training_photos_are_photos_and_never_validation_ones():
    from latentstore.data.photos import VALIDATION, available_photos
    from latentstore_train.codec import recipe_config
    from latentstore_train.codec_data import _thumb, extra_photos
    extra = extra_photos()
    assert not {n for n, _ in extra} & VALIDATION
    val = [_thumb(p.load()) for p in available_photos("val")]
    for name, rgb in extra:
        assert rgb.ndim == 3 and rgb.shape[2] == 3 and min(rgb.shape[:2]) >= 192, name
        assert max(np.corrcoef(_thumb(rgb), v)[0, 1] for v in val) < 0.9, name
    from latentstore.data.photos import resize_shorter
    half = resize_shorter(available_photos("val")[0].load(), 200)  # a validation photo at another size ...
    assert np.corrcoef(_thumb(half), val[0])[0, 1] > 0.9  # ... is caught by the check
    cfg = recipe_config("ls-c32", "cpu-finetune")
    assert cfg.distortion == "msssim" and cfg.init_from == "ls-c32" and cfg.extra_photos  # the recipe's, not reset
    assert recipe_config("ls-c32", "cpu").distortion == "mse"
