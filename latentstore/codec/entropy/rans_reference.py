"""The v2 rANS format written out in plain Python: slow, but it is the definition the numba and Triton
coders are tested against (bit-identical bytes and symbols). See rans_v2.py for the format."""
from __future__ import annotations

import struct

import numpy as np

from ..bitstream import _varint  # the container's LEB128 varint: one definition
from .rans_v2 import (ERRORS, MAX_LANES, PROB_BITS, PROB_SCALE, STATE_LOW, _check_shape, check_tables, cumulative,
                      lanes_for)


def _zigzag(d: int) -> int:
    return 2 * d if d >= 0 else -2 * d - 1


def lane_order(C: int, h: int, w: int, K: int, k: int) -> list[tuple[int, int, int]]:
    """(c, y, x) of lane k's symbols in decoding order."""
    return [(c, y, x) for c, x in (divmod(j, w) for j in range(k, C * w, K)) for y in range(h)]


def encode_reference(symbols: np.ndarray, tables: np.ndarray, lanes: int | None = None) -> bytes:
    """Pure-Python encoder: defines the payload format (slow; small shapes only)."""
    s = np.asarray(symbols)
    C, h, w = _check_shape(s.shape)
    L = tables.shape[-1]
    check_tables(tables, C, L)
    K = lanes_for(lanes, C, h, w)
    cum = cumulative(tables)
    lanes_out, counts = [], []
    for k in range(K):
        x, words = 0, []
        for c, y, xx in reversed(lane_order(C, h, w, K, k)):
            sym, ctx = int(s[c, y, xx]), (int(s[c, y - 1, xx]) if y else L)
            f, start = int(cum[c, ctx, sym + 1] - cum[c, ctx, sym]), int(cum[c, ctx, sym])
            if x >= f << (32 - PROB_BITS):
                words.append(x & 0xFFFF)
                x >>= 16
            x = (x // f) * PROB_SCALE + x % f + start
        lanes_out.append(struct.pack("<I", x) + struct.pack(f"<{len(words)}H", *reversed(words)))
        counts.append(len(words))
    index = bytes([K]) + _varint(counts[0]) + b"".join(_varint(_zigzag(b - a)) for a, b in zip(counts, counts[1:]))
    return index + b"".join(lanes_out)


def decode_reference(payload: bytes, tables: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Pure-Python decoder with every check of the fast ones (same messages)."""
    C, h, w = _check_shape(shape)
    L = tables.shape[-1]
    check_tables(tables, C, L)
    cum = cumulative(tables)
    p = bytes(payload)

    def fail(code, lane=0):
        raise ValueError(f"rANS payload of sample 0 is corrupt: {ERRORS[code]} (lane {lane})")

    if not p:
        fail(1)
    K, pos = p[0], 1
    if not 1 <= K <= min(MAX_LANES, C * w):
        fail(2)
    counts = []
    for k in range(K):
        v = 0
        for b in range(6):
            if b == 5 or pos >= len(p):
                fail(3, k)
            v |= (p[pos] & 0x7F) << (7 * b)
            pos += 1
            if p[pos - 1] < 0x80:
                break
        m = v if k == 0 else counts[-1] + ((v >> 1) ^ -(v & 1))
        if m < 0:
            fail(4, k)
        counts.append(m)
    if pos + sum(4 + 2 * m for m in counts) != len(p):
        fail(5)
    out = np.empty((C, h, w), dtype=np.uint8)
    for k in range(K):
        x = int.from_bytes(p[pos:pos + 4], "little")
        words = struct.unpack_from(f"<{counts[k]}H", p, pos + 4)
        pos += 4 + 2 * counts[k]
        nxt = 0
        for c, y, xx in lane_order(C, h, w, K, k):
            ctx = int(out[c, y - 1, xx]) if y else L
            row = cum[c, ctx]
            slot = x & (PROB_SCALE - 1)
            sym = int(np.searchsorted(row, slot, side="right")) - 1
            x = int(row[sym + 1] - row[sym]) * (x >> PROB_BITS) + slot - int(row[sym])
            if x < STATE_LOW and nxt < len(words):
                x = (x << 16) | words[nxt]
                nxt += 1
            out[c, y, xx] = sym
        if nxt != len(words):
            fail(6, k)
        if x != 0:
            fail(7, k)
    return out


