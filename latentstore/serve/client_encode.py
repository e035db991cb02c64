"""`latentstore upload --encode`: the client compresses each photo with the store's codec and sends the bitstream.

The codec comes from the server once per run (`GET /v1/codec`), cached by weights hash in
$LATENTSTORE_CODEC_CACHE (default ~/.cache/latentstore/codecs): a cached codec is asked for with If-None-Match
and answered 304 without its bytes. A downloaded codec is checked before use (the file's own weights hash, and
that hash equal to the server's header), so a damaged download is never used to code a photo.

Coding follows the server's encoder exactly, so the server stores what it would have computed from the pixels:
the photo is decoded as the server decodes it (data/imageio.py), fitted to the store's S x S by the service's
own `fit_to` (fixed-size store), and encoded under the precision the server names (its store's recorded
arithmetic, device.py), tiled above tiling.TILE_ABOVE_PIXELS as `latentstore compress` does.
A fixed-size store gets the S x S bitstream as the raw body (`application/x-latentstore`). A native store
(phase 2 of issue #30) gets a multipart body: `file`, the full-size bitstream, and `companion`, the S x S
bitstream the classifier reads (the choice measured in docs/serving.md).
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from ..errors import LatentstoreError
from .latent_ingest import HASH_HEADER, LAYOUT_HEADER, MEDIA_TYPE, PRECISION_HEADER, SIZE_HEADER

CACHE_ENV = "LATENTSTORE_CODEC_CACHE"  # where downloaded codecs are kept, by weights hash


def codec_cache_dir() -> str:
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "latentstore", "codecs")


@dataclass
class RemoteCodec:
    codec: object  # the store's LatentCodec, on the CPU
    precision: str  # bf16 | fp32: the server's encoder arithmetic
    layout: str  # fixed | native
    side: int  # S: the store's side (fixed) or the classifier's (native)
    path: str  # the cached codec file
    fetched: bool  # False: it came from the cache (the server answered 304)
    lock: threading.Lock  # one photo encoded at a time: the encoder already uses every core

    def describe(self) -> str:
        return (f"codec {self.codec.name} ({self.codec.hash}, {'downloaded' if self.fetched else 'cached'}), "
                f"{self.precision}, {self.layout} {self.side} px")


def fetch_codec(client, url: str, headers: dict, cache_dir: str | None = None) -> RemoteCodec:
    """GET /v1/codec (If-None-Match: the hashes cached here) -> the codec, checked, from the cache or the answer."""
    from ..codec.zoo import load_codec_file
    cache = cache_dir or codec_cache_dir()
    have = sorted(f[: -len(".safetensors")] for f in os.listdir(cache) if f.endswith(".safetensors")) \
        if os.path.isdir(cache) else []
    tags = ", ".join(f'"{h}"' for h in have)
    resp = client.get(f"{url}/v1/codec", headers={**headers, **({"If-None-Match": tags} if tags else {})})
    if resp.status_code == 404:
        raise LatentstoreError(f"{url} does not take latent uploads (no GET /v1/codec); upload without --encode")
    if resp.status_code not in (200, 304):
        raise LatentstoreError(f"GET {url}/v1/codec answered {resp.status_code}: {resp.text[:200].strip()}")
    h = resp.headers.get(HASH_HEADER, "")
    if len(h) != 16 or any(c not in "0123456789abcdef" for c in h):
        raise LatentstoreError(f"GET {url}/v1/codec: no codec hash in the answer ({HASH_HEADER})")
    path = os.path.join(cache, f"{h}.safetensors")
    if resp.status_code == 200:
        os.makedirs(cache, exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}.{threading.get_ident()}"
        with open(tmp, "wb") as f:
            f.write(resp.content)
        try:
            got = load_codec_file(tmp).hash
        except LatentstoreError:
            os.unlink(tmp)
            raise LatentstoreError(f"GET {url}/v1/codec: the codec file is damaged (its weights hash does not check)") from None
        if got != h:
            os.unlink(tmp)
            raise LatentstoreError(f"GET {url}/v1/codec: the file's weights hash {got} is not the announced {h}")
        os.replace(tmp, path)
    elif not os.path.exists(path):
        raise LatentstoreError(f"GET {url}/v1/codec answered 304 for codec {h}, which is not in {cache}")
    codec = load_codec_file(path)
    if codec.hash != h:  # a cached file changed under us
        raise LatentstoreError(f"{path}: weights hash {codec.hash}, not {h} (delete it and retry)")
    precision = resp.headers.get(PRECISION_HEADER, "auto")
    layout = resp.headers.get(LAYOUT_HEADER, "fixed")
    try:
        side = int(resp.headers.get(SIZE_HEADER, "0"))
    except ValueError:
        side = 0
    if precision not in ("bf16", "fp32") or layout not in ("fixed", "native") or side < 8 or side % 8:
        raise LatentstoreError(f"GET {url}/v1/codec: unusable coding headers ({PRECISION_HEADER}={precision}, "
                               f"{LAYOUT_HEADER}={layout}, {SIZE_HEADER}={side})")
    return RemoteCodec(codec, precision, layout, side, path, resp.status_code == 200, threading.Lock())


def encode_photo(remote: RemoteCodec, data: bytes, where: str, tile: int | None = None) -> dict:
    """A photo's file bytes -> {"content": bytes, "content_type": str} (fixed) or {"files": {...}} (native):
    what `upload --encode` sends for it. BadImageError for a file that is not a usable image."""
    from ..codec.api import compress
    from ..data.imageio import decode_image_bytes
    from .engine import fit_to
    rgb = decode_image_bytes(data, where)
    v2 = "latentstore.rans"  # the service's stores keep v2: sent as v2, the bytes are stored as they came, no recode
    with remote.lock:
        small = compress(fit_to(rgb, remote.side), remote.codec, v2, precision=remote.precision)
        if remote.layout == "fixed":
            return {"content": small, "content_type": MEDIA_TYPE}
        full = compress(rgb, remote.codec, v2, tile=tile, precision=remote.precision)
    return {"files": {"file": ("photo.lsb", full, MEDIA_TYPE), "companion": ("companion.lsb", small, MEDIA_TYPE)}}
