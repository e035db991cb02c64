"""Entropy coders by id: the codec, the bitstream and the stores find their coder here.

A coder turns (C, h, w) uint8 symbols into payload bytes and back, under `tables` it knows how to
read (for `latentstore.ans`: a (C, L) int64 count table). Each coder also names the bitstream
version its payload travels in, so a reader can pick the coder from a bitstream's header alone.
A new coder is one new module that calls `register`; no caller changes.
"""
from __future__ import annotations

import numpy as np

from ...errors import BitstreamError, UsageError


class EntropyCoder:
    """Interface of an entropy coder; subclasses implement encode/decode (batch versions default to loops)."""

    id: str = ""  # registry key, also the zarr codec name ("latentstore.ans")
    bitstream_version: int = 0  # the bitstream version byte that carries this coder's payloads

    def encode(self, symbols: np.ndarray, tables) -> bytes:
        """(C, h, w) uint8 -> payload bytes."""
        raise NotImplementedError

    def decode(self, payload: bytes, tables, shape: tuple[int, int, int]) -> np.ndarray:
        """payload -> (C, h, w) uint8; damage raises BitstreamError."""
        raise NotImplementedError

    def encode_batch(self, symbols: np.ndarray, tables) -> list[bytes]:
        """(N, C, h, w) uint8 -> N payloads."""
        return [self.encode(s, tables) for s in symbols]

    def decode_batch(self, payloads: list[bytes], tables, shape: tuple[int, int, int]) -> np.ndarray:
        """N payloads of one shape -> (N, C, h, w) uint8."""
        out = np.empty((len(payloads),) + tuple(shape), np.uint8)
        for i, p in enumerate(payloads):
            out[i] = self.decode(p, tables, shape)
        return out

    def ideal_bits(self, symbols: np.ndarray, tables) -> float:
        """-sum log2 p(symbol) under `tables`: what an ideal coder with this model would spend."""
        raise NotImplementedError


_BY_ID: dict[str, EntropyCoder] = {}
_BY_VERSION: dict[int, EntropyCoder] = {}


def register(coder: EntropyCoder) -> EntropyCoder:
    if coder.id in _BY_ID or coder.bitstream_version in _BY_VERSION:
        raise ValueError(f"entropy coder {coder.id!r} / bitstream v{coder.bitstream_version} registered twice")
    _BY_ID[coder.id] = coder
    _BY_VERSION[coder.bitstream_version] = coder
    return coder


def get_coder(coder_id: str) -> EntropyCoder:
    try:
        return _BY_ID[coder_id]
    except KeyError:
        raise UsageError(f"unknown entropy coder {coder_id!r} (known: {', '.join(sorted(_BY_ID))})") from None


def coder_for_version(version: int) -> EntropyCoder:
    try:
        return _BY_VERSION[version]
    except KeyError:
        raise BitstreamError(f"bitstream version {version} is not supported (this reader knows "
                             f"{', '.join(str(v) for v in sorted(_BY_VERSION))})") from None


def coder_ids() -> list[str]:
    return sorted(_BY_ID)
