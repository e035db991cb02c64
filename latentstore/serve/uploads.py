"""An upload's bytes, read within bounds, and its image, screened: each refusal an HTTP status with its reason.

    413  the body is over --max-upload-mb: refused from Content-Length before a byte is read, or as soon
         as a streamed (chunked) body passes the cap; never read whole
    415  not an image (a Content-Type that is not one, bytes Pillow cannot identify, or a format other
         than JPEG, PNG and WebP)
    422  an image that cannot be used: over the pixel limit (a decompression bomb is refused from its
         header, before its pixels are decoded), under 8 px on a side, truncated or broken
Decoding goes through data/imageio.py (the conversion's own policy: EXIF, alpha, 16-bit, Pillow's bomb guard).
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..data.imageio import MIN_SIDE, decode_image_bytes
from ..errors import BadImageError

FORMATS = ("JPEG", "PNG", "WEBP")
RAW_TYPES = ("image/jpeg", "image/jpg", "image/png", "image/webp", "application/octet-stream")


class Rejected(Exception):
    """An upload refused: status, a one-line reason, and a short reason code for the metrics."""

    def __init__(self, status: int, reason: str, code: str, headers: dict | None = None):
        super().__init__(reason)
        self.status, self.reason, self.code, self.headers = status, reason, code, headers or {}


def check_content_length(headers, limit: int) -> None:
    """Rejected(413) from the Content-Length header alone, before a byte of the body is read."""
    cl = headers.get("content-length")
    if cl is not None:
        try:
            n = int(cl)
        except ValueError:
            raise Rejected(400, f"bad Content-Length {cl!r}", "bad_request") from None
        if n > limit:
            raise Rejected(413, f"body of {n:,} bytes is over the {limit:,}-byte upload limit", "too_large")


async def read_bounded(request, limit: int) -> bytes:
    """The request body, at most `limit` bytes, or Rejected(413) before more is read."""
    check_content_length(request.headers, limit)
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise Rejected(413, f"body passed the {limit:,}-byte upload limit while streaming", "too_large")
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_multipart(headers, body: bytes) -> tuple[bytes, dict]:
    """A multipart/form-data body -> (the `file` part's bytes, the other fields); python-multipart parses it."""
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream():
        yield body

    try:
        form = await MultiPartParser(headers, stream(), max_files=1, max_fields=16).parse()
    except MultiPartException as e:
        raise Rejected(400, f"bad multipart body ({e.message})", "bad_request") from None
    f = form.get("file")
    if not isinstance(f, UploadFile):
        raise Rejected(400, "multipart upload without a `file` part", "bad_request")
    data = await f.read()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    return data, fields


def check_content_type(ct: str) -> None:
    base = ct.split(";")[0].strip().lower()
    if base and base not in RAW_TYPES and not base.startswith("image/"):
        raise Rejected(415, f"Content-Type {base} is not an image (send image/jpeg, image/png or image/webp, "
                            "or multipart/form-data with a `file` part)", "unsupported_type")


def screen_and_decode(data: bytes, max_pixels: int) -> np.ndarray:
    """Image bytes -> (H, W, 3) uint8, or Rejected(415 / 422) with the reason. Runs in the decode pool."""
    if not data:
        raise Rejected(415, "empty body: not an image", "not_an_image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            fmt, w, h = im.format, im.width, im.height
    except UnidentifiedImageError:
        raise Rejected(415, "not an image (no JPEG, PNG or WebP header)", "not_an_image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise Rejected(422, "image is over Pillow's decompression-bomb limit", "pixel_limit") from None
    except Exception as e:
        raise Rejected(422, f"unreadable image header ({type(e).__name__})", "broken_image") from None
    if fmt not in FORMATS:
        raise Rejected(415, f"{fmt} images are not accepted (JPEG, PNG or WebP)", "unsupported_type")
    if w * h > max_pixels:
        raise Rejected(422, f"{w}x{h} is over the {max_pixels:,}-pixel limit", "pixel_limit")
    if min(w, h) < MIN_SIDE:
        raise Rejected(422, f"{w}x{h} is smaller than {MIN_SIDE} px on a side", "too_small")
    try:
        return decode_image_bytes(data, "upload")
    except BadImageError as e:
        reason = str(e).removeprefix("upload: ")
        code = "pixel_limit" if "limit" in reason else "broken_image"
        raise Rejected(422, reason, code) from None
