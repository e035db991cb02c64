"""`latentstore.rans` (bitstream v2): interleaved static rANS with an 'above' context model.

Why: v1 (constriction ANS, one model per channel) decodes one long serial stream per image, at
~0.36 ms per 32x32x32 sample, and cannot run on a GPU. v2 splits each image into K independent
lanes whose byte ranges the payload lists, so K decoders (CPU instruction-level parallelism, or
one GPU lane each) run at once, and conditions every symbol on the one above it, which costs
fewer bytes than v1 on real latents (numbers: benchmarks/rans.py).

Coder. rANS with a 32-bit state x, 16-bit renormalisation and 12-bit frequencies (M = 4096):
    decode: slot = x & 4095; s = the symbol with cum[s] <= slot < cum[s+1];
            x = f[s] * (x >> 12) + slot - cum[s]; if x < 2**16 and the lane has words left:
            x = (x << 16) | next u16 word.
    encode (reverse order): if x >= f[s] << 20: emit x & 0xFFFF, x >>= 16;
            x = (x // f[s]) * 4096 + x % f[s] + cum[s].
At most one word per symbol. Every lane's encoder starts at x = 0, not the usual 2**16: that
saves 2 bytes per lane, and the decoder stays exact because it reads a word only while the lane
has words left (before the encoder's first emission no word exists, afterwards x >= 2**16 always
holds). A decoded lane must end with x == 0 and every word read.

Context model. Symbol (c, y, x) is coded with table row tables[c, ctx] where ctx is the symbol
(c, y-1, x) above it, or ctx = L ('none') in row 0. tables: (C, L+1, L) uint16, each row sums to
exactly 4096, every entry >= 1 (any symbol stays codable). fit_tables builds them from data.

Lanes. The C*w columns (channel c, column x) are numbered j = c*w + x; column j belongs to lane
j % K (round-robin, so each lane samples every channel: lanes carry similar bit counts and end
together). A lane codes its columns in increasing j, each column top to bottom (y = 0..h-1), so a
symbol's context is the lane's previous symbol (or 'none' at a column's top) and the lanes are
fully independent. Decoding the lanes in lockstep (the CPU kernel, and the GPU, one lane per
thread) has lanes 0..K-1 working on columns j..j+K-1 at once: neighbouring columns, mostly of one
channel, so the tables in use at any moment are one channel's (C-fold smaller working set).
K defaults to default_lanes(C, h, w): 16/8/4 lanes at C = 32/16/8 (C // 2, at most 16), shrunk so
every lane codes at least MIN_LANE_SYMBOLS symbols, and at most C*w (each lane owns >= 1 column)
and 255. Why those: each lane costs ~2 bytes (index byte, ~1 byte of unused final state), ~0.45%
of a 256-px ls-c32 image at K = 16; the CPU decoder runs eight lanes at once, so K >= 8 is as fast
as it gets there, and a GPU wants as many lanes as possible (measured: benchmarks/rans.py).

Payload byte layout (all little-endian; m_k = number of renormalisation words in lane k):
    K        u8                     1..min(255, C*w)
    m_0      varint                 LEB128 (7 bits per byte, low first, high bit = more), <= 5 bytes
    d_k      varint, k = 1..K-1     zigzag(m_k - m_{k-1}) (zigzag(d) = 2d, or -2d-1 if d < 0): lanes
                                    are balanced, so usually 1 byte
    lane 0 .. lane K-1, back to back, no padding; lane k is 4 + 2*m_k bytes:
             u32 final encoder state (the decoder's initial state), then m_k u16 words in reading order
The payload must end exactly after lane K-1: a truncated payload or a damaged lane length fails
that check before any symbol is decoded; a lane boundary moved between two lanes shows up as
unread words or a wrong final state (very likely, not certain: the outer CRC is what guarantees
integrity). The outer bitstream (header, CRC) is bitstream.py's job. Alphabets: L <= 16.

Implementations, bit-identical: encode_reference/decode_reference below (pure Python: they
define the format; slow), the numba kernels in rans_kernels_cpu.py (encode/decode, the batch
versions, threads), the SIMD decoder (the C extension _rans_simd.c through rans_simd.py: AVX-512,
AVX2 or scalar; what decode_batch runs when it is built), and the Triton kernels in
latentstore_kernels.rans (decode and encode, one lane per program element; GPU, or
TRITON_INTERPRET=1 on the CPU).
"""
from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np

from ...errors import BitstreamError
from .registry import EntropyCoder, register

PROB_BITS = 12
PROB_SCALE = 1 << PROB_BITS  # every table row sums to this
STATE_LOW = 1 << 16  # renormalise (read a 16-bit word) below this
MAX_LANES = 255
ENCODE_CHUNK = 64  # images per encoder call at most; fewer for big images (scratch <= ~16 MB)
MIN_LANE_SYMBOLS = 2048  # fewer lanes for small latents: each lane costs ~2 bytes (index + final state)

# decoder error codes, shared by the numba and Triton decoders (index 0 = no error)
ERRORS = ("",
          "payload is empty",
          "lane count K is out of range for this shape",
          "lane index is truncated or has an over-long varint",
          "lane index gives a negative lane length",
          "payload length does not match the lane index (truncated, padded or wrong lane offsets)",
          "lane has unread words after its last symbol",
          "lane ends in a wrong final state",
          "payload has more lanes than the GPU launch allows (max_lanes)")


# ----------------------------------------------------------------------------------- tables
def check_tables(tables: np.ndarray, C: int, L: int) -> None:
    """Raise ValueError naming the first problem unless `tables` is a valid (C, L+1, L) table."""
    t = np.asarray(tables)
    if t.shape != (C, L + 1, L):
        raise ValueError(f"rANS tables have shape {t.shape}, expected (C, L+1, L) = {(C, L + 1, L)}")
    if not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"rANS tables have dtype {t.dtype}, expected an integer type (uint16)")
    bad = np.argwhere((t < 1) | (t > PROB_SCALE))
    if len(bad):
        c, ctx, s = bad[0]
        raise ValueError(f"rANS table for channel {c} context {ctx} gives symbol {s} frequency {t[c, ctx, s]}, "
                         f"not in 1..{PROB_SCALE}")
    sums = t.astype(np.int64).sum(-1)
    bad = np.argwhere(sums != PROB_SCALE)
    if len(bad):
        c, ctx = bad[0]
        raise ValueError(f"rANS table for channel {c} context {ctx} sums to {sums[c, ctx]}, not {PROB_SCALE}")


def context_counts(symbols: np.ndarray, L: int) -> np.ndarray:
    """(N, C, h, w) or (C, h, w) symbols -> (C, L+1, L) int64 counts of (channel, context, symbol).
    Counted by a numba kernel (rans_kernels_cpu.context_count_into); context_counts_reference defines it."""
    s = _as_batch(symbols)
    if s.ndim != 4:
        raise ValueError(f"symbols have shape {s.shape}, expected (N, C, h, w) or (C, h, w)")
    if s.size and (int(s.min()) < 0 or int(s.max()) >= L):
        raise ValueError(f"symbols out of range: [{int(s.min())}, {int(s.max())}] for L = {L}")
    if L > 256 or s.shape[2] == 0:
        return context_counts_reference(s, L)
    from . import rans_kernels_cpu as kc
    out = np.zeros((s.shape[1], L + 1, L), dtype=np.int64)
    kc.context_count_into(np.ascontiguousarray(s, dtype=np.uint8), L, out)
    return out


def context_counts_reference(symbols: np.ndarray, L: int) -> np.ndarray:
    """What context_counts computes, in numpy: the context of row 0 is L, of every other row the symbol above."""
    s = _as_batch(symbols)
    N, C, h, w = s.shape
    ctx = np.full(s.shape, L, dtype=np.int64)
    ctx[:, :, 1:, :] = s[:, :, :-1, :]
    idx = (np.arange(C)[None, :, None, None] * (L + 1) + ctx) * L + s
    return np.bincount(idx.ravel(), minlength=C * (L + 1) * L).reshape(C, L + 1, L)


def fit_tables(symbols: np.ndarray, L: int, prior: float = 1.0) -> np.ndarray:
    """(N, C, h, w) uint8 symbols -> (C, L+1, L) uint16 tables, each row summing to 4096, entries >= 1.

    Counts per (channel, context) plus `prior` pseudo-counts spread like the channel's overall
    histogram (a rare context borrows its channel's shape instead of trusting a few samples),
    then the 12-bit quantisation that maximises the likelihood of those counts. Deterministic."""
    return tables_from_counts(context_counts(symbols, L), prior)


def tables_from_counts(counts: np.ndarray, prior: float = 1.0) -> np.ndarray:
    """(C, L+1, L) context counts (summed over images of any sizes) -> tables, as fit_tables."""
    counts = np.asarray(counts, dtype=np.float64)
    L = counts.shape[-1]
    marg = counts.sum(1, keepdims=True) + 1e-9
    weights = counts + prior * marg / marg.sum(-1, keepdims=True)
    out = np.empty(counts.shape, dtype=np.uint16)
    for c in range(counts.shape[0]):
        for t in range(L + 1):
            out[c, t] = quantize_row(weights[c, t])
    return out


def quantize_row(weights: np.ndarray, total: int = PROB_SCALE) -> np.ndarray:
    """Integer f >= 1 summing to `total` that maximises sum(weights * log f).

    The objective is separable and concave, so a point where no single unit moved from one entry
    to another helps is the optimum: start proportional, then move units while that gains."""
    w = np.asarray(weights, dtype=np.float64)
    n = len(w)
    if w.sum() <= 0:
        w = np.ones(n)
    f = 1 + np.floor((total - n) * w / w.sum()).astype(np.int64)
    f[np.argmax(w)] += total - f.sum()
    while True:
        gain = w * np.log((f + 1) / f)  # +1 unit
        loss = np.where(f > 1, w * np.log(f / np.maximum(f - 1, 1)), np.inf)  # -1 unit
        up, down = int(np.argmax(gain)), int(np.argmin(loss))
        if up == down or gain[up] <= loss[down] * (1 + 1e-12):
            return f
        f[up] += 1
        f[down] -= 1


def ideal_bits(symbols: np.ndarray, tables: np.ndarray) -> float:
    """-sum log2(freq / 4096) of (C, h, w) or (N, C, h, w) symbols under the context model."""
    s = _as_batch(symbols).astype(np.int64)
    L = tables.shape[-1]
    ctx = np.full(s.shape, L, dtype=np.int64)
    ctx[:, :, 1:, :] = s[:, :, :-1, :]
    f = np.asarray(tables, dtype=np.float64)[np.arange(s.shape[1])[None, :, None, None], ctx, s]
    return float(-np.log2(f / PROB_SCALE).sum())


def cumulative(tables: np.ndarray) -> np.ndarray:
    """(C, L+1, L) frequencies -> (C, L+1, L+1) int64 cumulative starts (cum[..., L] = 4096)."""
    t = np.asarray(tables, dtype=np.int64)
    return np.concatenate([np.zeros(t.shape[:-1] + (1,), np.int64), np.cumsum(t, -1)], -1)


@lru_cache(maxsize=8)
def _cum_cached(raw: bytes, shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    from .rans_kernels_cpu import decode_tables
    t = np.frombuffer(raw, dtype=np.uint16).reshape(shape)
    check_tables(t, shape[0], shape[2])
    cum = np.ascontiguousarray(cumulative(t).ravel())
    return cum, decode_tables(cum, shape[2])


def _prepared(tables: np.ndarray, C: int) -> tuple[tuple[np.ndarray, np.ndarray], int]:
    """Checked flat cumulative and decoding tables (cached per table content), and L."""
    t = np.asarray(tables)
    if t.ndim != 3 or t.shape[0] != C or t.shape[1] != t.shape[2] + 1:
        raise ValueError(f"rANS tables have shape {t.shape}, expected (C, L+1, L) with C = {C}")
    if t.dtype != np.uint16 and (not np.issubdtype(t.dtype, np.integer) or t.min() < 0 or t.max() > 0xFFFF):
        check_tables(t, C, t.shape[2])  # raises the precise message
    return _cum_cached(np.ascontiguousarray(t, dtype=np.uint16).tobytes(), t.shape), t.shape[2]


# ------------------------------------------------------------------------------------ lanes
def default_lanes(C: int, h: int, w: int) -> int:
    """K for a (C, h, w) latent: C // 2 (16/8/4 at C = 32/16/8), at most 16, fewer for small latents."""
    k = min(16, max(1, C // 2), max(1, C * h * w // MIN_LANE_SYMBOLS), C * w, MAX_LANES)
    return max(1, k)


def _check_shape(shape) -> tuple[int, int, int]:
    C, h, w = (int(v) for v in shape)
    if min(C, h, w) < 1:
        raise ValueError(f"rANS shape {shape} has an empty axis")
    return C, h, w


def lanes_for(lanes: int | None, C: int, h: int, w: int) -> int:
    """K for a (C, h, w) latent: default_lanes when None, else `lanes` checked against the shape."""
    K = default_lanes(C, h, w) if lanes is None else int(lanes)
    if not 1 <= K <= min(MAX_LANES, C * w):
        raise ValueError(f"rANS lanes={K} out of range: 1..{min(MAX_LANES, C * w)} for shape {(C, h, w)}")
    return K


def _as_batch(symbols: np.ndarray) -> np.ndarray:
    s = np.asarray(symbols)
    return s[None] if s.ndim == 3 else s


# ------------------------------------------------------------------------ numba-backed API
def encode(symbols: np.ndarray, tables: np.ndarray, lanes: int | None = None) -> bytes:
    """(C, h, w) uint8 symbols -> payload bytes."""
    return encode_batch(np.asarray(symbols)[None], tables, lanes)[0]


def decode(payload: bytes, tables: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """payload -> (C, h, w) uint8; damage raises ValueError."""
    return decode_batch([payload], tables, shape)[0]


def encode_batch(symbols: np.ndarray, tables: np.ndarray, lanes: int | None = None,
                 threads: int = 1) -> list[bytes]:
    """(N, C, h, w) uint8 symbols -> N payloads (deterministic: the same input gives the same bytes)."""
    from . import rans_kernels_cpu as kc
    s = np.ascontiguousarray(symbols, dtype=np.uint8)
    if s.ndim != 4:
        raise ValueError(f"encode_batch wants (N, C, h, w) symbols, got shape {s.shape}")
    if s.shape[0] == 0:
        return []
    C, h, w = _check_shape(s.shape[1:])
    (cum, _), L = _prepared(tables, C)
    if s.max() >= L:
        raise ValueError(f"rANS symbols must be < L = {L}, got {int(s.max())}")
    return encode_in_chunks(kc.encode_batch, s, cum, L, lanes_for(lanes, C, h, w), threads)


def encode_in_chunks(kernel_batch, s: np.ndarray, cum: np.ndarray, L: int, K: int, threads: int) -> list[bytes]:
    """kernel_batch(symbols, cum, L, K) -> (buffer, lengths) over chunks of images (scratch <= ~16 MB), on
    `threads` pool threads when > 1; the payloads in order. v2 and v3 both."""
    C, h, w = s.shape[1:]
    per = max(1, min(ENCODE_CHUNK, (1 << 23) // (C * h * w)))  # the worst case is 2 bytes per symbol

    def chunk(a: int) -> list[bytes]:
        buf, lengths = kernel_batch(s[a:a + per], cum, L, K)
        return [buf[i, :n].tobytes() for i, n in enumerate(lengths)]

    starts = range(0, s.shape[0], per)
    if threads <= 1 or len(starts) < 2:
        return [p for a in starts for p in chunk(a)]
    return [p for part in _pool(threads).map(chunk, starts) for p in part]


def decode_batch(payloads: list[bytes], tables: np.ndarray, shape: tuple[int, int, int],
                 threads: int = 1) -> np.ndarray:
    """N payloads of one shape -> (N, C, h, w) uint8. `threads` > 1 splits the batch over threads.
    The decoder: rans_simd (the SIMD C extension, or numba without it; LATENTSTORE_RANS_ISA)."""
    from . import rans_simd as dec
    isa = dec.chosen_isa()
    C, h, w = _check_shape(shape)
    (_, (dtab, ftab)), L = _prepared(tables, C)
    data, offsets = pack_payloads(payloads)
    N = len(payloads)
    flat = np.empty(N * C * h * w + h * w, dtype=np.uint8)  # the tail is the kernel's scratch sink
    out = flat[:N * C * h * w].reshape(N, C, h, w)
    err = np.zeros((N, 2), dtype=np.int64)
    over_ranges(dec.decode_range, (data, offsets, dtab, ftab, L, C, h, w, flat, err), N, threads, isa)
    raise_errors(err)
    return out


def over_ranges(decode_range, head: tuple, N: int, threads: int, isa: str) -> None:
    """decode_range(*head, i0, i1, isa) over samples 0..N-1: one call, or `threads` contiguous parts on the pool
    (the decoders release the GIL). v2 and v3 both."""
    if threads <= 1 or N < 2:
        decode_range(*head, 0, N, isa)
        return
    bounds = np.linspace(0, N, min(threads, N) + 1).astype(np.int64)
    jobs = [_pool(threads).submit(decode_range, *head, int(a), int(b), isa) for a, b in zip(bounds[:-1], bounds[1:])]
    for j in jobs:
        j.result()


def raise_errors(err: np.ndarray) -> None:
    """err: (N, 2) [code, lane] per sample, from either decoder -> ValueError for the first bad sample."""
    bad = np.flatnonzero(np.asarray(err)[:, 0])
    if len(bad):
        i = int(bad[0])
        code, lane = (int(v) for v in err[i])
        raise ValueError(f"rANS payload of sample {i} is corrupt: {ERRORS[code]} (lane {lane})")


def pack_payloads(payloads: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated bytes (uint8) and (N+1,) int64 offsets: the batch input of the CPU and GPU decoders."""
    data = np.frombuffer(b"".join(payloads), dtype=np.uint8)
    offsets = np.zeros(len(payloads) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in payloads], out=offsets[1:])
    return data, offsets


@lru_cache(maxsize=4)
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="rans")


# ----------------------------------------------------------------------- the registered coder
class LaneRansCoder(EntropyCoder):
    """A registered lane-interleaved rANS coder: v2 (this module) and v3 (rans_v3) differ in their functions."""

    def __init__(self, coder_id: str, version: int, module) -> None:
        self.id, self.bitstream_version, self._m = coder_id, version, module

    def encode(self, symbols: np.ndarray, tables) -> bytes:
        return self._m.encode(symbols, tables)

    def decode(self, payload: bytes, tables, shape) -> np.ndarray:
        return self.decode_batch([payload], tables, shape)[0]

    def encode_batch(self, symbols: np.ndarray, tables) -> list[bytes]:
        return self._m.encode_batch(symbols, tables)

    def decode_batch(self, payloads: list[bytes], tables, shape) -> np.ndarray:
        try:
            return self._m.decode_batch(payloads, tables, shape)
        except ValueError as e:
            raise BitstreamError(str(e)) from None

    def ideal_bits(self, symbols: np.ndarray, tables) -> float:
        return self._m.ideal_bits(symbols, tables)


RANS_V2 = register(LaneRansCoder("latentstore.rans", 2, sys.modules[__name__]))  # tables: (C, L+1, L), fit_tables

__all__ = ["PROB_BITS", "PROB_SCALE", "MIN_LANE_SYMBOLS", "check_tables", "fit_tables", "quantize_row",
           "context_counts", "ideal_bits", "cumulative", "default_lanes", "encode", "decode", "encode_batch",
           "decode_batch", "pack_payloads", "raise_errors", "lanes_for"]
