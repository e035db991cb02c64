"""Loading images safely: every way a file can be bad ends in a one-line BadImageError.

Policy, applied identically by the CLI, the conversion and the evaluation:
- EXIF orientation is applied (the pixels are what a viewer shows);
- greyscale, palette, RGBA/LA (composited on white), CMYK and 16-bit images become 8-bit RGB;
- images with fewer than MIN_SIDE pixels on a side, more than MAX_PIXELS pixels, or a long side more than
  MAX_ASPECT times the short one are refused from their header, before any pixel is allocated; the same
  pixel limit applies to every resize of an image (`resized_size`), so a thin image cannot blow up when its
  shorter side is fitted (an 8 x 65535 PNG of 143 bytes once asked for a 256 x 2,097,120 resize).
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
MAX_ASPECT = 256  # long side : short side; panoramas are ~10:1, so 256:1 only refuses strips made to blow up a resize

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".gif")


def clean_reason(msg: str) -> str:
    """A reason that is the same text on every run: no object addresses (Pillow names its BytesIO)."""
    msg = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", msg)
    return re.sub(r" at 0x[0-9a-fA-F]+", "", msg)


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words (for one-line refusals)."""
    return ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else
            "a socket" if stat.S_ISSOCK(mode) else "not a regular file")


def check_regular_file(path: str, error: type[Exception] = BadImageError) -> None:
    """Refuse, in one line, a path that is not a regular file (links followed), for readers that open files
    by path themselves (safetensors, tarfile, zarr): a FIFO would hang them, /dev/zero never end."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e})") from None
    if not stat.S_ISREG(mode):
        raise error(f"{path}: is {file_kind(mode)}, not a regular file")


def read_bounded(path: str, limit: int = MAX_FILE_BYTES, error: type[Exception] = BadImageError,
                 check_stat=None) -> bytes:
    """Read a regular file of at most `limit` bytes; anything else is an `error` (BadImageError for inputs,
    StoreError for a store's metadata) with the reason: the one bounded read for files we did not write.
    `check_stat(st)`: the caller's own check of the open file's stat (a secret's mode), raising its error.

    Opened non-blocking, so a FIFO cannot hang the caller; fstat on the open descriptor, so what is
    checked is what is read (a symlink to /dev/zero is a device, not a file; a key file swapped after a
    check by path would not be)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except IsADirectoryError:
        raise error(f"{path}: is a directory") from None
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path}: is {file_kind(st.st_mode)}, not a regular file")
        if st.st_size > limit:
            raise error(f"{path}: {st.st_size:,} bytes is over the {limit:,}-byte file limit")
        if check_stat is not None:
            check_stat(st)
        chunks, total = [], 0
        while True:  # bounded even if the file grows while we read it
            b = os.read(fd, min(1 << 20, limit + 1 - total))
            if not b:
                break
            chunks.append(b)
            total += len(b)
            if total > limit:
                raise error(f"{path}: grew past the {limit:,}-byte file limit while being read")
        return b"".join(chunks)
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e})") from None
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


def resized_size(w: int, h: int, side: int) -> tuple[int, int]:
    """(W', H') of a (w, h) image with its shorter side fitted to `side` (conversion's and the service's geometry)."""
    s = side / min(w, h)
    return max(side, round(w * s)), max(side, round(h * s))


def size_problem(w: int, h: int, side: int | None = None, max_pixels: int = MAX_PIXELS) -> str | None:
    """Why a (w, h) image is refused, from its header alone (before any allocation), or None. `side`: the
    shorter side it will be resized to, whose result is held to the same pixel limit (`max_pixels`: the
    service's --max-pixels, else MAX_PIXELS)."""
    if w * h > max_pixels:
        return f"{w}x{h} is over the {max_pixels:,}-pixel limit"
    if min(w, h) < MIN_SIDE:
        return f"{w}x{h} is smaller than {MIN_SIDE} px on a side"
    if max(w, h) > MAX_ASPECT * min(w, h):
        return f"{w}x{h} is over the {MAX_ASPECT}:1 aspect-ratio limit"
    if side is not None:
        rw, rh = resized_size(w, h, side)
        if rw * rh > max_pixels:
            return f"{w}x{h} resized to a shorter side of {side} is {rw}x{rh}, over the {max_pixels:,}-pixel limit"
    return None


def check_size(w: int, h: int, where: str, side: int | None = None) -> None:
    problem = size_problem(w, h, side)
    if problem:
        raise BadImageError(f"{where}: {problem}")


def fit_square(rgb: np.ndarray, side: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (side, side, 3): shorter side to `side`, centre crop, resampling only the window the
    crop keeps (Pillow's resize box), so no intermediate is larger than the output whatever the aspect ratio."""
    h, w = rgb.shape[:2]
    rw, rh = resized_size(w, h, side)
    if (rw, rh) == (w, h) == (side, side):
        return np.ascontiguousarray(rgb)
    sx, sy = w / rw, h / rh  # source pixels per resized pixel
    left, top = (rw - side) // 2, (rh - side) // 2
    box = (left * sx, top * sy, (left + side) * sx, (top + side) * sy)
    out = Image.fromarray(rgb).resize((side, side), Image.Resampling.BILINEAR, box=box, reducing_gap=None)
    return np.asarray(out, dtype=np.uint8)


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
