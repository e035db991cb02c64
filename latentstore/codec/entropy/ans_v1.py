"""`latentstore.ans` (bitstream v1): constriction's ANS, one static categorical model per channel.

Tables: (C, L) int64 symbol counts; each row is normalised in float64 (exact and portable).
Payload: the ANS coder's uint32 words, little-endian. ANS is a stack, so channels are pushed in
reverse and popped in order. Kept bit-exact forever: every v1 store and bitstream decodes with it.
"""
from __future__ import annotations

from functools import lru_cache

import constriction
import numpy as np

from ...errors import BitstreamError
from .registry import EntropyCoder, register


def channel_models(freqs: np.ndarray) -> list:
    """One categorical per channel. Cached per table: building C models costs more than decoding a small image."""
    freqs = np.ascontiguousarray(freqs, dtype=np.int64)
    return _models_cached(freqs.tobytes(), freqs.shape)


@lru_cache(maxsize=32)
def _models_cached(raw: bytes, shape: tuple) -> list:
    f = np.frombuffer(raw, dtype=np.int64).reshape(shape).astype(np.float64)
    return [constriction.stream.model.Categorical(row / row.sum(), perfect=False) for row in f]


def encode_words(symbols: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    """(C, ...) uint8 -> uint32 words."""
    models = channel_models(freqs)
    coder = constriction.stream.stack.AnsCoder()
    flat = symbols.reshape(symbols.shape[0], -1).astype(np.int32)
    for c in reversed(range(flat.shape[0])):
        coder.encode_reverse(flat[c], models[c])
    return coder.get_compressed().astype("<u4")


def decode_words(words: np.ndarray, freqs: np.ndarray, shape: tuple) -> np.ndarray:
    """uint32 words -> symbols of `shape` (channel axis first)."""
    C = shape[0]
    n = int(np.prod(shape[1:]))
    models = channel_models(freqs)
    coder = constriction.stream.stack.AnsCoder(np.asarray(words, dtype=np.uint32))
    out = np.empty((C, n), dtype=np.uint8)
    for c in range(C):
        out[c] = coder.decode(models[c], n)
    if not coder.is_empty():
        raise BitstreamError("bitstream has trailing data after the last symbol (corrupt or wrong codec)")
    return out.reshape(shape)


def cross_entropy_bits(symbols: np.ndarray, freqs: np.ndarray) -> float:
    """-sum log2 p(symbol) under the per-channel model."""
    p = np.asarray(freqs, dtype=np.float64)
    p = p / p.sum(1, keepdims=True)
    C = symbols.shape[0]
    flat = symbols.reshape(C, -1).astype(np.int64)
    return float(-np.log2(p[np.arange(C)[:, None], flat]).sum())


class AnsV1Coder(EntropyCoder):
    id = "latentstore.ans"
    bitstream_version = 1

    def encode(self, symbols: np.ndarray, tables) -> bytes:
        return encode_words(symbols, tables).tobytes()

    def decode(self, payload: bytes, tables, shape) -> np.ndarray:
        if len(payload) % 4:
            raise BitstreamError(f"ANS payload of {len(payload)} bytes is not whole 32-bit words")
        return decode_words(np.frombuffer(payload, dtype="<u4"), tables, tuple(shape))

    def ideal_bits(self, symbols: np.ndarray, tables) -> float:
        return cross_entropy_bits(symbols, tables)


ANS_V1 = register(AnsV1Coder())
