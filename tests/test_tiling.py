"""Tiled coding of large images: margins that cover the receptive fields, the same symbols and (to float
rounding) the same pixels as whole-image coding, the same bytes, and memory bounded by the tile."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from latentstore.codec import tiling
from latentstore.codec.api import compress, decompress, rgb_to_tensor
from latentstore.codec.zoo import available_codecs, load_codec
from latentstore.data.imageio import load_image
from latentstore.data.photos import skimage_photo_path
from latentstore.eval.metrics import psnr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _real_codec(fallback):
    """The shipped ls-c16 when installed (trained weights: realistic symbol statistics), else the test codec."""
    return load_codec("ls-c16") if "ls-c16" in available_codecs() else fallback


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Many small convolutions: on a loaded 2-core machine, each one's thread barrier can wait tens of ms
    for a descheduled core (measured: 7 ms per 336x336 tile on one thread, 10-370 ms on two)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def big_photo():
    """A real photo at an awkward size (not a multiple of 8 either way), tiled 4 x 4 at tile=128."""
    return np.ascontiguousarray(load_image(skimage_photo_path("astronaut"))[:509, :467])


def test_encoder_margin_covers_the_receptive_field(codec):
    """Change one pixel: every latent cell that moves lies within ENCODER_MARGIN cells of that pixel's cell."""
    x = torch.rand(1, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z0 = codec.encode(x)
        reach = 0
        for p in (72, 75, 79, 80, 83, 87):  # every phase of the 8-px grid
            y = x.clone()
            y[..., p, p] += 0.5
            moved = (codec.encode(y) - z0).abs().amax(dim=(0, 1)) > 0  # (h, w)
            rows = torch.nonzero(moved.any(1)).flatten()
            reach = max(reach, int((rows - p // 8).abs().max()))
    assert 0 < reach <= tiling.ENCODER_MARGIN, reach
    assert reach == tiling.ENCODER_MARGIN  # no wasted margin either: 38 px of reach needs 5 cells


def test_decoder_margin_covers_the_receptive_field(codec):
    """Change one latent cell: every pixel that moves lies within DECODER_MARGIN cells of it."""
    z = torch.randn(1, codec.cfg.C, 20, 20, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x0 = codec.decoder(z)
        z[..., 10, 10] += 1.0
        moved = (codec.decoder(z) - x0).abs().amax(dim=(0, 1)) > 0  # (H, W)
    rows = torch.nonzero(moved.any(1)).flatten() // 8  # the latent row each moved pixel belongs to
    reach = int((rows - 10).abs().max())
    assert 0 < reach <= tiling.DECODER_MARGIN, reach


@pytest.mark.parametrize("tile", [96, 200])
def test_tiled_symbols_equal_whole_image_symbols(codec, big_photo, tile):
    c = codec  # the small test codec (the architecture is the shipped one's): many tiles in little time
    x = rgb_to_tensor(big_photo)
    whole = c.symbols(x, tile=0)
    tiled = c.symbols(x, tile=tile)  # the tensor path
    assert torch.equal(tiled["symbols"], whole["symbols"])
    assert torch.equal(tiled["hard_hist"], whole["hard_hist"])  # each cell counted once, margins not at all
    from_uint8 = tiling.symbols_tiled(c, big_photo, tile)  # the uint8 path never makes the float image
    assert torch.equal(from_uint8["symbols"], whole["symbols"])


def test_tiled_bytes_and_pixels_match_whole_image_coding(codec, big_photo):
    c = _real_codec(codec)
    data = compress(big_photo, c, tile=0)
    assert compress(big_photo, c, tile=128) == data  # the bitstream does not know about tiles
    whole = decompress(data, c, tile=0)
    tiled = decompress(data, c, tile=128)
    seams = psnr(whole, tiled)
    print(f"tiled vs whole reconstruction: PSNR {seams} dB, {int((whole != tiled).sum())} of {whole.size} values differ")
    assert seams > 60  # float rounding only (< 1e-6 before uint8): seams are invisible
    assert np.abs(whole.astype(int) - tiled.astype(int)).max() <= 1
    assert psnr(big_photo, tiled) == pytest.approx(psnr(big_photo, whole), abs=0.01)
    with torch.no_grad():  # the float tensor path of LatentCodec.reconstruct too
        sym = c.symbols(rgb_to_tensor(big_photo), tile=0)["symbols"]
        diff = (c.reconstruct(sym, big_photo.shape[:2], tile=128) - c.reconstruct(sym, big_photo.shape[:2], tile=0))
    assert diff.abs().max() < 1e-5


def test_when_images_are_tiled(monkeypatch):
    monkeypatch.delenv("LATENTSTORE_TILE", raising=False)
    assert not tiling.wants_tiles((1000, 1000))  # under TILE_ABOVE_PIXELS: coded whole
    assert tiling.wants_tiles((3391, 6028))
    assert not tiling.wants_tiles((3391, 6028), tile=0)
    assert tiling.wants_tiles((300, 300), tile=128) and not tiling.wants_tiles((100, 100), tile=128)
    monkeypatch.setenv("LATENTSTORE_TILE", "0")
    assert not tiling.wants_tiles((3391, 6028))
    monkeypatch.setenv("LATENTSTORE_TILE", "lots")
    with pytest.raises(Exception, match="LATENTSTORE_TILE"):
        tiling.wants_tiles((3391, 6028))
    assert tiling.tile_side(100) == 104 and tiling.tile_side(8) == 64  # whole cells, never all margin


_MEMORY_PROBE = r"""
import json, sys, time
import numpy as np
import torch
torch.set_num_threads(1)  # see one_thread below
from latentstore.codec.api import image_symbols, symbols_to_rgb
from latentstore.codec.zoo import load_codec_file
codec = load_codec_file(sys.argv[1])
rng = np.random.default_rng(0)
symbols_to_rgb(codec, image_symbols(codec, rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), (64, 64))  # warm up

def image(H, W):
    rgb = np.empty((H, W, 3), np.uint8)
    rgb[..., 0] = (np.arange(W) * 255 // W).astype(np.uint8)[None, :]
    rgb[..., 1] = (np.arange(H) * 255 // H).astype(np.uint8)[:, None]
    rgb[..., 2] = rng.integers(0, 256, (H, W), dtype=np.uint8)
    return rgb

def status():  # KiB
    return {line.split(":")[0]: int(line.split()[1]) for line in open("/proc/self/status")
            if line.startswith(("VmHWM", "VmRSS"))}

def reset_peak():  # Linux: "5" resets VmHWM to the current RSS, so imports' and earlier runs' peaks do not mask
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status()["VmRSS"]

out = {}
small, large = image(800, 1200), image(1600, 2400)  # made first: the inputs are not the question
for name, tile, rgb in [("tiled_small", 256, small), ("tiled_large", 256, large), ("whole_large", 0, large)]:
    H, W = rgb.shape[:2]
    t = time.time()
    base = reset_peak()
    sym = image_symbols(codec, rgb, tile=tile)
    out[name + "_encode_mb"] = (status()["VmHWM"] - base) / 1024
    base = reset_peak()
    symbols_to_rgb(codec, sym, (H, W), tile=tile)
    out[name + "_decode_mb"] = (status()["VmHWM"] - base) / 1024
    out[name + "_seconds"] = time.time() - t
print(json.dumps(out))
"""


def test_tiled_memory_is_bounded_by_the_tile_not_the_image(codec_path):
    """Peak RSS of the networks' side (pixels -> symbols -> pixels; entropy coding is per image and not
    tiled) above the RSS before each step, in a fresh process: tiled coding of an image 4x larger needs
    no more memory beyond the decoded image itself; whole-image coding needs its activations."""
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak RSS")
    env = {**os.environ, "PYTHONPATH": ROOT}
    res = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, codec_path], capture_output=True, text=True, env=env,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    m = json.loads(res.stdout.strip().splitlines()[-1])
    print("peak RSS over the RSS before each step, MiB (and seconds):", {k: round(v, 1) for k, v in m.items()})
    out_mb = 1600 * 2400 * 3 / 2 ** 20  # the large decoded uint8 image itself, 11 MiB
    assert m["tiled_small_encode_mb"] < 48 and m["tiled_large_encode_mb"] < 48  # one bound at 4x the pixels
    assert m["tiled_large_decode_mb"] < out_mb + 48
    assert m["whole_large_encode_mb"] > 100 and m["whole_large_decode_mb"] > 100  # the activations tiling avoids


def test_cli_shows_tiles_and_refuses_to_overwrite(codec_path, big_photo, tmp_path, monkeypatch):
    from PIL import Image

    from latentstore.cli import main
    monkeypatch.setattr(tiling, "PROGRESS_AFTER_S", 0)  # the bar shows at once, not after a second
    Image.fromarray(big_photo).save(tmp_path / "in.png")
    r = CliRunner()
    args = ["compress", str(tmp_path / "in.png"), str(tmp_path / "x.lsb"), "--codec", codec_path, "--tile", "128"]
    res = r.invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "encode" in res.output and "tile" in res.output  # tqdm's bar, on stderr
    res = r.invoke(main, args)
    assert res.exit_code == 2 and "exists" in res.output and "--force" in res.output
    assert r.invoke(main, args + ["--force", "--quiet"]).exit_code == 0
    dargs = ["decompress", str(tmp_path / "x.lsb"), str(tmp_path / "out.png"), "--codec", codec_path, "--tile", "128"]
    assert r.invoke(main, dargs).exit_code == 0
    before = os.path.getmtime(tmp_path / "out.png")
    res = r.invoke(main, dargs)
    assert res.exit_code == 2 and "--force" in res.output and os.path.getmtime(tmp_path / "out.png") == before
    assert r.invoke(main, dargs + ["--force"]).exit_code == 0
    assert Image.open(tmp_path / "out.png").size == (467, 509)
