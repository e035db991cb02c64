"""The latentstore bitstream container: a small header naming the codec, then the entropy coder's payload.

Version 1 layout (little-endian), whose payload is `latentstore.ans` (uint32 ANS words):
    magic      4s   b"LSB1"
    version    u8   1
    L          u8   alphabet size
    C          u16  channels
    h, w       u16  latent grid
    H, W       u32  original image size (decode crops back to it)
    codec id   u8 length + utf-8
    hash       8s   the codec's weights hash (16 hex digits as 8 bytes)
    n_words    u32  payload length in 32-bit words
    crc32      u32  of the payload
    payload    n_words x u32
The version byte selects the entropy coder (codec/entropy/registry.py), so `unpack` needs nothing
but the bytes; checking that the codec is the right one is the caller's job (LatentCodec.parse).
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from ..errors import BitstreamError

MAGIC = b"LSB1"
_FIXED = struct.Struct("<4sBBHHHII")  # magic, version, L, C, h, w, H, W
_TAIL_V1 = struct.Struct("<8sII")  # hash, n_words, crc32


@dataclass(frozen=True)
class Header:
    codec_id: str
    weights_hash: str  # 16 hex digits
    C: int
    L: int
    h: int
    w: int
    H: int  # original height in pixels
    W: int  # original width
    version: int = 1  # bitstream version: selects the entropy coder

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.C, self.h, self.w


def pack(header: Header, payload: bytes) -> bytes:
    if header.version != 1:
        raise ValueError(f"bitstream version {header.version} has no container writer here")
    if len(payload) % 4:
        raise ValueError("a v1 payload is whole 32-bit words")
    cid = header.codec_id.encode()
    if len(cid) > 255:
        raise ValueError("codec id longer than 255 bytes")
    return b"".join([
        _FIXED.pack(MAGIC, header.version, header.L, header.C, header.h, header.w, header.H, header.W),
        struct.pack("<B", len(cid)), cid,
        _TAIL_V1.pack(bytes.fromhex(header.weights_hash), len(payload) // 4, zlib.crc32(payload)),
        payload,
    ])


def unpack(data: bytes) -> tuple[Header, bytes]:
    """Parse and check a bitstream; any damage is a BitstreamError naming what is wrong."""
    if len(data) < _FIXED.size + 1 + _TAIL_V1.size:
        raise BitstreamError(f"bitstream is truncated ({len(data)} bytes, shorter than a header)")
    magic, version, L, C, h, w, H, W = _FIXED.unpack_from(data, 0)
    if magic != MAGIC:
        raise BitstreamError("not a latentstore bitstream (bad magic)")
    if version != 1:
        from .entropy import coder_for_version
        coder_for_version(version)  # names the versions this reader knows
        raise BitstreamError(f"bitstream version {version} has no container reader here")
    off = _FIXED.size
    n = data[off]
    off += 1
    if len(data) < off + n + _TAIL_V1.size:
        raise BitstreamError("bitstream is truncated inside its header")
    try:
        codec_id = data[off: off + n].decode()
    except UnicodeDecodeError:
        raise BitstreamError("bitstream header is corrupt (codec id)") from None
    off += n
    hraw, n_words, crc = _TAIL_V1.unpack_from(data, off)
    off += _TAIL_V1.size
    payload = bytes(data[off:])
    if len(payload) != 4 * n_words:
        raise BitstreamError(f"bitstream is truncated or padded: payload is {len(payload)} bytes, header says {4 * n_words}")
    if zlib.crc32(payload) != crc:
        raise BitstreamError("bitstream payload is corrupt (CRC mismatch)")
    check_grid(h, w, H, W)
    return Header(codec_id, hraw.hex(), C, L, h, w, H, W, version), payload


def payload_size(data: bytes) -> int:
    """Bytes of entropy-coded payload in a bitstream (its length minus the container header)."""
    if len(data) < _FIXED.size + 1 or data[4] != 1:
        raise BitstreamError("not a version 1 bitstream")
    return len(data) - (_FIXED.size + 1 + data[_FIXED.size] + _TAIL_V1.size)


def check_grid(h: int, w: int, H: int, W: int) -> None:
    if H > 8 * h or W > 8 * w or H <= 8 * (h - 1) or W <= 8 * (w - 1):
        raise BitstreamError("bitstream header is corrupt (image size does not match the latent grid)")
