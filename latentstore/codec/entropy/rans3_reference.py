"""The v3 rANS format (`latentstore.rans3`) written out in plain Python: slow, but it is the definition the
numba, SIMD and Triton coders are tested against (bit-identical bytes and symbols). See rans_v3.py."""
from __future__ import annotations

import numpy as np

from .rans_reference import (assemble, check_lane_end, decode_symbol, encode_symbol, lane_bytes, parse_index,
                             read_lane)
from .rans_v2 import _check_shape
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
            x = encode_symbol(x, words, cum[c, context(s, c, y, xx, up, L)], int(s[c, y, xx]))
        lanes_out.append(lane_bytes(x, words))
        counts.append(len(words))
    return assemble(lanes_out, counts)


def decode_reference(payload: bytes, tables: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Pure-Python decoder with every check of the fast ones (v2's lane index checks, same messages and codes)."""
    C, h, w = _check_shape(shape)
    L = tables.shape[-1]
    check_tables(tables, C, L)
    cum = cumulative(tables)
    p = bytes(payload)
    counts, pos = parse_index(p, C * h)
    K = len(counts)
    out = np.zeros((C, h, w), dtype=np.uint8)
    for k in range(K):
        x, words, pos = read_lane(p, pos, counts[k])
        nxt = 0
        for c, y, xx, up in lane_order(C, h, w, K, k):
            out[c, y, xx], x, nxt = decode_symbol(x, cum[c, context(out, c, y, xx, up, L)], words, nxt)
        check_lane_end(nxt, words, x, k)
    return out
