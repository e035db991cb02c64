"""An upload's bytes, read within bounds, and its image, screened: each refusal an HTTP status with its reason.

    413  the body is over --max-upload-mb: refused from Content-Length before a byte is read, or as soon
         as a streamed (chunked) body passes the cap; never read whole
    415  not an image (a Content-Type that is not one, bytes Pillow cannot identify, or a format other
         than JPEG, PNG and WebP)
    422  an image that cannot be used: over the pixel limit (a decompression bomb is refused from its
         header, before its pixels are decoded), under 8 px on a side, over MAX_ASPECT:1 (256:1), one whose
         fit to the store's S x S would pass the pixel limit (an 8x65535 PNG of 143 bytes would be a
         256x2097120 resize: 1.6 GB), truncated or broken. All from the header: nothing is allocated first.
Decoding goes through data/imageio.py (the conversion's own policy: EXIF, alpha, 16-bit, Pillow's bomb guard).
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..data.imageio import MAX_ASPECT, decode_image_bytes, size_problem  # noqa: F401 (MAX_ASPECT: re-exported)
from ..errors import BadImageError

FORMATS = ("JPEG", "PNG", "WEBP")
LATENT_TYPE = "application/x-latentstore"  # a client's bitstream (latent_ingest.MEDIA_TYPE)
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
        if n < 0:
            raise Rejected(400, f"bad Content-Length {cl!r}", "bad_request")
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


@dataclass
class MultipartUpload:
    data: bytes  # the `file` part's bytes
    content_type: str  # the `file` part's Content-Type base, lower case ("" when it names none)
    fields: dict  # the other (text) fields: label, key
    companion: bytes | None  # a native store's latent upload: the `companion` part (the classifier's S x S bitstream)


async def parse_multipart(headers, body: bytes) -> MultipartUpload:
    """A multipart/form-data body -> its `file` part (bytes and type), optional `companion` part and text fields;
    python-multipart parses it."""
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream():
        yield body

    try:
        form = await MultiPartParser(headers, stream(), max_files=2, max_fields=16).parse()
    except MultiPartException as e:
        raise Rejected(400, f"bad multipart body ({e.message})", "bad_request") from None
    except Exception as e:  # python-multipart's own parse errors on hostile bodies: still the client's fault
        raise Rejected(400, f"bad multipart body ({type(e).__name__})", "bad_request") from None
    f, comp = form.get("file"), form.get("companion")
    if not isinstance(f, UploadFile):
        raise Rejected(400, "multipart upload without a `file` part", "bad_request")
    if comp is not None and not isinstance(comp, UploadFile):
        raise Rejected(400, "multipart `companion` must be a file part (a bitstream)", "bad_request")
    ct = (f.content_type or "").split(";")[0].strip().lower()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    return MultipartUpload(await f.read(), ct, fields, await comp.read() if comp is not None else None)


def check_content_type(ct: str) -> bool:
    """415 for a Content-Type the service does not take; True when it is a client's bitstream (LATENT_TYPE)."""
    base = ct.split(";")[0].strip().lower()
    if base == LATENT_TYPE:
        return True
    if base and base not in RAW_TYPES and not base.startswith("image/"):
        raise Rejected(415, f"Content-Type {base} is not an image (send image/jpeg, image/png or image/webp, "
                            f"{LATENT_TYPE}, or multipart/form-data with a `file` part)", "unsupported_type")
    return False


def check_geometry(w: int, h: int, max_pixels: int, side: int | None = None) -> None:
    """Rejected(422) for a size the service will not decode or resize, from the header's numbers alone: the
    conversion's own policy and texts (imageio.size_problem: MIN_SIDE, MAX_ASPECT, every resize held to the
    pixel limit) with the service's max_pixels (ServeConfig); the code for the metrics from which rule refused it."""
    problem = size_problem(w, h, side, max_pixels)
    if problem is not None:
        code = "aspect_limit" if "aspect" in problem else "too_small" if "smaller" in problem else "pixel_limit"
        raise Rejected(422, problem, code)


def screen_and_decode(data: bytes, max_pixels: int, side: int | None = None) -> np.ndarray:
    """Image bytes -> (H, W, 3) uint8, or Rejected(415 / 422) with the reason. Runs in the decode pool.
    `side`: the store's S, so the fit's resize is checked too (the aspect limit bounds it without)."""
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
    check_geometry(w, h, max_pixels, side)
    try:
        return decode_image_bytes(data, "upload")
    except BadImageError as e:
        reason = str(e).removeprefix("upload: ")
        code = "pixel_limit" if "limit" in reason else "broken_image"
        raise Rejected(422, reason, code) from None
