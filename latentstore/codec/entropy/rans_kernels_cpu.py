"""numba kernels of `latentstore.rans` (format: rans_v2's docstring; these must match its reference).

Decoding: rans_v2.decode_batch runs the SIMD C extension (rans_simd.py, _rans_simd.c; ~4x faster)
when it is built; decode_range here is the fallback and its reference (LATENTSTORE_RANS_ISA=numba).
LLVM keeps it scalar: the table loads never become gathers (checked in numba's assembly).

Why the code looks the way it does:
- All arithmetic is int64: a state is < 2**32, and numba turns mixed signed/unsigned arithmetic
  into float64, so no uint32 appears. Hot-loop indices go through U() (uint64): numba then emits
  no negative-index wraparound code, which otherwise doubles the instructions per symbol.
- A decoding step is one load from a per-(channel, context) table indexed by the 12-bit slot
  (symbol and slot - cum[symbol] packed in 16 bits; 56 KB per channel at L = 6) plus the symbol's
  frequency from a tiny table, instead of a search over cumulative frequencies.
- Lanes decode eight at a time, written out (_eight_lanes) so that eight states live in registers:
  eight independent dependency chains hide each other's load and multiply latency (measured on a
  busy 2-core EPYC: ~1.5x faster than lanes kept in arrays, ~1.2x faster than four). When K < 8,
  consecutive images with the same K share the eight (a bundle); what is left is padded with idle
  lanes (state 0, no words, output to a sink region after the batch). So every K decodes at the
  same speed and one kernel serves them all.
- Nothing is raised inside a kernel: the decoder returns (error code, lane) and rans_v2 raises.
  Every loop is bounded by the symbol count and every read by the lane's end, so damaged bytes
  can neither hang nor read out of bounds.
"""
from __future__ import annotations

import numpy as np
from numba import njit

MASK = 4095  # PROB_SCALE - 1
SHIFT = 12  # PROB_BITS
EMIT_SHIFT = 20  # 32 - PROB_BITS: the encoder emits a word when x >= f << 20
LOW = 65536
MAX_SYMBOLS = 16  # alphabet limit of the packed decoding table (symbol in 4 bits)
GROUP = 8  # lanes decoded together
U = np.uint64


# ----------------------------------------------------------------------------------- counts
@njit(cache=True, nogil=True)
def context_count_into(s, L, out):
    """out[c, ctx, sym] += 1 for each symbol, ctx the symbol above (L in row 0): rans_v2.context_counts's
    kernel, one pass over uint8 symbols (numpy's bincount of int64 indices took ~14x longer: the service
    recounts a shard at every seal). The caller has checked every symbol < L, so no index leaves `out`."""
    N, C, h, w = s.shape
    for n in range(N):
        for c in range(C):
            for x in range(w):
                out[c, L, s[n, c, 0, x]] += 1
            for y in range(1, h):
                for x in range(w):
                    out[c, s[n, c, y - 1, x], s[n, c, y, x]] += 1


# ----------------------------------------------------------------------------------- encode
@njit(cache=True, nogil=True)
def _encode_image(sym, cum, L, C, h, w, K, words, counts, states, base, crow):
    """Encode one (C*h*w,) image into per-lane word stacks words[k, :counts[k]] (emission order).
    The exact reverse of decoding: column groups last to first, each bottom to top; the K lanes go
    in lockstep so that their divisions overlap (each lane alone is one long chain of divisions).
    x // f in float64 is exact here and pipelines better than an integer division: a quotient just
    below an integer n is at most n - 1/f, a relative gap >= 2**-44 that rounding (2**-53) cannot close."""
    L1 = L + 1
    hw = h * w
    ncol = C * w
    for k in range(K):
        counts[k] = 0
        states[k] = 0
    for j0 in range((ncol - 1) // K * K, -1, -K):
        kk = min(K, ncol - j0)
        for k in range(kk):
            c = (j0 + k) // w
            base[k] = c * hw + (j0 + k - c * w)
            crow[k] = c * L1
        for y in range(h - 1, -1, -1):
            for k in range(kk):
                b = base[U(k)] + y * w
                s = np.int64(sym[U(b)])
                ctx = L if y == 0 else np.int64(sym[U(b - w)])
                t = (crow[U(k)] + ctx) * L1
                lo = cum[U(t + s)]
                f = cum[U(t + s + 1)] - lo
                x = states[U(k)]
                if x >= (f << EMIT_SHIFT):
                    words[U(k), U(counts[U(k)])] = x & 0xFFFF
                    counts[U(k)] += 1
                    x >>= 16
                q = np.int64(np.float64(x) / np.float64(f))  # exact: x < 2**32, f < 2**13 (see _encode_image)
                states[U(k)] = q * (MASK + 1) + (x - q * f) + lo


@njit(cache=True, nogil=True)
def _put_varint(out, pos, v):
    while v > 0x7F:
        out[pos] = (v & 0x7F) | 0x80
        v >>= 7
        pos += 1
    out[pos] = v
    return pos + 1


@njit(cache=True, nogil=True)
def _assemble(K, words, counts, states, out):
    """Index + lanes into out (large enough); returns the payload length."""
    out[0] = K
    pos = _put_varint(out, 1, counts[0])
    for k in range(1, K):
        d = counts[k] - counts[k - 1]
        pos = _put_varint(out, pos, 2 * d if d >= 0 else -2 * d - 1)
    for k in range(K):
        x = states[k]
        for b in range(4):
            out[pos + b] = (x >> (8 * b)) & 0xFF
        pos += 4
        for i in range(counts[k] - 1, -1, -1):  # the decoder reads the last emitted word first
            v = words[k, i]
            out[pos] = v & 0xFF
            out[pos + 1] = v >> 8
            pos += 2
    return pos


@njit(cache=True, nogil=True)
def assemble_range(words, counts, states, out, lengths):
    """Payloads from per-lane results computed elsewhere (the GPU encoder): words (N, K, M) in
    emission order, counts/states (N, K) -> out[i, :lengths[i]]."""
    for i in range(words.shape[0]):
        lengths[i] = _assemble(words.shape[1], words[i], counts[i], states[i], out[i])


@njit(cache=True, nogil=True)
def encode_range(symbols, cum, L, K, out, lengths, i0, i1):
    """symbols (N, C, h, w) uint8 -> out[i, :lengths[i]] payloads for images i0..i1-1."""
    N, C, h, w = symbols.shape
    lane_cap = ((C * w + K - 1) // K) * h  # at most one word per symbol
    words = np.empty((K, lane_cap), np.uint16)
    counts = np.empty(K, np.int64)
    states = np.empty(K, np.int64)
    base = np.empty(K, np.int64)
    crow = np.empty(K, np.int64)
    for i in range(i0, i1):
        _encode_image(symbols[i].ravel(), cum, L, C, h, w, K, words, counts, states, base, crow)
        lengths[i] = _assemble(K, words, counts, states, out[i])


def decode_tables(cum: np.ndarray, L: int) -> tuple[np.ndarray, np.ndarray]:
    """From the flat (rows * (L+1),) cumulative table: dtab (rows * 4096,) uint16 with
    dtab[row << 12 | slot] = sym << 12 | (slot - cum[sym]), and ftab (rows * 16,) int64 with
    ftab[row << 4 | sym] = freq. One decoding step: v = dtab[..]; x = ftab[..] * (x >> 12) + (v & 4095)."""
    if L > MAX_SYMBOLS:
        raise ValueError(f"rANS v2 codes alphabets of at most {MAX_SYMBOLS} symbols, not L = {L}")
    cum = cum.reshape(-1, L + 1)
    freq = np.diff(cum, axis=1)
    rows = len(cum)
    sym = np.repeat(np.tile(np.arange(L), rows), freq.ravel()).reshape(rows, MASK + 1)
    lo = cum[np.arange(rows)[:, None], sym]
    dtab = (sym << SHIFT) | (np.arange(MASK + 1)[None, :] - lo)
    ftab = np.zeros((rows, MAX_SYMBOLS), np.int64)
    ftab[:, :L] = freq
    return np.ascontiguousarray(dtab.astype(np.uint16).ravel()), np.ascontiguousarray(ftab.ravel())


def encode_batch(symbols: np.ndarray, cum: np.ndarray, L: int, K: int, kernel=None) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, h, w) uint8 -> (buffer (N, cap) uint8, lengths (N,) int64). kernel: the coder's encode_range
    (None: v2's; rans3_kernels_cpu passes v3's: the payload layout is the same)."""
    N, C, h, w = symbols.shape
    cap = 1 + 9 * K + 2 * C * h * w  # K byte, 5-byte varints, 4-byte states, one word per symbol
    out = np.empty((N, cap), np.uint8)
    lengths = np.zeros(N, np.int64)
    (kernel or encode_range)(symbols, cum, L, K, out, lengths, 0, N)
    return out, lengths


# ----------------------------------------------------------------------------------- decode
@njit(cache=True, nogil=True)
def _read_index(data, start, stop, ncol, ptr, end, state, at):
    """Parse K and the lane index; fill lane word ranges and initial states into slots at..at+K-1.
    Returns (K, code, lane)."""
    if stop <= start:
        return 0, 1, 0
    K = np.int64(data[start])
    if K < 1 or K > min(255, ncol):
        return 0, 2, 0
    pos = start + 1
    m = np.int64(0)
    total = np.int64(0)
    for k in range(K):
        v = np.int64(0)
        ok = False
        for b in range(5):
            if pos >= stop:
                return 0, 3, k
            byte = np.int64(data[pos])
            pos += 1
            v |= (byte & 0x7F) << (7 * b)
            if byte < 0x80:
                ok = True
                break
        if not ok:
            return 0, 3, k
        m = v if k == 0 else m + ((v >> 1) ^ -(v & 1))
        if m < 0:
            return 0, 4, k
        end[at + k] = m  # word count for now
        total += 4 + 2 * m
    if pos + total != stop:
        return 0, 5, 0
    for k in range(at, at + K):
        n = end[k]
        state[k] = (np.int64(data[pos]) | (np.int64(data[pos + 1]) << 8) | (np.int64(data[pos + 2]) << 16)
                    | (np.int64(data[pos + 3]) << 24))
        ptr[k] = pos + 4
        end[k] = pos + 4 + 2 * n
        pos = end[k]
    return K, 0, 0


@njit(cache=True, nogil=True)
def _decode_bundle(data, dtab, ftab, L, C, h, w, K, B, ptr, end, state, lanes, out, o, sink):
    """Decode B images of K lanes each (lane k of image b in slot b*K + k) into out[o : o + B*C*h*w].
    Columns go K at a time (j0..j0+K-1, one per lane); the B*K lanes of such a group go eight at a
    time down their columns. Several images share a group when K < 8: every K decodes at full speed.
    lanes: (5, GROUP) scratch rows state, ptr, end, table base, output base of the eight in flight."""
    hw = h * w
    n = C * hw
    ncol = C * w
    for j0 in range(0, ncol, K):
        kk = min(K, ncol - j0)
        busy = B * kk  # lanes with a column in this group
        for g in range(0, busy, GROUP):
            for i in range(GROUP):
                q = g + i
                if q < busy:
                    b = q // kk
                    k = q - b * kk
                    c = (j0 + k) // w
                    lanes[0, i], lanes[1, i], lanes[2, i] = state[b * K + k], ptr[b * K + k], end[b * K + k]
                    lanes[3, i] = (c * (L + 1)) << SHIFT  # channel c's first table row
                    lanes[4, i] = o + b * n + c * hw + (j0 + k - c * w)
                else:  # an idle lane: x = 0 stays 0, reads nothing, writes to the sink
                    lanes[0, i], lanes[1, i], lanes[2, i], lanes[3, i], lanes[4, i] = 0, 0, 0, 0, sink
            _eight_lanes(data, dtab, ftab, L << SHIFT, h, w, lanes, out)
            for i in range(min(GROUP, busy - g)):
                b = (g + i) // kk
                k = g + i - b * kk
                state[b * K + k], ptr[b * K + k] = lanes[0, i], lanes[1, i]


@njit(cache=True, nogil=True)
def _eight_lanes(data, dtab, ftab, none, h, w, lanes, out):
    """Eight lanes each down one column (h symbols), the step written out once per lane."""
    x0, x1, x2, x3, x4, x5, x6, x7 = lanes[0]
    p0, p1, p2, p3, p4, p5, p6, p7 = lanes[1]
    e0, e1, e2, e3, e4, e5, e6, e7 = lanes[2]
    t0, t1, t2, t3, t4, t5, t6, t7 = lanes[3]
    o0, o1, o2, o3, o4, o5, o6, o7 = lanes[4]
    r0, r1, r2, r3 = t0 + none, t1 + none, t2 + none, t3 + none  # row 0: context 'none'
    r4, r5, r6, r7 = t4 + none, t5 + none, t6 + none, t7 + none
    for y in range(h):
        yw = y * w
        v0 = np.int64(dtab[U(r0 + (x0 & MASK))])
        v1 = np.int64(dtab[U(r1 + (x1 & MASK))])
        v2 = np.int64(dtab[U(r2 + (x2 & MASK))])
        v3 = np.int64(dtab[U(r3 + (x3 & MASK))])
        v4 = np.int64(dtab[U(r4 + (x4 & MASK))])
        v5 = np.int64(dtab[U(r5 + (x5 & MASK))])
        v6 = np.int64(dtab[U(r6 + (x6 & MASK))])
        v7 = np.int64(dtab[U(r7 + (x7 & MASK))])
        s0, s1, s2, s3 = v0 >> SHIFT, v1 >> SHIFT, v2 >> SHIFT, v3 >> SHIFT
        s4, s5, s6, s7 = v4 >> SHIFT, v5 >> SHIFT, v6 >> SHIFT, v7 >> SHIFT
        x0 = ftab[U((r0 >> 8) + s0)] * (x0 >> SHIFT) + (v0 & MASK)
        x1 = ftab[U((r1 >> 8) + s1)] * (x1 >> SHIFT) + (v1 & MASK)
        x2 = ftab[U((r2 >> 8) + s2)] * (x2 >> SHIFT) + (v2 & MASK)
        x3 = ftab[U((r3 >> 8) + s3)] * (x3 >> SHIFT) + (v3 & MASK)
        x4 = ftab[U((r4 >> 8) + s4)] * (x4 >> SHIFT) + (v4 & MASK)
        x5 = ftab[U((r5 >> 8) + s5)] * (x5 >> SHIFT) + (v5 & MASK)
        x6 = ftab[U((r6 >> 8) + s6)] * (x6 >> SHIFT) + (v6 & MASK)
        x7 = ftab[U((r7 >> 8) + s7)] * (x7 >> SHIFT) + (v7 & MASK)
        if x0 < LOW and p0 < e0:
            x0, p0 = (x0 << 16) | np.int64(data[U(p0)]) | (np.int64(data[U(p0 + 1)]) << 8), p0 + 2
        if x1 < LOW and p1 < e1:
            x1, p1 = (x1 << 16) | np.int64(data[U(p1)]) | (np.int64(data[U(p1 + 1)]) << 8), p1 + 2
        if x2 < LOW and p2 < e2:
            x2, p2 = (x2 << 16) | np.int64(data[U(p2)]) | (np.int64(data[U(p2 + 1)]) << 8), p2 + 2
        if x3 < LOW and p3 < e3:
            x3, p3 = (x3 << 16) | np.int64(data[U(p3)]) | (np.int64(data[U(p3 + 1)]) << 8), p3 + 2
        if x4 < LOW and p4 < e4:
            x4, p4 = (x4 << 16) | np.int64(data[U(p4)]) | (np.int64(data[U(p4 + 1)]) << 8), p4 + 2
        if x5 < LOW and p5 < e5:
            x5, p5 = (x5 << 16) | np.int64(data[U(p5)]) | (np.int64(data[U(p5 + 1)]) << 8), p5 + 2
        if x6 < LOW and p6 < e6:
            x6, p6 = (x6 << 16) | np.int64(data[U(p6)]) | (np.int64(data[U(p6 + 1)]) << 8), p6 + 2
        if x7 < LOW and p7 < e7:
            x7, p7 = (x7 << 16) | np.int64(data[U(p7)]) | (np.int64(data[U(p7 + 1)]) << 8), p7 + 2
        out[U(o0 + yw)], out[U(o1 + yw)], out[U(o2 + yw)], out[U(o3 + yw)] = s0, s1, s2, s3
        out[U(o4 + yw)], out[U(o5 + yw)], out[U(o6 + yw)], out[U(o7 + yw)] = s4, s5, s6, s7
        r0, r1, r2, r3 = t0 + (s0 << SHIFT), t1 + (s1 << SHIFT), t2 + (s2 << SHIFT), t3 + (s3 << SHIFT)
        r4, r5, r6, r7 = t4 + (s4 << SHIFT), t5 + (s5 << SHIFT), t6 + (s6 << SHIFT), t7 + (s7 << SHIFT)
    lanes[0, 0], lanes[0, 1], lanes[0, 2], lanes[0, 3] = x0, x1, x2, x3
    lanes[0, 4], lanes[0, 5], lanes[0, 6], lanes[0, 7] = x4, x5, x6, x7
    lanes[1, 0], lanes[1, 1], lanes[1, 2], lanes[1, 3] = p0, p1, p2, p3
    lanes[1, 4], lanes[1, 5], lanes[1, 6], lanes[1, 7] = p4, p5, p6, p7


@njit(cache=True, nogil=True)
def decode_range(data, offsets, dtab, ftab, L, C, h, w, out, err, i0, i1):
    """Images i0..i1-1 of a packed batch into out (flat, N*C*h*w + h*w bytes: the tail is the idle
    lanes' sink); err[i] = (code, lane), 0 = fine. Consecutive images with the same K < 8 are
    decoded together (a bundle) so that eight lanes are always in flight."""
    ptr = np.zeros(256 + GROUP, np.int64)
    end = np.zeros(256 + GROUP, np.int64)
    state = np.zeros(256 + GROUP, np.int64)
    lanes = np.zeros((5, GROUP), np.int64)
    n = C * h * w
    sink = out.size - h * w
    i = i0
    while i < i1:
        K, code, lane = _read_index(data, offsets[i], offsets[i + 1], C * w, ptr, end, state, 0)
        if code:
            err[i, 0] = code
            err[i, 1] = lane
            i += 1
            continue
        B = 1
        while B * K + K <= GROUP and i + B < i1:  # a damaged or different image starts the next bundle
            K2, code, lane = _read_index(data, offsets[i + B], offsets[i + B + 1], C * w, ptr, end, state, B * K)
            if code or K2 != K:
                break
            B += 1
        _decode_bundle(data, dtab, ftab, L, C, h, w, K, B, ptr, end, state, lanes, out, i * n, sink)
        for b in range(B):
            for k in range(b * K, b * K + K):
                if ptr[k] != end[k] or state[k] != 0:
                    err[i + b, 0] = 6 if ptr[k] != end[k] else 7
                    err[i + b, 1] = k - b * K
                    break
        i += B
