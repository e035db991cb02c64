"""Entropy-coded latent symbols as zarr v3 array->bytes codecs, and their numcodecs twins:
`latentstore.ans` (bitstream v1's coder), and `latentstore.rans` (v2's) and `latentstore.rans3` (v3's), see the
second half: one chunk is its images' payloads back to back, each self-delimiting.

`latentstore.ans`:

A chunk is uint8 symbols whose channel axis is `channel_axis` (1 for (n, C, h, w) chunks). Each
channel is ANS-coded with its own frozen frequency table, carried in the codec's configuration,
so `zarr.open` decodes a store with nothing but this package installed. Registered through the
`zarr.codecs` and `numcodecs.codecs` entry points (see pyproject.toml).

Chunk bytes: u32 word count, then the ANS words (little-endian). An all-fill chunk is never
written by zarr, so padding rows cost nothing.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numcodecs.abc import Codec as NumcodecsCodec
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.buffer import Buffer, NDBuffer

from ..codec.entropy.ans_v1 import decode_words, encode_words
from ..errors import BitstreamError

CODEC_ID = "latentstore.ans"
CODEC_VERSION = 1


class _ChunkCodec(ArrayBytesCodec):
    """zarr's array->bytes plumbing, shared by both coders; each defines _encode_array(a) -> bytes and
    _decode_bytes(data, shape) -> array."""

    is_fixed_size = False

    @classmethod
    def from_dict(cls, data: dict):
        return cls(**dict(data.get("configuration", {})))

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec) -> NDBuffer:
        a = self._decode_bytes(chunk_bytes.to_bytes(), chunk_spec.shape)
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(a)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec) -> NDBuffer:
        return self._decode_sync(chunk_bytes, chunk_spec)

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec) -> Buffer | None:
        return chunk_spec.prototype.buffer.from_bytes(self._encode_array(chunk_array.as_numpy_array()))

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec) -> Buffer | None:
        return self._encode_sync(chunk_array, chunk_spec)

    def compute_encoded_size(self, input_byte_length: int, _chunk_spec) -> int:
        raise NotImplementedError  # variable size


class _ChunkNumcodec(NumcodecsCodec):
    """The numcodecs twins' plumbing (zarr v2 / plain numcodecs users): they need the chunk shape, so they store it."""

    def encode(self, buf):
        return self._encode_array(np.asarray(buf, dtype=np.uint8).reshape(self.shape))

    def decode(self, buf, out=None):
        a = self._decode_bytes(bytes(buf), tuple(self.shape))
        if out is not None:
            np.copyto(np.asarray(out).reshape(a.shape), a)
            return out
        return a


def _encode_chunk(a: np.ndarray, freqs: np.ndarray, channel_axis: int) -> bytes:
    a = np.moveaxis(np.asarray(a, dtype=np.uint8), channel_axis, 0)
    C = a.shape[0]
    if C != freqs.shape[0]:
        raise ValueError(f"{CODEC_ID}: chunk has {C} channels, the codec's table {freqs.shape[0]}")
    words = encode_words(np.ascontiguousarray(a.reshape(C, 1, -1)), freqs)
    return struct.pack("<I", len(words)) + words.tobytes()


def _decode_chunk(data: bytes, freqs: np.ndarray, shape: tuple[int, ...], channel_axis: int) -> np.ndarray:
    (n,) = struct.unpack_from("<I", data, 0)
    if len(data) != 4 + 4 * n:
        raise ValueError(f"{CODEC_ID}: chunk is {len(data)} bytes, its header says {4 + 4 * n} (truncated or corrupt)")
    moved = (shape[channel_axis],) + tuple(s for i, s in enumerate(shape) if i != channel_axis)
    rest = int(np.prod(moved[1:]))
    sym = decode_words(np.frombuffer(data, dtype="<u4", offset=4), freqs, (moved[0], 1, rest))
    return np.moveaxis(sym.reshape(moved), 0, channel_axis)


@dataclass(frozen=True)
class LatentANSCodec(_ChunkCodec):
    """zarr v3 array->bytes codec; configuration: {"freqs": C x L ints, "channel_axis": int, "version": 1}."""

    freqs: tuple
    channel_axis: int = 1

    def __init__(self, *, freqs, channel_axis: int = 1, version: int = CODEC_VERSION) -> None:
        if version != CODEC_VERSION:
            raise ValueError(f"{CODEC_ID} version {version} is not supported (this package knows {CODEC_VERSION})")
        object.__setattr__(self, "freqs", tuple(tuple(int(v) for v in row) for row in freqs))
        object.__setattr__(self, "channel_axis", int(channel_axis))

    @cached_property
    def freq_array(self) -> np.ndarray:  # once per codec, not once per chunk
        return np.asarray(self.freqs, dtype=np.int64)

    def to_dict(self) -> dict:
        return {"name": CODEC_ID, "configuration": {"freqs": [list(r) for r in self.freqs],
                                                    "channel_axis": self.channel_axis, "version": CODEC_VERSION}}

    def _encode_array(self, a: np.ndarray) -> bytes:
        return _encode_chunk(a, self.freq_array, self.channel_axis)

    def _decode_bytes(self, data: bytes, shape) -> np.ndarray:
        return _decode_chunk(data, self.freq_array, tuple(shape), self.channel_axis)


class LatentANSNumcodec(_ChunkNumcodec):
    """The numcodecs twin of `latentstore.ans`."""

    codec_id = CODEC_ID

    def __init__(self, freqs, shape, channel_axis: int = 1):
        self.freqs = [list(map(int, r)) for r in freqs]
        self.shape = list(map(int, shape))
        self.channel_axis = int(channel_axis)
        self._freqs = np.asarray(self.freqs, dtype=np.int64)

    def _encode_array(self, a: np.ndarray) -> bytes:
        return _encode_chunk(a, self._freqs, self.channel_axis)

    def _decode_bytes(self, data: bytes, shape) -> np.ndarray:
        return _decode_chunk(data, self._freqs, shape, self.channel_axis)

    def get_config(self):
        return {"id": CODEC_ID, "freqs": self.freqs, "shape": self.shape, "channel_axis": self.channel_axis}


# ------------------------------------------------------------------------------ bitstreams v2, v3
RANS_ID = "latentstore.rans"
RANS_VERSION = 2
RANS3_ID = "latentstore.rans3"
RANS3_VERSION = 3


def _rans_chunk_layout(coder_id: str, shape: tuple, channel_axis: int) -> tuple[int, tuple[int, int, int]]:
    """A chunk of n images: n, and one image's (C, h, w) (the axes after the channel axis are h, w)."""
    if channel_axis != len(shape) - 3:
        raise ValueError(f"{coder_id}: chunks must end in (C, h, w); channel_axis {channel_axis} of shape {shape}")
    return int(np.prod(shape[:channel_axis], dtype=np.int64)), tuple(int(v) for v in shape[channel_axis:])


def _payload_end(data: bytes, off: int) -> int:
    """Where the self-delimiting v2/v3 payload starting at `off` ends (its lane index gives every lane's length;
    the two coders share the payload layout)."""
    from ..codec.bitstream import _read_varint
    K = data[off]
    pos, m, total = off + 1, 0, 0
    for k in range(K):
        v, pos = _read_varint(data, pos)
        m = v if k == 0 else m + ((v >> 1) ^ -(v & 1))  # zigzag-decoded difference to the previous lane
        total += 4 + 2 * m
    return pos + total


def _encode_rans_chunk(coder_id: str, a: np.ndarray, tables: np.ndarray, channel_axis: int) -> bytes:
    from .coders import lane_coder
    n, shape = _rans_chunk_layout(coder_id, a.shape, channel_axis)
    return b"".join(lane_coder(coder_id).encode_batch(np.asarray(a, np.uint8).reshape((n,) + shape), tables))


def _decode_rans_chunk(coder_id: str, data: bytes, tables: np.ndarray, shape: tuple, channel_axis: int) -> np.ndarray:
    from .coders import lane_coder
    n, one = _rans_chunk_layout(coder_id, shape, channel_axis)
    payloads, off = [], 0
    try:
        for _ in range(n):
            end = _payload_end(data, off)
            payloads.append(data[off:end])
            off = end
    except (IndexError, BitstreamError):
        raise ValueError(f"{coder_id}: chunk of {len(data)} bytes is truncated or corrupt (lane index)") from None
    if off != len(data):
        raise ValueError(f"{coder_id}: chunk is {len(data)} bytes, its lane indexes say {off} (truncated or corrupt)")
    return lane_coder(coder_id).decode_batch(payloads, tables, one).reshape(shape)


@dataclass(frozen=True)
class LatentRansCodec(_ChunkCodec):
    """zarr v3 array->bytes codec for bitstream v2 payloads; configuration:
    {"tables": C x (L+1) x L 12-bit counts, "channel_axis": int, "version": 2}."""

    tables: tuple
    channel_axis: int = 1
    coder_id = RANS_ID  # class constants (not fields): LatentRans3Codec differs in these alone
    coder_version = RANS_VERSION

    def __init__(self, *, tables, channel_axis: int = 1, version: int | None = None) -> None:
        if version is not None and version != self.coder_version:
            raise ValueError(f"{self.coder_id} version {version} is not supported (this package knows "
                             f"{self.coder_version})")
        from .coders import tables_from_json
        t = np.asarray(tables_from_json(tables), dtype=np.int64).tolist()  # a v3 configuration's compact form too
        object.__setattr__(self, "tables", tuple(tuple(tuple(int(v) for v in row) for row in c) for c in t))
        object.__setattr__(self, "channel_axis", int(channel_axis))

    @cached_property
    def table_array(self) -> np.ndarray:  # once per codec, not once per chunk
        return np.asarray(self.tables, dtype=np.uint16)

    def to_dict(self) -> dict:
        from .coders import lane_coder
        tables = lane_coder(self.coder_id).tables_json(self.table_array)  # v2: nested lists; v3: compact
        return {"name": self.coder_id, "configuration": {"tables": tables,
                                                         "channel_axis": self.channel_axis,
                                                         "version": self.coder_version}}

    def _encode_array(self, a: np.ndarray) -> bytes:
        return _encode_rans_chunk(self.coder_id, a, self.table_array, self.channel_axis)

    def _decode_bytes(self, data: bytes, shape) -> np.ndarray:
        return _decode_rans_chunk(self.coder_id, data, self.table_array, tuple(shape), self.channel_axis)


class LatentRans3Codec(LatentRansCodec):
    """zarr v3 array->bytes codec for bitstream v3 (`latentstore.rans3`) payloads; configuration:
    {"tables": C x (L+1)**3 x L 12-bit counts, "channel_axis": int, "version": 3}. L <= 6."""

    coder_id = RANS3_ID
    coder_version = RANS3_VERSION


class LatentRansNumcodec(_ChunkNumcodec):
    """The numcodecs twin of `latentstore.rans`."""

    codec_id = RANS_ID

    def __init__(self, tables, shape, channel_axis: int = 1):
        from .coders import lane_coder, tables_from_json
        self._tables = np.asarray(tables_from_json(tables), dtype=np.uint16)
        self.tables = lane_coder(self.codec_id).tables_json(self._tables)  # v3: the compact form
        self.shape = list(map(int, shape))
        self.channel_axis = int(channel_axis)

    def _encode_array(self, a: np.ndarray) -> bytes:
        return _encode_rans_chunk(self.codec_id, a, self._tables, self.channel_axis)

    def _decode_bytes(self, data: bytes, shape) -> np.ndarray:
        return _decode_rans_chunk(self.codec_id, data, self._tables, shape, self.channel_axis)

    def get_config(self):
        return {"id": self.codec_id, "tables": self.tables, "shape": self.shape, "channel_axis": self.channel_axis}


class LatentRans3Numcodec(LatentRansNumcodec):
    """The numcodecs twin of `latentstore.rans3`."""

    codec_id = RANS3_ID


LANE_CODECS = {RANS_ID: LatentRansCodec, RANS3_ID: LatentRans3Codec}  # a store's coder -> its zarr codec
