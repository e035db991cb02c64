"""`latentstore.ans`: entropy-coded latent symbols as a zarr v3 array->bytes codec, and its numcodecs twin.

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

import numpy as np
from numcodecs.abc import Codec as NumcodecsCodec
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.buffer import Buffer, NDBuffer

from ..codec.entropy.ans_v1 import decode_words, encode_words

CODEC_ID = "latentstore.ans"
CODEC_VERSION = 1


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
class LatentANSCodec(ArrayBytesCodec):
    """zarr v3 array->bytes codec; configuration: {"freqs": C x L ints, "channel_axis": int, "version": 1}."""

    is_fixed_size = False
    freqs: tuple
    channel_axis: int = 1

    def __init__(self, *, freqs, channel_axis: int = 1, version: int = CODEC_VERSION) -> None:
        if version != CODEC_VERSION:
            raise ValueError(f"{CODEC_ID} version {version} is not supported (this package knows {CODEC_VERSION})")
        object.__setattr__(self, "freqs", tuple(tuple(int(v) for v in row) for row in freqs))
        object.__setattr__(self, "channel_axis", int(channel_axis))

    @property
    def freq_array(self) -> np.ndarray:
        return np.asarray(self.freqs, dtype=np.int64)

    @classmethod
    def from_dict(cls, data: dict):
        cfg = dict(data.get("configuration", {}))
        return cls(**cfg)

    def to_dict(self) -> dict:
        return {"name": CODEC_ID, "configuration": {"freqs": [list(r) for r in self.freqs],
                                                    "channel_axis": self.channel_axis, "version": CODEC_VERSION}}

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec) -> NDBuffer:
        a = _decode_chunk(chunk_bytes.to_bytes(), self.freq_array, chunk_spec.shape, self.channel_axis)
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(a)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec) -> NDBuffer:
        return self._decode_sync(chunk_bytes, chunk_spec)

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec) -> Buffer | None:
        data = _encode_chunk(chunk_array.as_numpy_array(), self.freq_array, self.channel_axis)
        return chunk_spec.prototype.buffer.from_bytes(data)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec) -> Buffer | None:
        return self._encode_sync(chunk_array, chunk_spec)

    def compute_encoded_size(self, input_byte_length: int, _chunk_spec) -> int:
        raise NotImplementedError  # variable size


class LatentANSNumcodec(NumcodecsCodec):
    """The numcodecs twin (zarr v2 / plain numcodecs users). Needs the chunk shape, so it stores it."""

    codec_id = CODEC_ID

    def __init__(self, freqs, shape, channel_axis: int = 1):
        self.freqs = [list(map(int, r)) for r in freqs]
        self.shape = list(map(int, shape))
        self.channel_axis = int(channel_axis)

    def encode(self, buf):
        a = np.asarray(buf, dtype=np.uint8).reshape(self.shape)
        return _encode_chunk(a, np.asarray(self.freqs), self.channel_axis)

    def decode(self, buf, out=None):
        a = _decode_chunk(bytes(buf), np.asarray(self.freqs), tuple(self.shape), self.channel_axis)
        if out is not None:
            np.copyto(np.asarray(out).reshape(a.shape), a)
            return out
        return a

    def get_config(self):
        return {"id": CODEC_ID, "freqs": self.freqs, "shape": self.shape, "channel_axis": self.channel_axis}
