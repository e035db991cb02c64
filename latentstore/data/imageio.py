"""Loading images safely: every way a file can be bad ends in a one-line BadImageError.

Policy, applied identically by the CLI, the conversion and the evaluation:
- EXIF orientation is applied (the pixels are what a viewer shows);
- greyscale, palette, RGBA/LA (composited on white), CMYK and 16-bit images become 8-bit RGB;
- images with fewer than MIN_SIDE pixels on a side, or more than MAX_PIXELS pixels, are refused.
"""
from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps

from ..errors import BadImageError

MAX_PIXELS = 64_000_000  # a decompression-bomb guard: ~8000 x 8000; ImageNet's largest is ~ 10 Mpx
MIN_SIDE = 8  # one latent cell is 8x8 pixels

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".gif")


def to_rgb8(im: Image.Image) -> np.ndarray:
    """Any PIL image -> (H, W, 3) uint8, following the policy above."""
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        scale = 65535.0 if a.max(initial=0) > 255 or im.mode.startswith("I;16") else 255.0
        a = np.clip(np.round(a / scale * 255.0), 0, 255).astype(np.uint8)
        im = Image.fromarray(a, "L")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im.convert("RGBA"))
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8).copy()


def check_size(w: int, h: int, where: str) -> None:
    if w * h > MAX_PIXELS:
        raise BadImageError(f"{where}: {w}x{h} is over the {MAX_PIXELS:,}-pixel limit")
    if min(w, h) < MIN_SIDE:
        raise BadImageError(f"{where}: {w}x{h} is smaller than {MIN_SIDE} px on a side")


def decode_image_bytes(data: bytes, where: str = "<bytes>") -> np.ndarray:
    """Encoded image bytes -> (H, W, 3) uint8 RGB, or BadImageError with the reason."""
    if len(data) == 0:
        raise BadImageError(f"{where}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            check_size(im.width, im.height, where)
            im.load()
            return to_rgb8(im)
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImageError(f"{where}: image is over Pillow's decompression-bomb limit") from None
    except Exception as e:  # Pillow raises many types for broken files; all mean the same here
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BadImageError(f"{where}: not a readable image ({msg})") from None


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read and decode one image file -> (H, W, 3) uint8 RGB."""
    p = os.fspath(path)
    try:
        with open(p, "rb") as f:
            data = f.read()
    except IsADirectoryError:
        raise BadImageError(f"{p}: is a directory") from None
    except OSError as e:
        raise BadImageError(f"{p}: cannot read ({e.strerror or e})") from None
    return decode_image_bytes(data, p)


def save_png(rgb: np.ndarray, path: str | os.PathLike) -> None:
    Image.fromarray(rgb).save(os.fspath(path), format="PNG")
