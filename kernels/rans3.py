"""rANS v3 (`latentstore.rans3`) on the GPU: one format lane per program element; decode and encode.

The format is defined by latentstore.codec.entropy.rans_v3 (its docstring) and rans3_reference.py (the
pure-Python coder); these kernels must match it bit for bit (tests/test_kernels_rans3.py checks them against
the reference under TRITON_INTERPRET=1 on the CPU). The v2 kernels (kernels/rans.py) are the model: the
same payload layout, index, error codes and launch layout, whose code lives there once (see its docstring):
the decode kernel's per-lane preamble and end checks (_decode_lane_start with v3's lane limit, C*h rows;
_decode_lane_end), the rANS steps (_decode_refill, _encode_symbol), the launches (_launch_decode,
_launch_encode) and the wrappers' packing and assembly (_decode_payloads, _payloads). What is v3's own is
here: the kernels' row loops and contexts, the packed table rows, the launch options and v3's checks.

Decoding, per lane (= one program element): the lane owns rows [k*R//K, (k+1)*R//K) of the R = C*h
channel-major rows; it decodes them in order, each left to right. The context of symbol (c, y, x):
  left        the lane's previous symbol in the row, kept in a register (L at x = 0);
  above-right loaded from the output row this lane wrote one row earlier (L at the last column, in the
              lane's first row and in a channel's row 0);
  above       the previous symbol's above-right, kept in a register (one output load per symbol).
The table row is one int64 (rans_v3.packed_rows: cum[1..L-1], 12 bits each, rows c*(L+1)**3 + ctx);
the symbol is #{i : cum[i] <= slot}, found by L-1 compares, and cum[s], cum[s+1] by selects, so
there is no per-slot table (v2's 2-byte-per-slot table would be 4096 * 343 * C * 2 B = 90 MB at C = 32).

NOTES: per decoded symbol one lane does
  bytes : one 8-byte table-row load (C*(L+1)**3*8 B = 88 KB at C = 32, L = 6: L2, mostly L1: a lane's
          rows stay in one channel for h rows), one 1-byte load of the row above (written by this lane
          w symbols ago: L1), one 1-byte store, and on ~1 symbol in 16 a 2-byte word (two byte loads).
  ops   : ~3L + 20 integer ops in int64 (L-1 compare/select triples for the symbol search, the v2 step);
          a state is < 2**32 and int64 keeps the interpreter and the GPU identical.
Bounds. Every loop runs a number of steps fixed by the shape (rows x w symbols), never by the bytes;
every payload load is masked to [start, stop) of its sample (the index parser checks each byte, the
state and word loads happen only after the payload length matched the index: error 5 otherwise, and a
lane reads a word only while p < its end); the context loads read only this lane's own output rows
(the row above exists in the lane) and every context digit is < L+1, so damaged bytes can give wrong
symbols and an error code but never an out-of-bounds access or an endless loop.
Visibility of the row above. The load of out[r-1, x+1] reads what the same program element stored one
row earlier. On a GPU a program element can be held by several threads (replicated layouts when
BLOCK < 32 * num_warps; only one of them stores), so the kernel ends every row with tl.debug_barrier()
(bar.sync: all global stores of the CTA before it are visible to the CTA's threads after it; the row
loop's trip count is uniform across the program, so every thread reaches it), and launches with
num_warps <= BLOCK // 32 and num_stages = 1 (no software pipelining of loads across the row loop).
In the interpreter (TRITON_INTERPRET=1) programs run one after another and every tl.store writes the
host buffer at once, so program order is all it needs (its debug_barrier is a no-op).

Encoding mirrors it (each lane's symbols in reverse: rows last first, each right to left; all the
context is read from the input symbols; words to a scratch buffer of one word per symbol); the host then
assembles the payloads with v2's byte shuffle (rans_kernels_cpu.assemble_range: the layout is v2's).

Launching on a GPU. decode_packed takes the payloads back to back in a uint8 tensor with int64 offsets
(rans_v2.pack_payloads) and the packed table rows (packed_rows() of the (C, (L+1)**3, L) frequency tensor;
prepare it once per table), all on the GPU; the grid has cdiv(N * KSLOT, BLOCK) programs, KSLOT = the
batch's largest K (read from the payloads' first bytes: one small device-to-host copy, unless max_lanes
is given), BLOCK = 32 lane slots a program by default (lanes_per_program). A GPU wants thousands of
lanes in flight: a 256-px ls-c32 image (a 32 x 32 x 32 latent) has K = 16 lanes of 64 rows x 32 symbols,
so a batch needs a few hundred images to fill an H100. decode_batch is the convenience wrapper (bytes in,
symbols on `device`, damage raises ValueError with rans_v3.decode_batch's messages).

Verified without a GPU: the interpreter's results equal the reference's (symbols, bytes, error codes),
and both kernels compile to sm_90 machine code (triton.compile with Triton's bundled ptxas; the test
test_kernels_compile_for_an_h100; the decoder's PTX has its one bar.sync in the row loop).
Not verified (no GPU where this was written): that the compiled kernels give the interpreter's results on
a real GPU (the barrier / program-order argument above included), and their speed (no numbers; BLOCK,
num_warps and the barrier per row are untuned guesses). tests/test_kernels_rans3.py runs on CUDA unchanged
when there is one (DEVICE = "cuda"): run it there first, then time it against the CPU decoders.

File order, as in the other kernels: kernels -> launchers -> wrappers.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .rans import (_decode_lane_end, _decode_lane_start, _decode_payloads, _decode_refill, _encode_symbol,
                   _lane_slots, _launch_decode, _launch_encode, _payloads)

MAX_L = 6  # rans_v3.MAX_L: cum[1..L-1] at 12 bits each fit one 64-bit word


@triton.jit
def _rans3_decode_kernel(data_ptr, off_ptr, rows_ptr, out_ptr, err_ptr, N, C, h, w, KSLOT,
                         L: tl.constexpr, BLOCK: tl.constexpr):
    R = C * h  # rows of a sample: (c, y), channel-major
    g, n, k, valid, K, code, where, live, x, p, e = _decode_lane_start(data_ptr, off_ptr, N, KSLOT, R, BLOCK)

    Ks = tl.where(live, K, 1)
    r0 = k * R // Ks
    nrows = tl.where(live, (k + 1) * R // Ks - r0, 0)
    NCTX: tl.constexpr = (L + 1) * (L + 1) * (L + 1)
    img = n * R * w
    none = tl.zeros_like(g) + L  # the context digit 'none'
    for i in range(0, tl.max(nrows, axis=0)):
        act = live & (i < nrows)
        r = r0 + i
        c = r // h
        up = act & (i > 0) & (r - c * h > 0)  # the row above exists and is this lane's
        tb = c * NCTX
        o = img + r * w  # out[n, c, y, 0]
        above = tl.where(up, tl.load(out_ptr + o - w, mask=up, other=0).to(tl.int64), none)
        left = none
        for xx in range(0, w):
            has_ar = up & (tl.zeros_like(g) + xx + 1 < w)  # tensor compare: int1 in the interpreter too
            ar = tl.where(has_ar, tl.load(out_ptr + o - w + xx + 1, mask=has_ar, other=0).to(tl.int64), none)
            word = tl.load(rows_ptr + tb + (above * (L + 1) + left) * (L + 1) + ar, mask=act, other=0)
            slot = x & 4095
            s = tl.zeros_like(g)
            lo = tl.zeros_like(g)  # cum[s]
            hi = tl.zeros_like(g) + 4096  # cum[s+1]
            for j in tl.static_range(1, L):
                cj = (word >> (12 * (j - 1))) & 4095
                le = cj <= slot
                s = s + le.to(tl.int64)
                lo = tl.where(le, cj, lo)
                hi = tl.where(le, hi, tl.minimum(hi, cj))
            x, p = _decode_refill(data_ptr, (hi - lo) * (x >> 12) + slot - lo, x, p, e, act)
            tl.store(out_ptr + o + xx, s.to(tl.uint8), mask=act)
            left = s
            above = ar
        tl.debug_barrier()  # this row's stores before the next row's loads (see the module doc)

    _decode_lane_end(err_ptr, g, k, valid, live, x, p, e, code, where)


@triton.jit
def _rans3_encode_kernel(sym_ptr, cum_ptr, words_ptr, counts_ptr, states_ptr, N, C, h, w, K, CAP,
                         L: tl.constexpr, BLOCK: tl.constexpr):
    """Lane g = image * K + k encodes its symbols in reverse decoding order (rows last first, each right
    to left); words go to words[g, :count] in emission order (the payload stores them reversed), the final
    state to states[g]. Symbols >= L are clamped to L-1 (memory safety only: encode_batch rejects them)."""
    g, n, k, valid = _lane_slots(N, K, BLOCK)
    R = C * h
    r0 = k * R // K
    nrows = tl.where(valid, (k + 1) * R // K - r0, 0)
    NCTX: tl.constexpr = (L + 1) * (L + 1) * (L + 1)
    img = n * R * w
    x = tl.zeros_like(g)
    cnt = tl.zeros_like(g)
    for ii in range(0, tl.max(nrows, axis=0)):
        act = valid & (ii < nrows)
        i = nrows - 1 - ii
        r = r0 + i
        c = r // h
        up = act & (i > 0) & (r - c * h > 0)
        o = img + r * w
        for xx in range(0, w):
            xc = tl.zeros_like(g) + (w - 1 - xx)  # a tensor: compares with scalars stay int1 in the interpreter
            s = tl.minimum(tl.load(sym_ptr + o + xc, mask=act, other=0).to(tl.int64), L - 1)
            has_left = act & (xc > 0)
            left = tl.where(has_left, tl.minimum(tl.load(sym_ptr + o + xc - 1, mask=has_left, other=0)
                                                 .to(tl.int64), L - 1), L)
            above = tl.where(up, tl.minimum(tl.load(sym_ptr + o - w + xc, mask=up, other=0).to(tl.int64),
                                            L - 1), L)
            has_ar = up & (xc + 1 < w)
            ar = tl.where(has_ar, tl.minimum(tl.load(sym_ptr + o - w + xc + 1, mask=has_ar, other=0)
                                             .to(tl.int64), L - 1), L)
            row = (c * NCTX + (above * (L + 1) + left) * (L + 1) + ar) * (L + 1)
            x, cnt = _encode_symbol(x, cnt, s, act, cum_ptr, row, words_ptr, g, CAP)
    tl.store(counts_ptr + g, cnt, mask=valid)
    tl.store(states_ptr + g, x, mask=valid)


# ----------------------------------------------------------------------------------- launchers
def _warps(block: int) -> int:
    """One thread per lane slot where the block allows (fewer replicated elements; see the module doc)."""
    return max(1, min(4, block // 32))


def packed_rows(tables: torch.Tensor) -> torch.Tensor:
    """(C, (L+1)**3, L) frequencies -> (C*(L+1)**3,) int64 on tables' device: the bits of rans_v3.packed_rows
    (cum[1..L-1] of each row, cum[i] at bit 12*(i-1); at most 60 bits, so the int64 is never negative)."""
    L = tables.shape[-1]
    if not 1 <= L <= MAX_L:
        raise ValueError(f"rans3 codes alphabets of at most {MAX_L} symbols, got L = {L} (use latentstore.rans)")
    cum = torch.cumsum(tables.to(torch.int64).reshape(-1, L), 1)  # cum[..., i-1] = cum[i]
    out = torch.zeros(cum.shape[0], dtype=torch.int64, device=tables.device)
    for i in range(1, L):
        out |= cum[:, i - 1] << (12 * (i - 1))
    return out.contiguous()


def _rows_and_L(tables: torch.Tensor, C: int) -> tuple[torch.Tensor, int]:
    if tables.ndim == 3:
        return packed_rows(tables), int(tables.shape[-1])
    rows = tables.view(torch.int64) if tables.dtype == torch.uint64 else tables
    per = rows.numel() // max(C, 1)
    L = round(per ** (1 / 3)) - 1
    if rows.ndim != 1 or rows.dtype != torch.int64 or per * C != rows.numel() or (L + 1) ** 3 != per \
            or not 1 <= L <= MAX_L:
        raise ValueError(f"rans3 decoder tables: expected (C, (L+1)**3, L) frequencies or (C*(L+1)**3,) int64 "
                         f"packed rows with C = {C}, got {tuple(tables.shape)} {tables.dtype}")
    return rows.contiguous(), L


def decode_packed(data: torch.Tensor, offsets: torch.Tensor, tables: torch.Tensor, shape: tuple[int, int, int],
                  max_lanes: int | None = None, lanes_per_program: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """data: uint8 (all payloads back to back), offsets: int64 (N+1,), tables: the (C, (L+1)**3, L) frequency
    tensor or packed_rows() of it (int64 or uint64; prepare once per table to skip that work), all on one
    device. Tables are not checked here (decode_batch does): a row must sum to 4096 with entries >= 1.
    Returns symbols (N, C, h, w) uint8 and err (N, 2) int64 = (code, lane) per sample, 0 = fine
    (rans_v2.ERRORS; the reference's code and lane for every damaged payload).

    max_lanes bounds K (the launch has max_lanes slots per sample); None reads the payloads' K bytes
    (one small device-to-host copy). A payload with more lanes gets error code 8."""
    C, h, w = (int(v) for v in shape)
    rows, L = _rows_and_L(tables, C)
    return _launch_decode(_rans3_decode_kernel, (rows,), L, C * h, data, offsets, (C, h, w), max_lanes,
                          lanes_per_program, lambda block: dict(num_warps=_warps(block), num_stages=1))


def encode_lanes(symbols: torch.Tensor, tables: torch.Tensor, lanes: int,
                 lanes_per_program: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """symbols (N, C, h, w) uint8 (< L) -> per-lane (words (N, K, M) int32 in emission order, counts (N, K),
    final states (N, K)), M = the longest lane. Assembling payloads from them is v2's byte shuffle."""
    _, C, h, w = symbols.shape
    cap = -(-C * h // int(lanes)) * w  # a lane's most rows of w symbols, at most one word each
    return _launch_encode(_rans3_encode_kernel, symbols, tables, lanes, cap, lanes_per_program,
                          lambda block: dict(num_warps=_warps(block)))


# ------------------------------------------------------------------------------------ wrappers
def encode_batch(symbols: torch.Tensor, tables, lanes: int | None = None) -> list[bytes]:
    """Convenience: (N, C, h, w) uint8 symbols on any device -> N payloads, identical to rans_v3.encode_batch
    (and rans3_reference.encode_reference), with its checks and messages."""
    import numpy as np

    from latentstore.codec.entropy import rans_v2, rans_v3

    if symbols.ndim != 4:
        raise ValueError(f"encode_batch wants (N, C, h, w) symbols, got shape {tuple(symbols.shape)}")
    N = symbols.shape[0]
    if N == 0:
        return []
    C, h, w = rans_v2._check_shape(symbols.shape[1:])
    t = np.asarray(tables)
    _, _, L = rans_v3.prepared(t, C)
    smax = int(symbols.max())
    if smax >= L:
        raise ValueError(f"rans3 symbols must be < L = {L}, got {smax}")
    K = rans_v3.lanes_for(lanes, C, h, w)
    return _payloads(*encode_lanes(symbols.to(torch.uint8), torch.from_numpy(t.astype(np.int64)), K))


def decode_batch(payloads: list[bytes], tables, shape: tuple[int, int, int], device: str | torch.device = "cuda",
                 max_lanes: int | None = None) -> torch.Tensor:
    """Convenience: payloads -> (N, C, h, w) uint8 on `device`; bad tables or shapes and damaged payloads raise
    ValueError with rans_v3.decode_batch's messages (rans_v2.raise_errors; code 8 for a payload with more
    than max_lanes lanes, which the CPU decoders never give)."""
    import numpy as np

    from latentstore.codec.entropy import rans_v2, rans_v3

    C, h, w = rans_v2._check_shape(shape)
    _, packed, _ = rans_v3.prepared(np.asarray(tables), C)
    return _decode_payloads(decode_packed, payloads, packed.view(np.int64).copy(), (C, h, w), device, max_lanes)
