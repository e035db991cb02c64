"""The v3 rANS format (`latentstore.rans3`) written out in plain Python: slow, but it is the definition the
numba, SIMD and Triton coders are tested against (bit-identical bytes and symbols). See rans_v3.py."""
from __future__ import annotations

import struct

import numpy as np

from ..bitstream import _varint  # the container's LEB128 varint: one definition
from .rans_reference import _zigzag
from .rans_v2 import ERRORS, MAX_LANES, PROB_BITS, PROB_SCALE, STATE_LOW, _check_shape
from .rans_v3 import check_tables, cumulative, lane_rows, lanes_for


def lane_order(C: int, h: int, w: int, K: int, k: int) -> list[tuple[int, int, int, bool]]:
    """(c, y, x, above_in_lane) of lane k's symbols in decoding order: its rows, each left to right."""
    b = lane_rows(C, h, K)
    return [(r // h, r % h, x, r > b[k] and r % h > 0) for r in range(int(b[k]), int(b[k + 1])) for x in range(w)]


def context(s: np.ndarray, c: int, y: int, x: int, above_in_lane: bool, L: int) -> int:
    """The context index of symbol (c, y, x), from already coded neighbours of `s` (rans_v3's docstring)."""
    w = s.shape[2]
    above = int(s[c, y - 1, x]) if above_in_lane else L
    left = int(s[c, y, x - 1]) if x else L
    above_right = int(s[c, y - 1, x + 1]) if above_in_lane and x + 1 < w else L
    return (above * (L + 1) + left) * (L + 1) + above_right


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
        for c, y, xx, up in reversed(lane_order(C, h, w, K, k)):
            sym, ctx = int(s[c, y, xx]), context(s, c, y, xx, up, L)
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
    """Pure-Python decoder with every check of the fast ones (same messages and error codes as v2)."""
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
    if not 1 <= K <= min(MAX_LANES, C * h):
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
    out = np.zeros((C, h, w), dtype=np.uint8)
    for k in range(K):
        x = int.from_bytes(p[pos:pos + 4], "little")
        words = struct.unpack_from(f"<{counts[k]}H", p, pos + 4)
        pos += 4 + 2 * counts[k]
        nxt = 0
        for c, y, xx, up in lane_order(C, h, w, K, k):
            row = cum[c, context(out, c, y, xx, up, L)]
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
