"""Latents from the device: a client's bitstream checked in full, re-coded to the store's tables, and the codec
the client needs to make one (`GET /v1/codec`).

An upload with `Content-Type: application/x-latentstore` (or a multipart `file` part of that type) is a complete
v2 or v3 bitstream (codec/bitstream.py) made by the store's codec. A v3 one (`latentstore.rans3`, what
`latentstore compress` writes) is decoded with the codec's v3 tables and re-coded into the store's v2. `check_latent_upload` accepts it only when every
check passes, before anything of it is written; each failure is a `Rejected` (status, one-line reason, code):

    415 not_a_bitstream   no latentstore magic (not a bitstream at all)
    422 bad_version       a version other than 2 or 3 (the store is bitstream v2, `latentstore.rans`)
    422 corrupt_bitstream a header that does not parse (truncated, over-long varint, a grid that does not match
                          the image size), or a payload whose CRC fails under both the store's and the codec's
                          tables (damage, or tables the server does not have)
    422 foreign_codec     another codec's weights hash (or C, L): fetch GET /v1/codec
    422 latent_shape      an image size over the bounds (the pixel path's limits: ServeConfig.max_pixels, 8 px a side), or,
                          in a fixed-size store, a size other than the store's S x S
    422 lane_decode       a lane that does not decode exactly (lane index, unread words, a wrong final rANS
                          state) or symbols >= L
Why the CRC is tried twice: a v2 bitstream carries no tables, but its payload CRC is seeded with the crc32 of
the tables it was coded with. A client codes with the codec's own tables (all it has); a converted store may
have fitted its own. The CRC tells which were used, and a payload coded with the codec's tables is decoded with
them and re-coded with the store's (also when its lane count is not the default one), so the store holds one
table set and one lane layout, and the same symbols always give the same stored bytes.
The server never decodes pixels or runs the encoder for such an upload: the classifier reads the symbols.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..codec import bitstream as bs
from ..codec.entropy import rans_v2, rans_v3
from ..data.imageio import MIN_SIDE
from ..errors import BitstreamError
from .uploads import LATENT_TYPE, Rejected

MEDIA_TYPE = LATENT_TYPE  # an upload's Content-Type (or its multipart file part's): application/x-latentstore
HASH_HEADER = "X-Latentstore-Codec-Hash"  # GET /v1/codec: the codec's weights hash (also the ETag)
NAME_HEADER = "X-Latentstore-Codec-Name"  # GET /v1/codec: the codec's name
PRECISION_HEADER = "X-Latentstore-Precision"  # GET /v1/codec: bf16 | fp32, the store's encoder arithmetic
LAYOUT_HEADER = "X-Latentstore-Layout"  # GET /v1/codec: "fixed" (uploads are S x S) or "native" (any size)
SIZE_HEADER = "X-Latentstore-Size"  # GET /v1/codec: S, the store's side (fixed) or the classifier's (native)


@dataclass(frozen=True)
class LatentBounds:
    max_pixels: int = 40_000_000  # the image size a header may name, H * W (the pixel path's ServeConfig.max_pixels)
    min_side: int = MIN_SIDE  # ... and its shorter side at least (one latent cell)
    side: int | None = None  # a fixed-size store's S: the bitstream must be S x S; None: any size (native)


@dataclass
class CheckedLatent:
    header: bs.Header  # the client's header (H, W: the image's size; h, w: the latent grid)
    symbols: np.ndarray  # (C, h, w) uint8, entropy-decoded and checked
    payload: bytes  # the payload coded with the store's tables and default lanes: what the store keeps
    recoded: bool  # True when `payload` was re-coded (other tables or another lane count than the store's)
    source_bytes: int  # size of the uploaded bitstream


def check_latent_upload(data: bytes, codec, bounds: LatentBounds, store_tables=None,
                        codec_tables=None) -> CheckedLatent:
    """An uploaded bitstream -> its checked symbols and the payload the store keeps, or Rejected with the reason.
    codec: the store's LatentCodec; store_tables: the store's v2 tables (None: the codec's own); codec_tables:
    the codec's own v2 tables when the caller keeps them (the service: they were 5% of its event loop)."""
    if codec_tables is None:
        codec_tables = codec.entropy.tables(rans_v2.RANS_V2.id)
    store_tables = codec_tables if store_tables is None else np.asarray(store_tables, np.uint16)
    header, payload = _parse(bytes(data), codec)
    _check_bounds(header, bounds)
    if header.version == 3:  # the client coded with the codec's v3 tables, all it has
        try:
            tables, coder = codec.entropy.tables(rans_v3.RANS_V3.id), rans_v3.RANS_V3
        except BitstreamError:
            raise Rejected(422, f"bitstream version 3 needs an alphabet of at most {rans_v3.MAX_L} symbols "
                                f"(the codec has L = {codec.cfg.L}): send v2", "bad_version") from None
        tables = _tables_of(header, payload, tables, None)
    else:
        tables, coder = _tables_of(header, payload, store_tables, codec_tables), rans_v2.RANS_V2
    try:
        symbols = coder.decode(payload, tables, header.shape)
    except BitstreamError as e:
        raise Rejected(422, f"bitstream does not decode: {_strip(e)}", "lane_decode") from None
    if symbols.max(initial=0) >= codec.cfg.L:
        raise Rejected(422, f"bitstream decodes to symbols >= L = {codec.cfg.L}", "lane_decode")
    lanes = rans_v2.default_lanes(*header.shape)
    recoded = tables is not store_tables or payload[0] != lanes or header.version != 2
    if recoded:
        payload = rans_v2.encode(symbols, store_tables, lanes)
    return CheckedLatent(header, symbols, payload, recoded, len(data))


def _parse(data: bytes, codec) -> tuple[bs.Header, bytes]:
    if not data:
        raise Rejected(415, "empty body: not a latentstore bitstream", "not_a_bitstream")
    if data[:3] not in (bs.MAGIC_V2, bs.MAGIC_V3) and data[:4] != bs.MAGIC:
        if data[:2] == bs.MAGIC_V2[:2] and len(data) >= 3:
            raise Rejected(422, f"bitstream version {data[2]} is not accepted (send v2 or v3)", "bad_version")
        raise Rejected(415, "not a latentstore bitstream (bad magic)", "not_a_bitstream")
    if data[:4] == bs.MAGIC:
        raise Rejected(422, "bitstream version 1 is not accepted (send v2 or v3)", "bad_version")
    try:
        header, payload = bs.unpack(data)
    except BitstreamError as e:
        raise Rejected(422, _strip(e), "corrupt_bitstream") from None
    if header.weights_hash != codec.hash or (header.C, header.L) != (codec.cfg.C, codec.cfg.L):
        raise Rejected(422, f"bitstream was made by the codec with weights {header.weights_hash}, not the store's "
                            f"{codec.name} ({codec.hash}): fetch GET /v1/codec", "foreign_codec")
    if not payload:
        raise Rejected(422, "bitstream is truncated (no payload)", "corrupt_bitstream")
    return header, payload


def _check_bounds(h: bs.Header, b: LatentBounds) -> None:
    if h.H * h.W > b.max_pixels:
        raise Rejected(422, f"bitstream of a {h.W}x{h.H} image is over the {b.max_pixels:,}-pixel limit", "latent_shape")
    if min(h.H, h.W) < b.min_side:
        raise Rejected(422, f"bitstream of a {h.W}x{h.H} image: under {b.min_side} px on a side", "latent_shape")
    if b.side is not None and (h.H, h.W) != (b.side, b.side):
        raise Rejected(422, f"this store keeps {b.side}x{b.side} latents; the bitstream is of a {h.W}x{h.H} image "
                            f"(fit the photo to {b.side} px first, as `latentstore upload --encode` does)", "latent_shape")


def _tables_of(header: bs.Header, payload: bytes, store_tables, codec_tables):
    """The tables whose crc32 seeds the payload's CRC: the store's, else the codec's own; else Rejected."""
    for t in (x for x in (store_tables, codec_tables) if x is not None):
        try:
            bs.check_crc(header, payload, t)
            return t
        except BitstreamError:
            continue
    raise Rejected(422, "bitstream payload is corrupt, or coded with tables other than the store's or the codec's "
                        "(CRC mismatch)", "corrupt_bitstream")


def _strip(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


# --------------------------------------------------------------------------------------- GET /v1/codec
def codec_headers(codec, precision: str, layout: str, side: int) -> dict[str, str]:
    """What a client needs besides the codec file to code as the server would."""
    return {HASH_HEADER: codec.hash, NAME_HEADER: codec.name, PRECISION_HEADER: precision, LAYOUT_HEADER: layout,
            SIZE_HEADER: str(side), "ETag": f'"{codec.hash}"', "Cache-Control": "no-cache"}


def codec_response(codec_path: str, codec, precision: str, layout: str, side: int,
                   if_none_match: str | None = None) -> tuple[int, bytes, dict[str, str]]:
    """The body of GET /v1/codec: (status, body, headers). 200 with the codec file's bytes, or 304 with no body
    when If-None-Match names the codec's hash (the client has it cached). The route sends these as they are,
    with media type application/octet-stream."""
    headers = codec_headers(codec, precision, layout, side)
    tags = {t.strip().strip('"').removeprefix("W/").strip('"') for t in (if_none_match or "").split(",")}
    if codec.hash in tags or "*" in tags:
        return 304, b"", headers
    with open(codec_path, "rb") as f:
        body = f.read()
    return 200, body, {**headers, "Content-Disposition": f'attachment; filename="{codec.name}.safetensors"'}
