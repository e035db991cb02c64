"""Loading images safely: every way a file can be bad ends in a one-line BadImageError.

Policy, applied identically by the CLI, the conversion and the evaluation:
- EXIF orientation is applied (the pixels are what a viewer shows);
- greyscale, palette, RGBA/LA (composited on white), CMYK and 16-bit images become 8-bit RGB;
- images with fewer than MIN_SIDE pixels on a side, or more than MAX_PIXELS pixels, are refused.
"""
from __future__ import annotations

import io
import os
import re
import stat
import warnings

import numpy as np
from PIL import Image, ImageOps

from ..errors import BadImageError

MAX_PIXELS = 64_000_000  # a decompression-bomb guard: ~8000 x 8000; ImageNet's largest is ~ 10 Mpx
MIN_SIDE = 8  # one latent cell is 8x8 pixels
MAX_FILE_BYTES = 256 << 20  # no real photo is this big; a bound so /dev/zero or a giant file cannot exhaust memory

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".gif")


def clean_reason(msg: str) -> str:
    """A reason that is the same text on every run: no object addresses (Pillow names its BytesIO)."""
    msg = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", msg)
    return re.sub(r" at 0x[0-9a-fA-F]+", "", msg)


def read_bounded(path: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """Read a regular file of at most `limit` bytes; anything else is a BadImageError with the reason.

    Opened non-blocking, so a FIFO cannot hang the caller; fstat on the open descriptor, so what is
    checked is what is read (a symlink to /dev/zero is a device, not a file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except IsADirectoryError:
        raise BadImageError(f"{path}: is a directory") from None
    except OSError as e:
        raise BadImageError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else
                    "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else
                    "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
            raise BadImageError(f"{path}: is {kind}, not a regular file")
        if st.st_size > limit:
            raise BadImageError(f"{path}: {st.st_size:,} bytes is over the {limit:,}-byte file limit")
        chunks, total = [], 0
        while True:  # bounded even if the file grows while we read it
            b = os.read(fd, min(1 << 20, limit + 1 - total))
            if not b:
                break
            chunks.append(b)
            total += len(b)
            if total > limit:
                raise BadImageError(f"{path}: grew past the {limit:,}-byte file limit while being read")
        return b"".join(chunks)
    except OSError as e:
        raise BadImageError(f"{path}: cannot read ({e.strerror or e})") from None
    finally:
        os.close(fd)


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
        msg = clean_reason(str(e).splitlines()[0]) if str(e) else type(e).__name__
        raise BadImageError(f"{where}: not a readable image ({msg})") from None


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read and decode one image file -> (H, W, 3) uint8 RGB."""
    p = os.fspath(path)
    return decode_image_bytes(read_bounded(p), p)


def save_png(rgb: np.ndarray, path: str | os.PathLike) -> None:
    Image.fromarray(rgb).save(os.fspath(path), format="PNG")
