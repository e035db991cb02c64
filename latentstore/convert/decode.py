"""Decoding and resizing inputs: DALI for the bulk, Pillow for what DALI would get wrong, one geometry stage.

Every input is screened from its header first (cheap): refused outright when it is empty, not an
image, truncated (no end-of-image marker), smaller than 8 px or over the pixel limit. Plain JPEG
and PNG in RGB or greyscale without an EXIF rotation go through DALI's `decoders.image`; CMYK,
alpha, palette, 16-bit and EXIF-rotated images are decoded by Pillow with the project's policy
(latentstore.data.imageio), then fed to the *same* DALI resize/crop stage as raw pixels. The route
depends on the file alone, so an image gives the same pixels whatever batch it lands in.

DALI cannot skip a corrupt file inside a batch: when a batch fails, the pipeline is rebuilt, the
batch's files are checked one by one, and the bad ones are recorded as rejects with DALI's reason.
"""
from __future__ import annotations

import io
import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..errors import BadImageError
from ..data.imageio import MAX_PIXELS, MIN_SIDE, clean_reason, decode_image_bytes

DALI_FORMATS = {"JPEG", "PNG"}
DALI_MODES = {"RGB", "L"}


@dataclass
class Screened:
    route: str  # "dali" | "pillow" | "reject"
    data: bytes | None = None  # encoded bytes (dali route)
    rgb: np.ndarray | None = None  # decoded pixels (pillow route)
    reason: str = ""  # why it was rejected
    size: tuple = ()  # (H, W) from the header (dali route)


def _has_end_marker(fmt: str, data: bytes) -> bool:
    tail = data[-1024:]
    if fmt == "JPEG":
        return b"\xff\xd9" in tail
    if fmt == "PNG":
        return b"IEND" in tail
    return True


def screen(data: bytes, where: str) -> Screened:
    if not data:
        return Screened("reject", reason="empty file")
    try:
        im = Image.open(io.BytesIO(data))
        fmt, mode, (w, h) = im.format, im.mode, im.size
        orientation = im.getexif().get(0x0112, 1) if fmt == "JPEG" else 1
    except Exception as e:
        return Screened("reject", reason=f"not a readable image ({clean_reason(str(e).splitlines()[0]) if str(e) else type(e).__name__})")
    if w * h > MAX_PIXELS:
        return Screened("reject", reason=f"{w}x{h} is over the {MAX_PIXELS:,}-pixel limit")
    if min(w, h) < MIN_SIDE:
        return Screened("reject", reason=f"{w}x{h} is smaller than {MIN_SIDE} px on a side")
    if not _has_end_marker(fmt, data):
        return Screened("reject", reason=f"truncated {fmt} (no end-of-image marker)")
    if fmt in DALI_FORMATS and mode in DALI_MODES and orientation in (None, 1):
        return Screened("dali", data=data, size=(h, w))
    try:
        return Screened("pillow", rgb=decode_image_bytes(data, where))
    except BadImageError as e:
        return Screened("reject", reason=str(e).split(": ", 1)[-1])


class DaliImageStage:
    """Two DALI pipelines sharing one geometry: encoded bytes -> RGB, and raw RGB -> resized RGB.

    size: S for fixed-size mode (shorter side to S, antialiased, centre crop S x S); None for
    native mode (no geometry: the encoder pads to a multiple of 8 itself).
    """

    def __init__(self, size: int | None, batch_size: int, device: str = "cpu", num_threads: int = 2):
        self.size, self.batch_size, self.device, self.num_threads = size, batch_size, device, num_threads
        self._lock = threading.Lock()
        self._build()

    def _geometry(self, img):
        from nvidia.dali import fn
        if self.size is None:
            return img
        img = fn.resize(img, resize_shorter=self.size, antialias=True)
        return fn.crop(img, crop=(self.size, self.size))  # centre crop

    def _build(self):
        from nvidia.dali import fn, pipeline_def, types
        dev_id = 0 if self.device == "cuda" else None
        decoder_device = "mixed" if self.device == "cuda" else "cpu"

        @pipeline_def(batch_size=self.batch_size, num_threads=self.num_threads, device_id=dev_id,
                      exec_dynamic=True, prefetch_queue_depth=1)
        def encoded():
            enc = fn.external_source(name="enc", dtype=types.UINT8, ndim=1)
            return self._geometry(fn.decoders.image(enc, device=decoder_device, output_type=types.RGB))

        @pipeline_def(batch_size=self.batch_size, num_threads=self.num_threads, device_id=dev_id,
                      exec_dynamic=True, prefetch_queue_depth=1)
        def raw():
            img = fn.external_source(name="raw", dtype=types.UINT8, ndim=3, layout="HWC")
            if self.device == "cuda":
                img = img.gpu()
            return self._geometry(img)

        self._enc = encoded()
        self._enc.build()
        self._raw = raw()
        self._raw.build()

    @staticmethod
    def _to_numpy(out) -> list[np.ndarray]:
        tl = out[0]
        if hasattr(tl, "as_cpu"):
            tl = tl.as_cpu()
        return [np.array(tl[i]) for i in range(len(tl))]

    def _run(self, pipe, name: str, batch: list[np.ndarray]) -> list[np.ndarray]:
        pipe.feed_input(name, batch)
        return self._to_numpy(pipe.run())

    def decode(self, items: list[bytes]) -> list[np.ndarray | Exception]:
        """Encoded bytes -> HWC uint8 each, or the exception that sample raised alone."""
        if not items:
            return []
        arrays = [np.frombuffer(d, dtype=np.uint8) for d in items]
        with self._lock:
            try:
                return self._run(self._enc, "enc", arrays)
            except Exception:
                self._build()  # a failed DALI pipeline cannot be reused
            results: list = []
            for a in arrays:  # find the culprits one by one
                try:
                    results.append(self._run(self._enc, "enc", [a])[0])
                except Exception as e:
                    results.append(e)
                    self._build()
            return results

    def geometry(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Already-decoded RGB -> the same resize/crop as the DALI-decoded path."""
        if not images:
            return []
        with self._lock:
            return self._run(self._raw, "raw", [np.ascontiguousarray(i) for i in images])


def dali_error_reason(e: Exception) -> str:
    msg = str(e)
    for line in msg.splitlines():
        if "Could not decode" in line or "Premature" in line or "Unrecognized" in line or "not supported" in line:
            return f"DALI could not decode it ({clean_reason(line.strip())[:160]})"
    return f"DALI could not decode it ({clean_reason(msg.splitlines()[0])[:160] if msg else type(e).__name__})"
