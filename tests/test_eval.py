"""Evaluation: the batched MS-SSIM against pytorch_msssim, rate-distortion points, and the cached codec figures."""
import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_msssim import ms_ssim, ssim

from latentstore.codec.zoo import available_codecs, load_codec
from latentstore.data.imageio import load_image
from latentstore.data.photos import resize_shorter, skimage_photo_path
from latentstore.eval import rd, validation
from latentstore.eval.metrics import msssim, msssim_batch, msssim_params, psnr


def _jpeg(rgb, q):
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=q)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _reference(a, b) -> float:
    """pytorch_msssim in float64, with the same window and scales for small images."""
    x = torch.from_numpy(np.array(a)).permute(2, 0, 1)[None].double()
    y = torch.from_numpy(np.array(b)).permute(2, 0, 1)[None].double()
    win, weights = msssim_params(min(a.shape[:2]))
    if len(weights) == 1:
        return float(ssim(x, y, data_range=255.0, win_size=win))
    return float(ms_ssim(x, y, data_range=255.0, weights=weights, win_size=win))


@pytest.mark.parametrize("shape", [(227, 301), (161, 170), (160, 200), (97, 75), (33, 40), (32, 50), (9, 8)])
def test_batched_msssim_matches_pytorch_msssim(shape):
    """Every branch (5 scales, fewer scales and a smaller window, single-scale SSIM), odd and even sides,
    settings from barely to badly damaged, and the identity."""
    h, w = shape
    rgb = np.ascontiguousarray(load_image(skimage_photo_path("chelsea"))[40: 40 + h, 60: 60 + w])
    recs = [_jpeg(rgb, q) for q in (2, 10, 40, 90)] + [rgb.copy(), 255 - rgb]
    mine = msssim_batch(rgb, recs, device="cpu")
    theirs = np.array([_reference(rgb, r) for r in recs])
    assert np.abs(mine - theirs).max() < 1e-4, (mine, theirs)
    assert mine[4] == pytest.approx(1.0, abs=1e-6)
    assert mine[0] < mine[1] < mine[2] < mine[3] < 1  # worse JPEG, lower score: the values mean something
    assert msssim(rgb, recs[1]) == pytest.approx(mine[1], abs=1e-6)  # one pair is a batch of one


def test_cpu_and_cuda_blurs_agree():
    """The CPU blur (depthwise convolutions) and the CUDA one (shifted adds), both run here on the CPU."""
    from latentstore.eval.metrics import _blur, _blur_adds, _gauss
    x = torch.rand(2, 3, 40, 37, generator=torch.Generator().manual_seed(0)) * 255
    g = _gauss(11, "cpu")
    ref = torch.nn.functional.conv2d(x.reshape(6, 1, 40, 37).double(), (g[:, None] * g[None, :]).double()[None, None])
    assert torch.allclose(_blur(x, g).reshape(6, 1, 30, 27).double(), ref, atol=1e-3)
    assert torch.allclose(_blur_adds(x, g).reshape(6, 1, 30, 27).double(), ref, atol=1e-3)


def test_batched_msssim_chunks_like_one_batch(monkeypatch):
    from latentstore.eval import metrics
    rgb = np.ascontiguousarray(load_image(skimage_photo_path("coffee"))[:200, :240])
    recs = [_jpeg(rgb, q) for q in (3, 7, 15, 30, 60)]
    whole = msssim_batch(rgb, recs, device="cpu")
    monkeypatch.setattr(metrics, "_BATCH_PIXELS", 2 * 200 * 240)  # chunks of two reconstructions
    assert np.allclose(msssim_batch(rgb, recs, device="cpu"), whole, atol=1e-7)
    with pytest.raises(ValueError, match="differ in shape"):
        msssim_batch(rgb, [rgb[:100]])


def test_photo_points_measure_real_bytes(codec_path):
    rgb = np.ascontiguousarray(load_image(skimage_photo_path("rocket"))[:170, :230])
    codec = load_codec(codec_path)
    pts = rd.photo_points("rocket", rgb, [("mine", codec)], device="cpu")
    methods = [p.method for p in pts]
    assert methods.count("mine") == 1 and methods.count("JPEG") == len(rd.JPEG_QUALITIES)
    assert methods.count("WebP") == len(rd.WEBP_QUALITIES) and methods.count("JPEG2000") == len(rd.JP2_RATIOS)
    q90 = next(p for p in pts if p.method == "JPEG" and p.setting == "90")
    rec = _jpeg(rgb, 90)  # Pillow is deterministic: the same bytes and pixels as inside photo_points
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    assert q90.bytes == len(buf.getvalue()) and q90.bpp == pytest.approx(len(buf.getvalue()) * 8 / (170 * 230))
    assert q90.psnr == pytest.approx(psnr(rgb, rec)) and q90.msssim == pytest.approx(_reference(rgb, rec), abs=1e-4)
    jpeg = sorted((p for p in pts if p.method == "JPEG"), key=lambda p: p.bpp)
    assert jpeg[0].msssim < jpeg[-1].msssim  # more bytes, better quality


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTSTORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(validation, "SHIPPED_FILE", str(tmp_path / "shipped.json"))
    few = [(n, resize_shorter(load_image(skimage_photo_path(n)), 48)) for n in ("coffee", "rocket")]  # fast
    monkeypatch.setattr(validation, "load_photos", lambda paths, max_side=512: few)
    return tmp_path / "cache"


def test_codec_figures_are_cached_by_weights_hash(codec_path, cache_dir, tmp_path):
    first = validation.codec_rows([codec_path], max_side=48)
    assert first[0]["source"] == "measured now" and first[0]["n_photos"] == 2 and first[0]["bpp"] > 0
    doc = json.load(open(cache_dir / "measurements.json"))
    key = validation.cache_key(load_codec(codec_path).hash, 48)
    assert list(doc["entries"]) == [key]
    again = validation.codec_rows([codec_path], max_side=48)
    assert again[0]["source"] == "cache" and again[0]["bpp"] == first[0]["bpp"]
    assert validation.codec_rows([codec_path], max_side=64)[0]["source"] == "measured now"  # another photo side
    assert validation.codec_rows([codec_path], max_side=48, measure=True)[0]["source"] == "measured now"
    # another codec (other weights) never reads this one's figures
    from tests.conftest import make_codec_file
    other = make_codec_file(str(tmp_path / "other.safetensors"), seed=1)
    assert validation.codec_rows([other], max_side=48)[0]["source"] == "measured now"
    # a damaged cache is only a cache: measured again, and rewritten
    (cache_dir / "measurements.json").write_text("{not json")
    assert validation.codec_rows([codec_path], max_side=48)[0]["source"] == "measured now"
    assert json.load(open(cache_dir / "measurements.json"))["format"] == validation.CACHE_FORMAT


def test_shipped_figures_answer_without_measuring(codec_path, cache_dir, monkeypatch):
    row = validation.measure_codecs([codec_path], 48)[0]
    validation.write_measurements(validation.SHIPPED_FILE, {validation.cache_key(row["weights_hash"], 48): row},
                                  command="test")
    monkeypatch.setattr(validation, "measure_codecs", lambda *a, **k: pytest.fail("measured despite shipped figures"))
    got = validation.codec_rows([codec_path], max_side=48)[0]
    assert got["source"] == "shipped" and got["bpp"] == row["bpp"]


def test_shipped_measurements_file_is_honest():
    """The committed figures belong to the committed weights and say how they were made."""
    path = os.path.join(os.path.dirname(validation.__file__), "..", "weights", "measurements.json")
    if not os.path.exists(path):
        pytest.skip("no shipped measurements")
    doc = json.load(open(path))
    assert doc["format"] == validation.CACHE_FORMAT and doc["command"] == validation.SHIPPED_COMMAND
    hashes = {load_codec(n).hash: n for n in available_codecs()}
    for key, row in doc["entries"].items():
        assert row["weights_hash"] in hashes, f"figures for weights {row['weights_hash']} that are not shipped: rerun " \
                                              f"`{validation.SHIPPED_COMMAND}`"
        assert key == validation.cache_key(row["weights_hash"], row["max_side"])
        assert row["n_photos"] == len(row["photos"]) > 0 and 0 < row["bpp"] < 8 and 0 < row["msssim"] <= 1
    assert set(hashes) <= {r["weights_hash"] for r in doc["entries"].values()}, "a shipped codec has no figures"


def test_rd_plot_draws_codec_files_by_folder_and_shipped_codecs_by_version():
    from latentstore.eval.rd import _series
    groups = _series(["runs/a/ls-c8.safetensors", "ls-c8", "runs/a/ls-c16.safetensors", "ls-c16@1", "ls-c32"])
    assert groups == {"a": ["runs/a/ls-c8.safetensors", "runs/a/ls-c16.safetensors"], "shipped": ["ls-c8", "ls-c32"],
                      "shipped @1": ["ls-c16@1"]}
