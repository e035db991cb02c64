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
Version 2 layout, whose payload is `latentstore.rans` (interleaved lanes, self-delimiting):
    magic      2s   b"LS"
    version    u8   2
    hash       8s   the codec's weights hash
    C, L, h, w, H, W   unsigned LEB128 varints (usually 8 bytes in all)
    crc32      u32  zlib.crc32(payload, crc32 of the coding tables): damage, and bytes coded with other
                    tables than the decoder's, both fail it
    payload
v2 drops v1's codec name (the hash identifies the codec) and its word count (the payload runs to the
end): 23 bytes of container at 256 px instead of ~47, which matters at 0.1 bpp (~570-byte images).
Version 3 layout, whose payload is `latentstore.rans3` (v2's lanes with a three-neighbour context): v2's exactly,
with version byte 3 (magic b"LS\x03"); the CRC is seeded with the crc32 of the v3 tables.

The version selects the entropy coder (codec/entropy/registry.py), so `unpack` needs nothing but the
bytes; checking that the codec (and its tables) are the right ones is the caller's job
(LatentCodec.parse, store/backends/base.decode_bitstream).
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from ..errors import BitstreamError

MAGIC = b"LSB1"
MAGIC_V2 = b"LS\x02"
MAGIC_V3 = b"LS\x03"
LS_VERSIONS = (2, 3)  # the versions in the short container (magic b"LS" + version byte)
_FIXED = struct.Struct("<4sBBHHHII")  # magic, version, L, C, h, w, H, W
_TAIL_V1 = struct.Struct("<8sII")  # hash, n_words, crc32
MAX_VARINT_BYTES = 5


@dataclass(frozen=True)
class Header:
    codec_id: str  # v1 only ("" in v2: the hash identifies the codec)
    weights_hash: str  # 16 hex digits
    C: int
    L: int
    h: int
    w: int
    H: int  # original height in pixels
    W: int  # original width
    version: int = 1  # bitstream version: selects the entropy coder
    crc: int = 0  # v2: the payload CRC (seeded with the tables' crc32), checked by check_crc once tables are known

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.C, self.h, self.w


def tables_crc(tables) -> int:
    """crc32 of a coding table's bytes (uint16, C-order): seeds a v2 bitstream's payload CRC."""
    import numpy as np
    return zlib.crc32(np.ascontiguousarray(tables, dtype="<u2").tobytes())


def pack(header: Header, payload: bytes, tables=None) -> bytes:
    """Header + payload; v2 and v3 need the coding `tables`, which seed their payload CRC."""
    if header.version in LS_VERSIONS:
        fields = b"".join(_varint(v) for v in (header.C, header.L, header.h, header.w, header.H, header.W))
        return b"".join([b"LS" + bytes([header.version]), bytes.fromhex(header.weights_hash), fields,
                         struct.pack("<I", zlib.crc32(payload, tables_crc(tables))), payload])
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
    """Parse and check a bitstream; any damage is a BitstreamError naming what is wrong.
    v1's CRC is checked here; v2's and v3's need the decoder's tables: call check_crc(header, payload, tables)."""
    if data[:3] in (MAGIC_V2, MAGIC_V3):
        return _unpack_v2(data)
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


def check_crc(header: Header, payload: bytes, tables) -> None:
    """v2, v3: the payload CRC, seeded with the crc32 of the tables the decoder is about to use."""
    if header.version in LS_VERSIONS and zlib.crc32(payload, tables_crc(tables)) != header.crc:
        raise BitstreamError("bitstream payload is corrupt, or was coded with other tables than the decoder's "
                             "(CRC mismatch)")


def _unpack_v2(data: bytes) -> tuple[Header, bytes]:
    off = len(MAGIC_V2) + 8
    if len(data) < off:
        raise BitstreamError(f"bitstream is truncated ({len(data)} bytes, shorter than a header)")
    values = []
    for _ in range(6):
        v, off = _read_varint(data, off)
        values.append(v)
    if len(data) < off + 4:
        raise BitstreamError("bitstream is truncated inside its header")
    C, L, h, w, H, W = values
    if not (1 <= C <= 65535 and 2 <= L <= 255 and 1 <= h <= 65535 and 1 <= w <= 65535):
        raise BitstreamError("bitstream header is corrupt (shape out of range)")
    (crc,) = struct.unpack_from("<I", data, off)
    check_grid(h, w, H, W)
    return Header("", data[3:11].hex(), C, L, h, w, H, W, data[2], crc), bytes(data[off + 4:])


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
        v >>= 7
        if not v:
            return bytes(out)


def _read_varint(data: bytes, off: int) -> tuple[int, int]:
    v = 0
    for i in range(MAX_VARINT_BYTES):
        if off + i >= len(data):
            raise BitstreamError("bitstream is truncated inside its header")
        b = data[off + i]
        v |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            return v, off + i + 1
    raise BitstreamError("bitstream header is corrupt (over-long varint)")


def payload_size(data: bytes) -> int:
    """Bytes of entropy-coded payload in a bitstream (its length minus the container header)."""
    if data[:3] in (MAGIC_V2, MAGIC_V3):
        return len(_unpack_v2(data)[1])
    if len(data) < _FIXED.size + 1 or data[4] != 1:
        raise BitstreamError("not a latentstore bitstream")
    return len(data) - (_FIXED.size + 1 + data[_FIXED.size] + _TAIL_V1.size)


def check_grid(h: int, w: int, H: int, W: int) -> None:
    if H > 8 * h or W > 8 * w or H <= 8 * (h - 1) or W <= 8 * (w - 1):
        raise BitstreamError("bitstream header is corrupt (image size does not match the latent grid)")
