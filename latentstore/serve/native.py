"""`latentstore serve STORE --native`: a store that keeps every photo whole, at its own size (issue #30).

The store is the native-size Zarr layout (store/backends/zarr_native.py: one complete bitstream per image), grown
a shard at a time like a fixed-size service store. Its schema's policy says `"mode": "native"` and
`"classifier_size": S`: the classifier still reads an S x S view (the fixed path's geometry, so its top-5 is the
fixed store's), while the store keeps the full-size latent:

    pixels (JPEG/PNG/WebP)  decoded once; the full-size latent coded here, one photo at a time (`NativeCoder.lock`:
                            bounded memory, tiled above codec/tiling.TILE_ABOVE_PIXELS as `latentstore compress`
                            does), and the S x S fit encoded in the micro-batch for the classifier
    a client's bitstream    multipart `file` (the full-size bitstream) + `companion` (the S x S one the client
                            coded, `upload --encode`): both checked in full (latent_ingest), the companion
                            classified, only the full one stored. A server without a classifier does not need
                            the companion; with one, an upload without it is a 422 (companion_missing).
What a record carries (intake log and journal) is the full-size payload only; the sealer decodes it per shape and
writes the complete bitstream (`IngestEngine.bitstream` with the image's size).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from .uploads import Rejected

NATIVE_RESIZE = "none; reflect-padded to a multiple of 8 by the encoder, cropped back on decode"


@dataclass
class FullLatent:
    symbols: np.ndarray  # (C, h, w) uint8: the whole photo's latent
    payload: bytes  # v2 payload, the store's tables and default lanes: what the record and the store carry
    size: tuple  # (H, W): the photo's own size
    bitstream_bytes: int  # the complete bitstream's size (GET /latent)


def native_policy(fixed_policy: dict, classifier_size: int) -> dict:
    """A new native service store's policy, from the fixed one's (same colour and encoder records)."""
    return {**fixed_policy, "mode": "native", "size": None, "classifier_size": int(classifier_size),
            "resize": NATIVE_RESIZE, "source": "uploads to latentstore serve --native (a growing store)"}


def is_native(schema) -> bool:
    return schema.policy.get("mode") == "native"


class NativeCoder:
    """The full-size latent of one upload: pixels coded here (one photo at a time), or a client's bitstream checked."""

    def __init__(self, engine):
        self.engine = engine
        self.lock = threading.Lock()  # one full-size encode at a time: its memory is bounded by one (tiled) photo

    def encode(self, rgb: np.ndarray) -> FullLatent:
        from ..codec.api import image_symbols
        from ..codec.entropy import rans_v2
        e = self.engine
        with self.lock:
            symbols = image_symbols(e.model, rgb, None, precision=e.precision)
        payload = rans_v2.encode(symbols, e.enc.tables, rans_v2.default_lanes(*symbols.shape))
        return self._full(symbols, payload, rgb.shape[:2])

    def check(self, data: bytes, max_pixels: int) -> FullLatent:
        c = self.engine.check_latent(data, max_pixels, full=True)
        return self._full(c.symbols, c.payload, (c.header.H, c.header.W))

    def _full(self, symbols, payload: bytes, size) -> FullLatent:
        size = (int(size[0]), int(size[1]))
        return FullLatent(symbols, payload, size, len(self.engine.bitstream(symbols.shape, payload, size)))

    def prepare(self, data: bytes, latent: bool, companion: bytes | None, max_pixels: int) -> tuple:
        """The decode pool's work for a native store: (what the micro-batch classifies, (H, W), FullLatent)."""
        from .uploads import screen_and_decode
        e = self.engine
        if latent:
            full = self.check(data, max_pixels)
            if companion is None:
                if e.classifier is not None:
                    raise Rejected(422, "a native store with a classifier needs the `companion` part (the photo's "
                                        f"{e.side} px bitstream, as `latentstore upload --encode` sends)",
                                   "companion_missing")
                small = _zeros_latent(e, full)  # classified by nobody: the batch only needs an item
            else:
                small = e.check_latent(companion, max_pixels)
            return small, full.size, full
        rgb = screen_and_decode(data, max_pixels, e.side)
        return e.prepare(rgb), rgb.shape[:2], self.encode(rgb)


def _zeros_latent(engine, full: FullLatent):
    from types import SimpleNamespace

    from .latent_ingest import CheckedLatent
    s = engine.side
    header = SimpleNamespace(H=s, W=s)
    return CheckedLatent(header, np.zeros((full.symbols.shape[0], s // 8, s // 8), np.uint8), b"", False, 0)


def stored_fields(full: FullLatent) -> dict:
    """What an upload's metadata says of what a native store keeps."""
    H, W = full.size
    return {"bytes": full.bitstream_bytes, "bpp": round(8 * full.bitstream_bytes / (H * W), 4),
            "latent_shape": list(full.symbols.shape), "stored_size": [H, W]}


def read_blobs(store: str, slot: int) -> tuple:
    """(symbols, payload) of a sealed sample of a native store, every checksum checked on the way."""
    from ..store.backends import backend_for
    from ..store.schema import read_schema
    b = backend_for(store, read_schema(store))
    return b.symbols(slot, checked=True), b.payload(slot)


def preview_png(rgb: np.ndarray, max_side: int | None) -> bytes:
    """PNG of the decoder's pixels, scaled down (aspect kept) so its longer side is at most max_side."""
    import io

    from PIL import Image
    im = Image.fromarray(rgb)
    if max_side and max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()
