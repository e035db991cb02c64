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
            x = encode_symbol(x, words, cum[c, int(s[c, y - 1, xx]) if y else L], int(s[c, y, xx]))
        lanes_out.append(lane_bytes(x, words))
        counts.append(len(words))
    return assemble(lanes_out, counts)


def encode_symbol(x: int, words: list[int], row: np.ndarray, sym: int) -> int:
    """One encoder step (v2 and v3): push `sym` under cumulative row `row` (L+1 starts) onto state x, first
    emitting x's low word into `words` when x would pass 32 bits. Returns the new state."""
    f, start = int(row[sym + 1] - row[sym]), int(row[sym])
    if x >= f << (32 - PROB_BITS):
        words.append(x & 0xFFFF)
        x >>= 16
    return (x // f) * PROB_SCALE + x % f + start


def decode_symbol(x: int, row: np.ndarray, words, nxt: int) -> tuple[int, int, int]:
    """One decoder step (v2 and v3): (symbol, new state, words read so far) under cumulative row `row`; a word
    is read only while the lane has one left."""
    slot = x & (PROB_SCALE - 1)
    sym = int(np.searchsorted(row, slot, side="right")) - 1
    x = int(row[sym + 1] - row[sym]) * (x >> PROB_BITS) + slot - int(row[sym])
    if x < STATE_LOW and nxt < len(words):
        x = (x << 16) | words[nxt]
        nxt += 1
    return sym, x, nxt


def lane_bytes(state: int, words: list[int]) -> bytes:
    """A lane as the payload holds it: the final encoder state, then its words in reading order (emission
    order reversed)."""
    return struct.pack("<I", state) + struct.pack(f"<{len(words)}H", *reversed(words))


def assemble(lanes: list[bytes], counts: list[int]) -> bytes:
    """K, the lane index (varint word counts, zigzag differences after the first), then the lanes (v2 and v3)."""
    deltas = b"".join(_varint(_zigzag(b - a)) for a, b in zip(counts, counts[1:]))
    return bytes([len(lanes)]) + _varint(counts[0]) + deltas + b"".join(lanes)


def fail(code: int, lane: int = 0):
    raise ValueError(f"rANS payload of sample 0 is corrupt: {ERRORS[code]} (lane {lane})")


def read_lane(p: bytes, pos: int, m: int) -> tuple[int, tuple[int, ...], int]:
    """The lane at `pos` with m words: (its initial decoder state, its words in reading order, where it ends)."""
    return int.from_bytes(p[pos:pos + 4], "little"), struct.unpack_from(f"<{m}H", p, pos + 4), pos + 4 + 2 * m


def check_lane_end(read: int, words, x: int, k: int) -> None:
    """A decoded lane must have read every word (else code 6) and end in state 0 (else code 7)."""
    if read != len(words):
        fail(6, k)
    if x != 0:
        fail(7, k)


def parse_index(p: bytes, max_lanes: int) -> tuple[list[int], int]:
    """The lane index of payload `p` with every check (v2 and v3 share it): (word counts per lane, where lane 0
    starts); K must be in 1..max_lanes."""
    if not p:
        fail(1)
    K, pos = p[0], 1
    if not 1 <= K <= min(MAX_LANES, max_lanes):
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
    return counts, pos


def decode_reference(payload: bytes, tables: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Pure-Python decoder with every check of the fast ones (same messages)."""
    C, h, w = _check_shape(shape)
    L = tables.shape[-1]
    check_tables(tables, C, L)
    cum = cumulative(tables)
    p = bytes(payload)
    counts, pos = parse_index(p, C * w)
    K = len(counts)
    out = np.empty((C, h, w), dtype=np.uint8)
    for k in range(K):
        x, words, pos = read_lane(p, pos, counts[k])
        nxt = 0
        for c, y, xx in lane_order(C, h, w, K, k):
            out[c, y, xx], x, nxt = decode_symbol(x, cum[c, int(out[c, y - 1, xx]) if y else L], words, nxt)
        check_lane_end(nxt, words, x, k)
    return out


