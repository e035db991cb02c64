"""numba kernels of `latentstore.rans3` (format: rans_v3's docstring; rans3_reference.py defines it).

The decoder here is the fallback and the reference of the SIMD one (rans3_simd.py; LATENTSTORE_RANS_ISA=numba
picks it). It is kept simple, one lane after another: the SIMD decoder is the fast path.
- Integer arithmetic in int64 only, as in rans_kernels_cpu (numba turns mixed signed/unsigned into float64).
- A symbol's table row is one uint64 of packed cumulative frequencies (rans_v3.packed_rows): the symbol is
  the count of inner cumulative frequencies <= slot, at most five comparisons at L = 6.
- Nothing is raised inside a kernel: (error code, lane) go to err, as in v2, with the reference's precedence
  (the index, then lanes in order: unread words before a wrong final state). Every loop is bounded by the
  symbol count and every read by the lane's end.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from . import rans_kernels_cpu as _v2
from .rans_kernels_cpu import _assemble, _read_index

MASK = 4095
SHIFT = 12
EMIT_SHIFT = 20
LOW = 65536


@njit(cache=True, nogil=True)
def _context(sym, base, y, x, w, up, L):
    """rans3_reference.context for the symbol at flat index base + y*w + x of one image (base: its channel)."""
    i = base + y * w + x
    above = np.int64(sym[i - w]) if up else L
    left = np.int64(sym[i - 1]) if x > 0 else L
    above_right = np.int64(sym[i - w + 1]) if up and x + 1 < w else L
    return (above * (L + 1) + left) * (L + 1) + above_right


# ----------------------------------------------------------------------------------- encode
@njit(cache=True, nogil=True)
def _encode_image(sym, cum, L, C, h, w, K, words, counts, states):
    """One (C*h*w,) image -> per-lane word stacks words[k, :counts[k]] (emission order) and final states.
    Each lane backwards: its rows last to first, each right to left. x // f in float64 is exact (see
    rans_kernels_cpu._encode_image)."""
    R = C * h
    nctx = (L + 1) * (L + 1) * (L + 1)
    for k in range(K):
        r0 = k * R // K
        r1 = (k + 1) * R // K
        n = 0
        x = np.int64(0)
        for r in range(r1 - 1, r0 - 1, -1):
            c = r // h
            y = r - c * h
            up = r > r0 and y > 0
            base = c * h * w
            for xx in range(w - 1, -1, -1):
                s = np.int64(sym[base + y * w + xx])
                t = (c * nctx + _context(sym, base, y, xx, w, up, L)) * (L + 1)
                lo = cum[t + s]
                f = cum[t + s + 1] - lo
                if x >= (f << EMIT_SHIFT):
                    words[k, n] = x & 0xFFFF
                    n += 1
                    x >>= 16
                q = np.int64(np.float64(x) / np.float64(f))
                x = q * (MASK + 1) + (x - q * f) + lo
        counts[k] = n
        states[k] = x


@njit(cache=True, nogil=True)
def encode_range(symbols, cum, L, K, out, lengths, i0, i1):
    """symbols (N, C, h, w) uint8 -> out[i, :lengths[i]] payloads for images i0..i1-1."""
    N, C, h, w = symbols.shape
    lane_cap = ((C * h + K - 1) // K) * w  # at most one word per symbol
    words = np.empty((K, lane_cap), np.uint16)
    counts = np.empty(K, np.int64)
    states = np.empty(K, np.int64)
    for i in range(i0, i1):
        _encode_image(symbols[i].ravel(), cum, L, C, h, w, K, words, counts, states)
        lengths[i] = _assemble(K, words, counts, states, out[i])


def encode_batch(symbols: np.ndarray, cum: np.ndarray, L: int, K: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, h, w) uint8 -> (buffer (N, cap) uint8, lengths (N,) int64), in v2's buffers (same layout)."""
    return _v2.encode_batch(symbols, cum, L, K, encode_range)


# ----------------------------------------------------------------------------------- decode
@njit(cache=True, nogil=True)
def _decode_image(data, packed, L, C, h, w, K, ptr, end, state, out, o):
    """Decode one image's K lanes into out[o : o + C*h*w]; returns (code, lane) of the first bad lane."""
    R = C * h
    nctx = (L + 1) * (L + 1) * (L + 1)
    for k in range(K):
        r0 = k * R // K
        r1 = (k + 1) * R // K
        x = state[k]
        p = ptr[k]
        e = end[k]
        for r in range(r0, r1):
            c = r // h
            y = r - c * h
            up = r > r0 and y > 0
            base = o + c * h * w
            for xx in range(w):
                row = np.int64(packed[c * nctx + _context(out, base, y, xx, w, up, L)])
                slot = x & MASK
                s = np.int64(0)
                lo = np.int64(0)
                hi = np.int64(MASK + 1)
                for i in range(1, L):  # the cumulative frequencies are increasing: stop at the first > slot
                    v = (row >> (SHIFT * (i - 1))) & MASK
                    if v <= slot:
                        s = i
                        lo = v
                    else:
                        hi = v
                        break
                x = (hi - lo) * (x >> SHIFT) + slot - lo
                if x < LOW and p < e:
                    x = (x << 16) | np.int64(data[p]) | (np.int64(data[p + 1]) << 8)
                    p += 2
                out[base + y * w + xx] = s
        if p != e:
            return 6, k
        if x != 0:
            return 7, k
    return 0, 0


@njit(cache=True, nogil=True)
def decode_range(data, offsets, packed, L, C, h, w, out, err, i0, i1):
    """Payloads i0..i1-1 (data[offsets[i]:offsets[i+1]]) -> out[i*C*h*w ...] (flat uint8); err[i] = (code, lane)."""
    n = C * h * w
    ptr = np.empty(255, np.int64)
    end = np.empty(255, np.int64)
    state = np.empty(255, np.int64)
    for i in range(i0, i1):
        K, code, lane = _read_index(data, offsets[i], offsets[i + 1], C * h, ptr, end, state, 0)
        if code == 0:
            code, lane = _decode_image(data, packed, L, C, h, w, K, ptr, end, state, out, i * n)
        err[i, 0] = code
        err[i, 1] = lane
