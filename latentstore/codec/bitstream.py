"""The latentstore bitstream: a small header, then the symbols ANS-coded per channel (constriction).

Layout (little-endian):
    magic      4s   b"LSB1"
    version    u8   BITSTREAM_VERSION
    L          u8   alphabet size
    C          u16  channels
    h, w       u16  latent grid
    H, W       u32  original image size (decode crops back to it)
    codec id   u8 length + utf-8
    hash       8s   the codec's weights hash (16 hex digits as 8 bytes)
    n_words    u32  payload length in 32-bit words
    crc32      u32  of the payload
    payload    n_words x u32
Symbols are coded channel by channel, each channel with its own frozen categorical model.
ANS is a stack, so channels are pushed in reverse and popped in order.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from functools import lru_cache

import constriction
import numpy as np

from ..errors import BitstreamError

MAGIC = b"LSB1"
BITSTREAM_VERSION = 1
_FIXED = struct.Struct("<4sBBHHHII")  # magic, version, L, C, h, w, H, W
_TAIL = struct.Struct("<8sII")  # hash, n_words, crc32


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


def channel_models(freqs: np.ndarray) -> list:
    """One categorical per channel from integer counts; float64 normalisation is exact and portable.
    Cached per table: building C models costs more than decoding a small image."""
    freqs = np.ascontiguousarray(freqs, dtype=np.int64)
    return _models_cached(freqs.tobytes(), freqs.shape)


@lru_cache(maxsize=32)
def _models_cached(raw: bytes, shape: tuple) -> list:
    f = np.frombuffer(raw, dtype=np.int64).reshape(shape).astype(np.float64)
    return [constriction.stream.model.Categorical(row / row.sum(), perfect=False) for row in f]


def encode_symbols(symbols: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    """(C, h, w) uint8 -> uint32 words."""
    models = channel_models(freqs)
    coder = constriction.stream.stack.AnsCoder()
    flat = symbols.reshape(symbols.shape[0], -1).astype(np.int32)
    for c in reversed(range(flat.shape[0])):
        coder.encode_reverse(flat[c], models[c])
    return coder.get_compressed().astype("<u4")


def decode_symbols(words: np.ndarray, freqs: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    C, h, w = shape
    models = channel_models(freqs)
    coder = constriction.stream.stack.AnsCoder(np.asarray(words, dtype=np.uint32))
    out = np.empty((C, h * w), dtype=np.uint8)
    for c in range(C):
        out[c] = coder.decode(models[c], h * w)
    if not coder.is_empty():
        raise BitstreamError("bitstream has trailing data after the last symbol (corrupt or wrong codec)")
    return out.reshape(C, h, w)


def cross_entropy_bits(symbols: np.ndarray, freqs: np.ndarray) -> float:
    """-sum log2 p(symbol) under the frozen per-channel model: what an ideal coder would spend."""
    p = np.asarray(freqs, dtype=np.float64)
    p = p / p.sum(1, keepdims=True)
    C = symbols.shape[0]
    flat = symbols.reshape(C, -1).astype(np.int64)
    return float(-np.log2(p[np.arange(C)[:, None], flat]).sum())


def pack(header: Header, words: np.ndarray) -> bytes:
    payload = np.asarray(words, dtype="<u4").tobytes()
    cid = header.codec_id.encode()
    if len(cid) > 255:
        raise ValueError("codec id longer than 255 bytes")
    return b"".join([
        _FIXED.pack(MAGIC, BITSTREAM_VERSION, header.L, header.C, header.h, header.w, header.H, header.W),
        struct.pack("<B", len(cid)), cid,
        _TAIL.pack(bytes.fromhex(header.weights_hash), len(payload) // 4, zlib.crc32(payload)),
        payload,
    ])


def unpack(data: bytes) -> tuple[Header, np.ndarray]:
    """Parse and check a bitstream; any damage is a BitstreamError naming what is wrong."""
    if len(data) < _FIXED.size + 1 + _TAIL.size:
        raise BitstreamError(f"bitstream is truncated ({len(data)} bytes, shorter than a header)")
    magic, version, L, C, h, w, H, W = _FIXED.unpack_from(data, 0)
    if magic != MAGIC:
        raise BitstreamError("not a latentstore bitstream (bad magic)")
    if version != BITSTREAM_VERSION:
        raise BitstreamError(f"bitstream version {version} is not supported (this reader knows {BITSTREAM_VERSION})")
    off = _FIXED.size
    n = data[off]
    off += 1
    if len(data) < off + n + _TAIL.size:
        raise BitstreamError("bitstream is truncated inside its header")
    try:
        codec_id = data[off: off + n].decode()
    except UnicodeDecodeError:
        raise BitstreamError("bitstream header is corrupt (codec id)") from None
    off += n
    hraw, n_words, crc = _TAIL.unpack_from(data, off)
    off += _TAIL.size
    payload = data[off:]
    if len(payload) != 4 * n_words:
        raise BitstreamError(f"bitstream is truncated or padded: payload is {len(payload)} bytes, header says {4 * n_words}")
    if zlib.crc32(payload) != crc:
        raise BitstreamError("bitstream payload is corrupt (CRC mismatch)")
    if H > 8 * h or W > 8 * w or H <= 8 * (h - 1) or W <= 8 * (w - 1):
        raise BitstreamError("bitstream header is corrupt (image size does not match the latent grid)")
    return Header(codec_id, hraw.hex(), C, L, h, w, H, W), np.frombuffer(payload, dtype="<u4")
