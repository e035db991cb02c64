"""`latentstore.rans3` (bitstream v3): v2's interleaved rANS with a three-neighbour context.

Why: on the codec programme's latents, conditioning each symbol on the symbols above, left and above-right
instead of the one above alone saves 17.6% / 12.0% / 10.4% of v2's bits at ls-c8 / ls-c16 / ls-c32 (ideal
bits, tables fitted on the training photos, measured on the validation photos at 512 px: issue 29's rule is
>= 10%; benchmarks/context_whatif.py). The real coder's saving is measured by benchmarks/rans.py --v3.

Coder: v2's exactly (rans_v2's docstring): 32-bit state starting at 0, 16-bit renormalisation, 12-bit
frequencies, at most one word per symbol, the same payload layout (K, the varint lane index, then each lane's
final state and words). Only the symbol order and the context differ.

Lanes. The C*h rows of the latent, channel-major (row r = (c, y) = divmod(r, h)), are split into K contiguous
runs: lane k codes rows [k*R//K, (k+1)*R//K), R = C*h, each row left to right. So a lane has every neighbour
a symbol needs in its own past and the lanes stay independent (v2's column lanes could not give a left
neighbour without making lanes wait on each other). K defaults to v2's choice (16/8/4 at C = 32/16/8, fewer
for small latents), so a lane holds whole channels when K divides C and no context is lost at lane starts.

Context of symbol (c, y, x) in a lane whose first row is r0:
    above       (c, y-1, x)    if y >= 1 and row (c, y-1) is in this lane (r - 1 >= r0), else L ('none')
    left        (c, y, x-1)    if x >= 1, else L
    above-right (c, y-1, x+1)  if above exists and x + 1 < w, else L
    ctx = (above * (L+1) + left) * (L+1) + above_right, one of (L+1)**3
tables: (C, (L+1)**3, L) uint16, each row sums to 4096, every entry >= 1 (fit_tables; 343 rows a channel at
L = 6). Alphabets: L <= 6 (MAX_L), so that a row's five inner cumulative frequencies pack into one 64-bit word
(packed_rows): the SIMD and GPU decoders load one word per symbol and find the symbol by comparisons, where
v2's per-slot decoding tables would take 90 MB here.

Implementations, bit-identical: rans3_reference.py (pure Python: defines the format), the numba kernels in
rans3_kernels_cpu.py (encode, decode; the fallback decoder), the SIMD C decoder (_rans3_simd.c through
rans3_simd.py) and the Triton decoder (latentstore_kernels.rans3).
"""
from __future__ import annotations

import sys
from functools import lru_cache

import numpy as np

from .registry import register
from .rans_v2 import (MAX_LANES, MIN_LANE_SYMBOLS, PROB_SCALE, LaneRansCoder, _as_batch, _check_shape,
                      encode_in_chunks, over_ranges, pack_payloads, quantize_row, raise_errors)

MAX_L = 6  # a row's L-1 inner cumulative frequencies (12 bits each) fit one uint64
NEIGHBOURS = 3


def n_contexts(L: int) -> int:
    return (L + 1) ** NEIGHBOURS


# ----------------------------------------------------------------------------------- tables
def check_tables(tables: np.ndarray, C: int, L: int) -> None:
    """Raise ValueError naming the first problem unless `tables` is a valid (C, (L+1)**3, L) table."""
    t = np.asarray(tables)
    if not 1 <= L <= MAX_L:
        raise ValueError(f"rans3 codes alphabets of at most {MAX_L} symbols, got L = {L} (use latentstore.rans)")
    if t.shape != (C, n_contexts(L), L):
        raise ValueError(f"rans3 tables have shape {t.shape}, expected (C, (L+1)**3, L) = {(C, n_contexts(L), L)}")
    if not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"rans3 tables have dtype {t.dtype}, expected an integer type (uint16)")
    bad = np.argwhere((t < 1) | (t > PROB_SCALE))
    if len(bad):
        c, ctx, s = bad[0]
        raise ValueError(f"rans3 table for channel {c} context {ctx} gives symbol {s} frequency {t[c, ctx, s]}, "
                         f"not in 1..{PROB_SCALE}")
    sums = t.astype(np.int64).sum(-1)
    bad = np.argwhere(sums != PROB_SCALE)
    if len(bad):
        c, ctx = bad[0]
        raise ValueError(f"rans3 table for channel {c} context {ctx} sums to {sums[c, ctx]}, not {PROB_SCALE}")


def lane_rows(C: int, h: int, K: int) -> np.ndarray:
    """(K+1,) int64 row bounds: lane k codes rows [bounds[k], bounds[k+1]) of the C*h channel-major rows."""
    R = C * h
    return np.array([k * R // K for k in range(K + 1)], dtype=np.int64)


def default_lanes(C: int, h: int, w: int) -> int:
    """v2's K (C // 2, at most 16, fewer for small latents), at most one lane per row."""
    return max(1, min(16, max(1, C // 2), max(1, C * h * w // MIN_LANE_SYMBOLS), C * h, MAX_LANES))


def lanes_for(lanes: int | None, C: int, h: int, w: int) -> int:
    K = default_lanes(C, h, w) if lanes is None else int(lanes)
    if not 1 <= K <= min(MAX_LANES, C * h):
        raise ValueError(f"rans3 lanes={K} out of range: 1..{min(MAX_LANES, C * h)} for shape {(C, h, w)}")
    return K


def contexts(symbols: np.ndarray, L: int, lanes: int | None = None) -> np.ndarray:
    """(N, C, h, w) or (C, h, w) symbols -> the context index of every symbol (same shape, int64), as the
    coder with `lanes` lanes (default_lanes when None) sees them. Numpy: defines what the kernels count."""
    s = _as_batch(symbols).astype(np.int64)
    N, C, h, w = s.shape
    K = lanes_for(lanes, C, h, w)
    above = np.full(s.shape, L, np.int64)
    above[:, :, 1:, :] = s[:, :, :-1, :]
    above_right = np.full(s.shape, L, np.int64)
    above_right[:, :, 1:, :-1] = s[:, :, :-1, 1:]
    starts = lane_rows(C, h, K)[:-1]  # a lane's first row has no row above it in the lane
    cs, ys = np.divmod(starts, h)
    above[:, cs, ys, :] = L
    above_right[:, cs, ys, :] = L
    left = np.full(s.shape, L, np.int64)
    left[:, :, :, 1:] = s[:, :, :, :-1]
    return (above * (L + 1) + left) * (L + 1) + above_right


def context_counts(symbols: np.ndarray, L: int, lanes: int | None = None) -> np.ndarray:
    """(N, C, h, w) or (C, h, w) symbols -> (C, (L+1)**3, L) int64 counts of (channel, context, symbol)."""
    s = _as_batch(symbols)
    if s.ndim != 4:
        raise ValueError(f"symbols have shape {s.shape}, expected (N, C, h, w) or (C, h, w)")
    if s.size and (int(s.min()) < 0 or int(s.max()) >= L):
        raise ValueError(f"symbols out of range: [{int(s.min())}, {int(s.max())}] for L = {L}")
    C, n = s.shape[1], n_contexts(L)
    idx = (np.arange(C)[None, :, None, None] * n + contexts(s, L, lanes)) * L + s
    return np.bincount(idx.ravel(), minlength=C * n * L).reshape(C, n, L)


def tables_from_counts(counts: np.ndarray, prior: float = 1.0) -> np.ndarray:
    """(C, (L+1)**3, L) counts -> tables: counts plus `prior` pseudo-counts spread like the channel's overall
    histogram (a rare context borrows its channel's shape), then the likelihood-maximising 12-bit rounding.
    The same rule as rans_v2.tables_from_counts; the context-free estimate is what a rare context falls to."""
    counts = np.asarray(counts, dtype=np.float64)
    marg = counts.sum(1, keepdims=True) + 1e-9
    weights = counts + prior * marg / marg.sum(-1, keepdims=True)
    out = np.empty(counts.shape, dtype=np.uint16)
    for c in range(counts.shape[0]):
        for t in range(counts.shape[1]):
            out[c, t] = quantize_row(weights[c, t])
    return out


def fit_tables(symbols: np.ndarray, L: int, prior: float = 1.0) -> np.ndarray:
    """(N, C, h, w) uint8 symbols -> (C, (L+1)**3, L) uint16 tables (deterministic)."""
    return tables_from_counts(context_counts(symbols, L), prior)


def ideal_bits(symbols: np.ndarray, tables: np.ndarray, lanes: int | None = None) -> float:
    """-sum log2(freq / 4096) of (C, h, w) or (N, C, h, w) symbols under the context model."""
    s = _as_batch(symbols).astype(np.int64)
    L = tables.shape[-1]
    f = np.asarray(tables, dtype=np.float64)[np.arange(s.shape[1])[None, :, None, None], contexts(s, L, lanes), s]
    return float(-np.log2(f / PROB_SCALE).sum())


def cumulative(tables: np.ndarray) -> np.ndarray:
    """(C, n, L) frequencies -> (C, n, L+1) int64 cumulative starts (cum[..., L] = 4096)."""
    t = np.asarray(tables, dtype=np.int64)
    return np.concatenate([np.zeros(t.shape[:-1] + (1,), np.int64), np.cumsum(t, -1)], -1)


def packed_rows(tables: np.ndarray) -> np.ndarray:
    """(C, n, L) frequencies -> (C*n,) uint64: cum[1..L-1] of each row, 12 bits each, cum[i] at bit 12*(i-1).
    What the SIMD and GPU decoders load: symbol s = #{i : cum[i] <= slot}, cum[0] = 0 and cum[L] = 4096."""
    cum = cumulative(tables).reshape(-1, tables.shape[-1] + 1).astype(np.uint64)
    out = np.zeros(cum.shape[0], dtype=np.uint64)
    for i in range(1, tables.shape[-1]):
        out |= cum[:, i] << np.uint64(12 * (i - 1))
    return out


@lru_cache(maxsize=8)
def _prepared_cached(raw: bytes, shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    t = np.frombuffer(raw, dtype=np.uint16).reshape(shape)
    check_tables(t, shape[0], shape[2])
    return np.ascontiguousarray(cumulative(t).ravel()), packed_rows(t)


def prepared(tables: np.ndarray, C: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Checked flat cumulative table, packed rows (cached per table content), and L."""
    t = np.asarray(tables)
    if t.ndim != 3 or t.shape[0] != C or t.shape[1] != n_contexts(t.shape[2]):
        raise ValueError(f"rans3 tables have shape {t.shape}, expected (C, (L+1)**3, L) with C = {C}")
    if t.dtype != np.uint16 and (not np.issubdtype(t.dtype, np.integer) or t.min() < 0 or t.max() > 0xFFFF):
        check_tables(t, C, t.shape[2])  # raises the precise message
    cum, packed = _prepared_cached(np.ascontiguousarray(t, dtype=np.uint16).tobytes(), t.shape)
    return cum, packed, t.shape[2]


# ------------------------------------------------------------------------ numba-backed API
def encode(symbols: np.ndarray, tables: np.ndarray, lanes: int | None = None) -> bytes:
    """(C, h, w) uint8 symbols -> payload bytes."""
    return encode_batch(np.asarray(symbols)[None], tables, lanes)[0]


def decode(payload: bytes, tables: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """payload -> (C, h, w) uint8; damage raises ValueError."""
    return decode_batch([payload], tables, shape)[0]


def encode_batch(symbols: np.ndarray, tables: np.ndarray, lanes: int | None = None,
                 threads: int = 1) -> list[bytes]:
    """(N, C, h, w) uint8 symbols -> N payloads (deterministic)."""
    from . import rans3_kernels_cpu as kc
    s = np.ascontiguousarray(symbols, dtype=np.uint8)
    if s.ndim != 4:
        raise ValueError(f"encode_batch wants (N, C, h, w) symbols, got shape {s.shape}")
    if s.shape[0] == 0:
        return []
    C, h, w = _check_shape(s.shape[1:])
    cum, _, L = prepared(tables, C)
    if s.max() >= L:
        raise ValueError(f"rans3 symbols must be < L = {L}, got {int(s.max())}")
    return encode_in_chunks(kc.encode_batch, s, cum, L, lanes_for(lanes, C, h, w), threads)


def decode_batch(payloads: list[bytes], tables: np.ndarray, shape: tuple[int, int, int],
                 threads: int = 1) -> np.ndarray:
    """N payloads of one shape -> (N, C, h, w) uint8. The decoder: rans3_simd (the SIMD C extension, or
    numba without it; LATENTSTORE_RANS_ISA, as for v2)."""
    from . import rans3_simd as dec
    isa = dec.chosen_isa()
    C, h, w = _check_shape(shape)
    _, packed, L = prepared(tables, C)
    data, offsets = pack_payloads(payloads)
    N = len(payloads)
    out = np.empty((N, C, h, w), dtype=np.uint8)
    err = np.zeros((N, 2), dtype=np.int64)
    over_ranges(dec.decode_range, (data, offsets, packed, L, C, h, w, out, err), N, threads, isa)
    raise_errors(err)
    return out


# ----------------------------------------------------------------------- the registered coder
RANS_V3 = register(LaneRansCoder("latentstore.rans3", 3, sys.modules[__name__]))  # tables: (C, (L+1)**3, L)

__all__ = ["MAX_L", "n_contexts", "check_tables", "lane_rows", "default_lanes", "lanes_for", "contexts",
           "context_counts", "tables_from_counts", "fit_tables", "ideal_bits", "cumulative", "packed_rows",
           "prepared", "encode", "decode", "encode_batch", "decode_batch"]
