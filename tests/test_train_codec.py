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
