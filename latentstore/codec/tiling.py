"""Tiled encode and decode: large images in bounded memory, with the symbols and pixels of whole-image coding.

Why: the encoder's and decoder's activations are 32-128 channels at 1/2-1/4 resolution, so a 20-Mpx
photo needs over 2 GB at once. Both networks are fully convolutional with a small receptive field, so
the image can be processed in tiles of the latent grid, each with a margin wide enough that every
interior cell (or pixel) sees exactly the inputs it sees in the whole image:

- encoder: latent cell j depends on pixels [8j - 38, 8j + 38] (conv 5x5/2, conv 5x5/2, six 3x3 at
  1/4 resolution, conv 5x5/2), so a margin of ENCODER_MARGIN = 5 cells (40 px) covers it;
- decoder: output pixels [8a, 8b) depend on latent cells [a - 5, b + 5) (3x3 convs at 1/8, 1/4 and
  1/2 resolution between pixel shuffles): DECODER_MARGIN = 5 cells.
tests/test_tiling.py checks both margins against the networks with impulses, and checks that tiled
coding equals whole-image coding on a real photo. Tiles start on multiples of 8 pixels, so every
strided layer samples the same grid as in the whole image; a tile touching the bottom or right edge
is reflect-padded to a multiple of 8 from its own rows, which are the image's last rows, as pad8 does.

The tiling changes nothing in the bitstream: the (C, h, w) symbols it produces are entropy-coded per
image exactly as before. On the CPU the symbols were identical to whole-image coding in every test
(tests/test_tiling.py), and decoded pixels differ by float rounding only (< 1e-6 before the uint8
rounding). On CUDA, cuDNN may pick another algorithm for another tile shape, so a latent that sits
exactly on a quantization boundary could round the other way (not measured: no GPU here).

Knobs: images with more than TILE_ABOVE_PIXELS pixels are tiled; the tile side is DEFAULT_TILE pixels
(CUDA_TILE on a GPU). LATENTSTORE_TILE=N sets the tile side (0: never tile); every entry point also
takes `tile=`, and the CLI `--tile`.
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch

from ..errors import UsageError
from .workers import run_all, worker_count

ENCODER_MARGIN = 5  # latent cells of context around an encoder tile (the receptive field reaches 38 px)
DECODER_MARGIN = 5  # latent cells of context around a decoder tile
# Pixels per tile side. Measured on the 2-core dev machine, a 6028x3391 photo, ls-c16, CPU seconds
# (user + sys) of encode / decode: whole image 22-27 / 26-27 (half of it page faults on GB-sized
# buffers), tiles of 512 31-43 / 39-45, 1024 18-25 / 23-26, 2048 26 / 28. So 1024: no slower than
# whole-image coding, ~40 MB of activations per tile, 16% of the tile recomputed as margin.
# On CUDA larger tiles keep the GPU busy (not measured: no GPU on the dev machines).
DEFAULT_TILE = 1024
CUDA_TILE = 2048
TILE_ABOVE_PIXELS = 1024 * 1024  # smaller images are coded whole (about a second on 2 cores)
PROGRESS_AFTER_S = 1.0  # a progress bar appears only for jobs that take longer than this


def tile_side(tile: int | None = None, device=None) -> int:
    """The tile side in pixels (a multiple of 8, >= 64), or 0 for 'never tile'.
    None: LATENTSTORE_TILE, else the default for `device` (CUDA_TILE on a GPU, DEFAULT_TILE elsewhere)."""
    if tile is None:
        env = os.environ.get("LATENTSTORE_TILE", "").strip()
        try:
            tile = int(env) if env else (CUDA_TILE if torch.device(device or "cpu").type == "cuda" else DEFAULT_TILE)
        except ValueError:
            raise UsageError(f"LATENTSTORE_TILE={env!r}: expected a tile side in pixels, or 0") from None
    if tile < 0:
        raise UsageError(f"tile side must be >= 0 pixels (got {tile})")
    if tile == 0:
        return 0
    return max(64, int(math.ceil(tile / 8)) * 8)  # whole latent cells; tiny tiles would be all margin


def wants_tiles(size: tuple[int, int], tile: int | None = None, device=None) -> bool:
    """Whether an image of `size` (H, W) is coded in tiles: tiling is on and the image is large.

    An explicit `tile` > 0 tiles any image larger than one tile (how the tests exercise it)."""
    side = tile_side(tile, device)
    H, W = int(size[0]), int(size[1])
    if side == 0 or (H <= side and W <= side):
        return False
    return (tile is not None and tile > 0) or H * W > TILE_ABOVE_PIXELS


def spans(n: int, step: int) -> list[tuple[int, int]]:
    """[0, n) cut into consecutive [a, b) of at most `step`."""
    return [(a, min(a + step, n)) for a in range(0, n, step)]


def _bar(total: int, desc: str, progress: bool):
    """A tqdm bar on stderr that shows itself only once the job has run for PROGRESS_AFTER_S."""
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="tile", delay=PROGRESS_AFTER_S, disable=not progress, leave=False)


def _as_float_tile(image, y0: int, y1: int, x0: int, x1: int, device) -> torch.Tensor:
    """Pixels [y0, y1) x [x0, x1) of a (B, 3, H, W) float tensor in [0, 1] or an (H, W, 3) uint8 array,
    as (B, 3, h, w) float32 on `device`; uint8 goes through the same `/ 255` as api.rgb_to_tensor."""
    if isinstance(image, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(image[y0:y1, x0:x1])).permute(2, 0, 1).unsqueeze(0)
        return t.to(device).float() / 255.0
    return image[..., y0:y1, x0:x1].to(device)


@torch.no_grad()
def symbols_tiled(codec, image, tile: int | None = None, progress: bool = False, policy=None,
                  workers: int | None = None) -> dict[str, torch.Tensor]:
    """LatentCodec.symbols for a large image, tile by tile (`workers` tiles at a time, one per core, see
    codec/workers.py; `policy` as in LatentCodec.symbols).

    image: (B, 3, H, W) float tensor in [0, 1], or (H, W, 3) uint8 numpy (never converted to float whole).
    -> {'symbols': uint8 (B, C, ceil(H/8), ceil(W/8)), 'hard_hist': int64 (C, L)}, on the codec's device."""
    import latentstore_kernels as K
    policy = policy or codec.policy()
    codec.prepare(policy)  # before the workers start: they only read the weights
    side = tile_side(tile, codec.device) or DEFAULT_TILE
    if isinstance(image, np.ndarray):
        (H, W), B = image.shape[:2], 1
    else:
        (B, _, H, W) = image.shape
    h, w, T, m = -(-H // 8), -(-W // 8), side // 8, ENCODER_MARGIN
    out = torch.empty((B, codec.cfg.C, h, w), dtype=torch.uint8, device=codec.device)
    hist = torch.zeros((codec.cfg.C, codec.cfg.L), dtype=torch.int64, device=codec.device)
    tiles = [(ya, yb, xa, xb) for ya, yb in spans(h, T) for xa, xb in spans(w, T)]
    def one(t):
        ya, yb, xa, xb = t
        cy0, cy1, cx0, cx1 = max(0, ya - m), min(h, yb + m), max(0, xa - m), min(w, xb + m)  # cells with context
        x = _as_float_tile(image, 8 * cy0, min(H, 8 * cy1), 8 * cx0, min(W, 8 * cx1), codec.device)
        s = codec.symbols(x, tile=0, policy=policy)["symbols"][..., ya - cy0: yb - cy0, xa - cx0: xb - cx0]
        out[..., ya:yb, xa:xb] = s  # disjoint interiors: workers never write the same cell

    with _bar(len(tiles), "encode", progress) as bar:
        run_all(one, tiles, worker_count(workers, codec.device), lambda: bar.update(1))
    hist += K.symbol_histogram(out.long(), codec.cfg.L)  # of the interiors: each cell counted once
    return {"symbols": out, "hard_hist": hist}


@torch.no_grad()
def reconstruct_tiled(codec, symbols: torch.Tensor, size: tuple[int, int], tile: int | None = None,
                      progress: bool = False, as_uint8: bool = False, policy=None, workers: int | None = None):
    """LatentCodec.reconstruct for a large image, tile by tile (`workers` and `policy` as in symbols_tiled).

    symbols: uint8 (B, C, h, w). -> (B, 3, H, W) float in [0, 1] on the codec's device, or with as_uint8
    an (H, W, 3) uint8 array for B == 1, rounded as api.tensor_to_rgb does: the float image is never
    held whole, which is what keeps `latentstore decompress` of a 20-Mpx image small."""
    policy = policy or codec.policy()
    codec.prepare(policy)  # before the workers start: they only read the weights
    side = tile_side(tile, codec.device) or DEFAULT_TILE
    B, _, h, w = symbols.shape
    H, W = int(size[0]), int(size[1])
    T, m = side // 8, DECODER_MARGIN
    if as_uint8:
        if B != 1:
            raise ValueError("as_uint8 reconstructs one image (B == 1)")
        out = np.empty((H, W, 3), dtype=np.uint8)
    else:
        out = torch.empty((B, 3, H, W), dtype=torch.float32, device=codec.device)
    tiles = [(ya, yb, xa, xb) for ya, yb in spans(h, T) for xa, xb in spans(w, T)]
    def one(t):
        ya, yb, xa, xb = t
        cy0, cy1, cx0, cx1 = max(0, ya - m), min(h, yb + m), max(0, xa - m), min(w, xb + m)
        x = codec.reconstruct(symbols[..., cy0:cy1, cx0:cx1], tile=0, policy=policy)
        py0, py1, px0, px1 = 8 * ya, min(H, 8 * yb), 8 * xa, min(W, 8 * xb)  # the tile's own pixels
        x = x[..., py0 - 8 * cy0: py1 - 8 * cy0, px0 - 8 * cx0: px1 - 8 * cx0]
        if as_uint8:
            out[py0:py1, px0:px1] = (x[0].clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        else:
            out[..., py0:py1, px0:px1] = x

    with _bar(len(tiles), "decode", progress) as bar:
        run_all(one, tiles, worker_count(workers, codec.device), lambda: bar.update(1))
    return out


# ------------------------------------------------------------------ one image as a uint8 array
# Here rather than in api.py so that LatentCodec.compress/decompress (model.py) can take and give
# arrays without importing api.py, which imports model.py.
def as_rgb8(image) -> np.ndarray:
    """A PIL image, or an (H, W, 3) / (H, W) uint8 array -> (H, W, 3) uint8; anything else is a one-line UsageError."""
    if not isinstance(image, np.ndarray):
        from PIL import Image
        if isinstance(image, Image.Image):
            from ..data.imageio import to_rgb8
            return to_rgb8(image)
        raise UsageError(f"expected an (H, W, 3) uint8 numpy array or a PIL image, got {type(image).__name__} "
                         "(for float tensors use codec.compress(x) with x (B, 3, H, W) in [0, 1])")
    if image.dtype != np.uint8:
        raise UsageError(f"expected a uint8 image, got dtype {image.dtype} (scale 0..1 floats by 255 and round)")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)  # greyscale, as Pillow's convert('RGB') does
    if image.ndim != 3 or image.shape[2] != 3:
        raise UsageError(f"expected an (H, W, 3) image, got shape {tuple(image.shape)}")
    if min(image.shape[:2]) < 1:
        raise UsageError(f"empty image of shape {tuple(image.shape)}")
    return image


def rgb_symbols(codec, rgb: np.ndarray, tile: int | None = None, progress: bool = False, policy=None) -> np.ndarray:
    """(H, W, 3) uint8 -> (C, ceil(H/8), ceil(W/8)) uint8 symbols; large images tile by tile, never whole as floats."""
    policy = policy or codec.policy()
    if wants_tiles(rgb.shape[:2], tile, codec.device):
        return symbols_tiled(codec, rgb, tile, progress, policy=policy)["symbols"][0].cpu().numpy()
    x = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).unsqueeze(0).float() / 255.0
    return codec.symbols(x.to(codec.device), tile=0, policy=policy)["symbols"][0].cpu().numpy()


def symbols_rgb(codec, symbols: np.ndarray, size: tuple[int, int], tile: int | None = None,
                progress: bool = False, policy=None) -> np.ndarray:
    """(C, h, w) uint8 symbols -> (H, W, 3) uint8 pixels; large images tile by tile, never whole as floats."""
    policy = policy or codec.policy()
    sym = torch.from_numpy(np.ascontiguousarray(symbols)).unsqueeze(0)
    if wants_tiles(size, tile, codec.device):
        return reconstruct_tiled(codec, sym, size, tile, progress, as_uint8=True, policy=policy)
    x = codec.reconstruct(sym, size, tile=0, policy=policy)[0]
    return (x.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
