"""rANS v2 on the GPU: one lane per program element; decode (payloads in, symbols out) and encode.

The format is defined by latentstore.codec.entropy.rans_v2 (its docstring and reference coder);
this kernel must match it bit for bit (tests/test_rans.py checks against the numba decoder and
the reference, under TRITON_INTERPRET=1 on the CPU; tests/test_kernels_rans3.py compiles both
kernels to sm_90 machine code without a GPU).

NOTES: per decoded symbol, one lane (= one thread) does
  bytes : load a 2-byte decoding-table entry (sym << 12 | slot - cum[sym]; the table is
          C*(L+1)*4096*2 B = 1.8 MB at C=32, L=6: L2-resident) and the symbol's 8-byte frequency
          (a 28 KB table, L1), store the 1-byte symbol, and on ~1 symbol in 16 load a 2-byte word
          (two byte loads): ~11 B of cache traffic and ~1 B of DRAM traffic (payload in, symbol out).
  ops   : ~14 integer ops (mask, add, 2 loads, shift, and, mul, add, compare, 2 selects, store)
          in int64 (a state is < 2**32; int64 keeps the interpreter and the GPU identical).
  Lanes are serial chains of ~2000 symbols (ls-c32, 256 px, K=16), so a batch needs thousands of
  lanes in flight to fill a GPU: N images x K lanes. The lane index (K varints) is parsed by every
  lane of an image (<= K * 5 byte loads), then each lane decodes its columns top to bottom.
Layout: program p handles BLOCK consecutive lane slots g = image * KSLOT + k; slots with k >= the
image's K do nothing. Errors use rans_v2.ERRORS codes, per slot: err[n, k] = (code, lane).

Encoding mirrors it (each lane in reverse, words to a scratch buffer of one word per symbol); the
host then assembles payloads (index + lanes), a byte shuffle shared with the numba encoder.

Shared with v3 (kernels/rans3.py: v2's payload layout, index, error codes and launch layout, with
lanes of C*h rows where v2 has C*w columns), so each piece lives here once:
  jit helpers  _lane_slots (slot g -> image, lane), _parse_index, _decode_lane_start (the decode
               preamble: K, errors 1/2/8, the index, error 5, the lane's state and word bounds;
               parametrised by the format's lane limit), _decode_refill (the decode step's word
               read), _decode_lane_end (errors 6/7 and the err store), _encode_symbol (an encode step);
  launchers    _block, _launch_decode and _launch_encode (buffers, grid, KSLOT, the per-image
               error pick; parametrised by the kernel, its prepared tables and launch options);
  wrappers     _payloads (host assembly) and _decode_payloads (packing, launch, raise_errors).
Each format's decode_packed / encode_lanes / encode_batch / decode_batch keep what differs: table
preparation, lane limit, checks and messages.

File order, as in the other kernels: kernels -> launchers -> wrappers.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

@triton.jit
def _parse_index(data_ptr, start, stop, K, k, ok, KMAX):
    """Every element parses its image's K varints: (header end, my lane's byte offset from the header end,
    my lane's word count, total lane bytes, error code, error lane)."""
    pos = start + 1
    prev = tl.zeros_like(start)
    before = tl.zeros_like(start)
    mine = tl.zeros_like(start)
    total = tl.zeros_like(start)
    code = tl.zeros_like(start)
    where = tl.zeros_like(start)
    for m in range(0, KMAX):
        act = ok & (m < K) & (code == 0)
        v = tl.zeros_like(start)
        more = act
        for b in tl.static_range(5):
            inside = pos < stop
            cut = more & ~inside  # the index runs past the payload
            where = tl.where(cut & (code == 0), m, where)
            code = tl.where(cut & (code == 0), 3, code)
            more = more & inside
            byte = tl.load(data_ptr + pos, mask=more, other=0).to(tl.int64)
            v = tl.where(more, v | ((byte & 127) << (7 * b)), v)
            pos = tl.where(more, pos + 1, pos)
            more = more & (byte >= 128)
        where = tl.where(more & (code == 0), m, where)  # still more after 5 bytes: over-long varint
        code = tl.where(more & (code == 0), 3, code)
        act = act & (code == 0)
        cnt = tl.where(m == 0, v, prev + ((v >> 1) ^ -(v & 1)))
        where = tl.where(act & (cnt < 0), m, where)
        code = tl.where(act & (cnt < 0), 4, code)
        act = act & (cnt >= 0)
        before = tl.where(act & (m < k), before + 4 + 2 * cnt, before)
        mine = tl.where(act & (m == k), cnt, mine)
        total = tl.where(act, total + 4 + 2 * cnt, total)
        prev = tl.where(act, cnt, prev)
    return pos, before, mine, total, code, where


@triton.jit
def _lane_slots(N, KSLOT, BLOCK: tl.constexpr):
    """This program's BLOCK lane slots g = image * KSLOT + k: (g, n, k, valid = n < N), g int64."""
    g = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    n = g // KSLOT
    k = g - n * KSLOT
    return g, n, k, n < N


@triton.jit
def _decode_lane_start(data_ptr, off_ptr, N, KSLOT, KLIM, BLOCK: tl.constexpr):
    """The decode kernels' per-lane preamble (v2 and v3 share the payload layout): the slot's image n and
    lane k, the payload's K (error 1: empty; 2: K < 1, K > KLIM (the format's lane limit: v2's C*w columns,
    v3's C*h rows) or K > 255; 8: K > KSLOT, more lanes than the launch has slots), its index (_parse_index:
    errors 3, 4) and length (5: index + lanes != the payload), then lane k's 4-byte state and the bounds
    [p, e) of its words. Returns (g, n, k, valid, K, code, where, live, x, p, e); live = the slot holds a
    lane of a payload that passed every check, and only live lanes read their state."""
    g, n, k, valid = _lane_slots(N, KSLOT, BLOCK)
    start = tl.load(off_ptr + n, mask=valid, other=0)
    stop = tl.load(off_ptr + n + 1, mask=valid, other=0)
    nonempty = valid & (stop > start)
    K = tl.load(data_ptr + start, mask=nonempty, other=0).to(tl.int64)
    code = tl.where(valid & ~nonempty, 1, 0)
    code = tl.where(nonempty & ((K < 1) | (K > KLIM) | (K > 255)), 2, code)
    code = tl.where((code == 0) & valid & (K > KSLOT), 8, code)  # more lanes than this launch has slots
    ok = valid & (code == 0)

    KMAX = tl.max(tl.where(ok, K, 0), axis=0)
    pos, before, mine, total, code2, where = _parse_index(data_ptr, start, stop, K, k, ok, KMAX)
    code = tl.where(ok, code2, code)
    where = tl.where(ok, where, 0)
    ok = ok & (code == 0)
    code = tl.where(ok & (pos + total != stop), 5, code)
    ok = ok & (code == 0)
    live = ok & (k < K)

    # lane k: 4-byte state, then its words
    lp = pos + before
    x = tl.zeros_like(start)
    for b in tl.static_range(4):
        x = x | (tl.load(data_ptr + lp + b, mask=live, other=0).to(tl.int64) << (8 * b))
    p = lp + 4
    e = p + 2 * mine
    return g, n, k, valid, K, code, where, live, x, p, e


@triton.jit
def _decode_refill(data_ptr, xn, x, p, e, act):
    """The decode step's renormalisation: an active lane whose new state xn fell below 2**16 reads its next
    2-byte word (only while p < e, its end); returns the lane's (state, word position)."""
    need = act & (xn < 65536) & (p < e)
    lo = tl.load(data_ptr + p, mask=need, other=0).to(tl.int64)
    hi = tl.load(data_ptr + p + 1, mask=need, other=0).to(tl.int64)
    xn = tl.where(need, (xn << 16) | lo | (hi << 8), xn)
    p = tl.where(need, p + 2, p)
    return tl.where(act, xn, x), p


@triton.jit
def _decode_lane_end(err_ptr, g, k, valid, live, x, p, e, code, where):
    """The decode kernels' per-lane checks at the end (6: words left unread; 7: final state not 0) and
    the slot's error pair err[g] = (code, lane)."""
    code = tl.where(live & (p != e), 6, code)
    code = tl.where(live & (code == 0) & (x != 0), 7, code)
    where = tl.where(live & (code >= 6), k, where)
    tl.store(err_ptr + 2 * g, code, mask=valid)
    tl.store(err_ptr + 2 * g + 1, where, mask=valid)


@triton.jit
def _encode_symbol(x, cnt, s, act, cum_ptr, row, words_ptr, g, CAP):
    """One rANS encode step of symbol s with the cumulative table row cum[row : row + L + 1]: an active lane
    emits its low 16 bits to words[g, cnt] when the state would overflow, then takes the symbol in.
    Returns the lane's (state, word count)."""
    lo = tl.load(cum_ptr + row + s, mask=act, other=0)
    f = tl.where(act, tl.load(cum_ptr + row + s + 1, mask=act, other=1) - lo, 1)
    emit = act & (x >= (f << 20))
    tl.store(words_ptr + g * CAP + cnt, (x & 0xFFFF).to(tl.int32), mask=emit)
    cnt = tl.where(emit, cnt + 1, cnt)
    x = tl.where(emit, x >> 16, x)
    return tl.where(act, (x // f) * 4096 + x % f + lo, x), cnt


@triton.jit
def _rans_decode_kernel(data_ptr, off_ptr, dtab_ptr, ftab_ptr, out_ptr, err_ptr, N, C, h, w, KSLOT,
                        L: tl.constexpr, BLOCK: tl.constexpr):
    ncol = C * w
    g, n, k, valid, K, code, where, live, x, p, e = _decode_lane_start(data_ptr, off_ptr, N, KSLOT, ncol, BLOCK)

    Ks = tl.where(live, K, 1)
    ncols = tl.where(live, (ncol - k + Ks - 1) // Ks, 0)  # columns k, k+K, ... < C*w
    hw = h * w
    img = n * C * hw
    for i in range(0, tl.max(ncols, axis=0)):
        act = live & (i < ncols)
        j = k + i * Ks
        c = j // w
        tb = c * ((L + 1) * 4096)
        o = img + c * hw + (j - c * w)
        r = tb + L * 4096  # top of a column: context 'none'
        for y in range(0, h):
            v = tl.load(dtab_ptr + r + (x & 4095), mask=act, other=0).to(tl.int64) & 0xFFFF
            s = v >> 12
            f = tl.load(ftab_ptr + (r >> 8) + s, mask=act, other=0)
            x, p = _decode_refill(data_ptr, f * (x >> 12) + (v & 4095), x, p, e, act)
            tl.store(out_ptr + o + y * w, s.to(tl.uint8), mask=act)
            r = tb + s * 4096

    _decode_lane_end(err_ptr, g, k, valid, live, x, p, e, code, where)


@triton.jit
def _rans_encode_kernel(sym_ptr, cum_ptr, words_ptr, counts_ptr, states_ptr, N, C, h, w, K, CAP,
                        L: tl.constexpr, BLOCK: tl.constexpr):
    """Lane g = image * K + k encodes its symbols in reverse decoding order; words go to
    words[g, :count] in emission order (the payload stores them reversed), the final state to states[g]."""
    g, n, k, valid = _lane_slots(N, K, BLOCK)
    ncol = C * w
    hw = h * w
    ncols = tl.where(valid, (ncol - k + K - 1) // K, 0)
    x = tl.zeros_like(g)
    cnt = tl.zeros_like(g)
    for ii in range(0, tl.max(ncols, axis=0)):
        act = valid & (ii < ncols)
        j = k + (ncols - 1 - ii) * K  # the lane's columns, last first
        c = j // w
        base = n * C * hw + c * hw + (j - c * w)
        for yy in range(0, h):
            y = h - 1 - yy + tl.zeros_like(g)  # bottom to top
            s = tl.load(sym_ptr + base + y * w, mask=act, other=0).to(tl.int64)
            has_above = act & (y > 0)
            above = tl.load(sym_ptr + base + (y - 1) * w, mask=has_above, other=0).to(tl.int64)
            row = (c * (L + 1) + tl.where(has_above, above, L)) * (L + 1)
            x, cnt = _encode_symbol(x, cnt, s, act, cum_ptr, row, words_ptr, g, CAP)
    tl.store(counts_ptr + g, cnt, mask=valid)
    tl.store(states_ptr + g, x, mask=valid)


# ----------------------------------------------------------------------------------- launchers
def _block(lanes_per_program: int, lanes: int) -> int:
    """Lanes per program: a power of two, >= 16 (idle elements are masked), no bigger than the work."""
    return max(16, min(triton.next_power_of_2(lanes_per_program), triton.next_power_of_2(lanes)))


def decode_tables(tables: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, L+1, L) frequencies -> the numba decoder's tables (rans_kernels_cpu.decode_tables), on tables' device:
    dtab int16 (rows*4096,) with dtab[row*4096 + slot] = sym << 12 | slot - cum[sym] (as int16 bits), and
    ftab int64 (rows*16,) with ftab[row*16 + sym] = freq."""
    t = tables.to(torch.int64).reshape(-1, tables.shape[-1])
    rows, L = t.shape
    if L > 16:
        raise ValueError(f"rANS v2 codes alphabets of at most 16 symbols, not L = {L}")
    cum = torch.cumsum(t, 1) - t  # starts
    sym = torch.repeat_interleave(torch.arange(L, device=t.device).repeat(rows), t.reshape(-1)).reshape(rows, 4096)
    slot = torch.arange(4096, device=t.device)[None, :]
    dtab = (sym << 12) | (slot - torch.gather(cum, 1, sym))
    ftab = torch.zeros((rows, 16), dtype=torch.int64, device=t.device)
    ftab[:, :L] = t
    return dtab.to(torch.int32).to(torch.int16).reshape(-1).contiguous(), ftab.reshape(-1).contiguous()


def _launch_decode(kernel, tabs: tuple, L: int, lane_limit: int, data: torch.Tensor, offsets: torch.Tensor,
                  shape: tuple[int, int, int], max_lanes: int | None, lanes_per_program: int,
                  options=lambda block: {}) -> tuple[torch.Tensor, torch.Tensor]:
    """The decode launch v2 and v3 share (decode_packed's arguments and result): kernel(data, offsets, *tabs,
    out, err, N, C, h, w, KSLOT, L=L, BLOCK=block, **options(block)) on a grid of cdiv(N * KSLOT, block)
    programs, then each image's lowest failing slot's (code, lane), as the CPU decoders report it.
    lane_limit is the format's largest K (v2: C*w columns, v3: C*h rows): a payload with more lanes is error 2
    whatever the launch, so KSLOT = min(255, lane_limit, max_lanes) slots per image are enough."""
    C, h, w = shape
    N = offsets.numel() - 1
    out = torch.empty((N, C, h, w), dtype=torch.uint8, device=data.device)
    if N == 0:
        return out, torch.zeros((0, 2), dtype=torch.int64, device=data.device)
    if max_lanes is None:
        nonempty = offsets[1:] > offsets[:-1]
        firsts = data[offsets[:-1].clamp(max=max(data.numel() - 1, 0))] if data.numel() else offsets[:1] * 0
        max_lanes = int(torch.where(nonempty, firsts.to(torch.int64), 1).max()) if data.numel() else 1
    kslot = max(1, min(255, lane_limit, int(max_lanes)))
    err = torch.zeros((N, kslot, 2), dtype=torch.int64, device=data.device)
    block = _block(lanes_per_program, N * kslot)
    data_arg = data if data.numel() else torch.zeros(1, dtype=torch.uint8, device=data.device)
    grid = (triton.cdiv(N * kslot, block),)
    kernel[grid](data_arg, offsets, *tabs, out, err, N, C, h, w, kslot, L=L, BLOCK=block, **options(block))
    first = torch.argmax((err[:, :, 0] != 0).to(torch.int64), dim=1)  # the lowest failing slot, as on the CPU
    return out, err[torch.arange(N, device=err.device), first]


def _launch_encode(kernel, symbols: torch.Tensor, tables: torch.Tensor, lanes: int, cap: int, lanes_per_program: int,
                  options=lambda block: {}) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The encode launch v2 and v3 share (encode_lanes' arguments and result): kernel(symbols, cum, words,
    counts, states, N, C, h, w, K, CAP, L=L, BLOCK=block, **options(block)) with cum the (C, rows, L+1)
    cumulative frequencies of tables (C, rows, L) and CAP = max(cap, 1) words a lane (cap: the format's
    most symbols in one lane, at most one word each)."""
    N, C, h, w = symbols.shape
    K = int(lanes)
    t = tables.to(symbols.device, torch.int64)
    cum = torch.cat([torch.zeros(t.shape[:-1] + (1,), dtype=torch.int64, device=t.device), torch.cumsum(t, -1)], -1)
    cap = max(cap, 1)
    words = torch.zeros((N, K, cap), dtype=torch.int32, device=symbols.device)
    counts = torch.zeros((N, K), dtype=torch.int64, device=symbols.device)
    states = torch.zeros((N, K), dtype=torch.int64, device=symbols.device)
    if N:
        block = _block(lanes_per_program, N * K)
        grid = (triton.cdiv(N * K, block),)
        kernel[grid](symbols.contiguous(), cum.reshape(-1).contiguous(), words, counts, states,
                     N, C, h, w, K, cap, L=int(t.shape[-1]), BLOCK=block, **options(block))
    M = int(counts.max()) if N else 0
    return words[:, :, :max(M, 1)], counts, states


def decode_packed(data: torch.Tensor, offsets: torch.Tensor, tables, shape: tuple[int, int, int],
                  max_lanes: int | None = None, lanes_per_program: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """data: uint8 (all payloads back to back), offsets: int64 (N+1,), tables: the (C, L+1, L) frequency
    tensor or decode_tables() of it (prepare once per table to skip that work), all on one device.
    Returns symbols (N, C, h, w) uint8 and err (N, 2) int64 = (code, lane) per image, 0 = fine.

    max_lanes bounds K (the launch has max_lanes slots per image); None reads the payloads' K bytes
    (one small device-to-host copy). A payload with more lanes gets error code 8."""
    C, h, w = (int(v) for v in shape)
    dtab, ftab = decode_tables(tables) if isinstance(tables, torch.Tensor) else tables
    L = ftab.numel() // 16 // C - 1
    return _launch_decode(_rans_decode_kernel, (dtab, ftab), L, C * w, data, offsets, (C, h, w), max_lanes,
                         lanes_per_program)


def encode_lanes(symbols: torch.Tensor, tables: torch.Tensor, lanes: int,
                 lanes_per_program: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """symbols (N, C, h, w) uint8 -> per-lane (words (N, K, M) int32 in emission order, counts (N, K),
    final states (N, K)), M = the longest lane. Assembling payloads from them is a byte shuffle (rans_v2)."""
    _, C, h, w = symbols.shape
    cap = -(-C * w // int(lanes)) * h  # a lane's most columns of h symbols, at most one word each
    return _launch_encode(_rans_encode_kernel, symbols, tables, lanes, cap, lanes_per_program)


# ------------------------------------------------------------------------------------ wrappers
def _payloads(words: torch.Tensor, counts: torch.Tensor, states: torch.Tensor) -> list[bytes]:
    """encode_lanes' (words, counts, states) -> one payload per image (index + lanes: the layout v2 and v3
    share), assembled on the host by the numba encoder's byte shuffle (rans_kernels_cpu.assemble_range)."""
    import numpy as np

    from latentstore.codec.entropy import rans_kernels_cpu

    words, counts, states = (a.cpu().numpy().astype(np.int64) for a in (words, counts, states))
    N, K, M = words.shape
    out = np.empty((N, 1 + 9 * K + 2 * K * M), np.uint8)
    lengths = np.zeros(N, np.int64)
    rans_kernels_cpu.assemble_range(words, counts, states, out, lengths)
    return [out[i, :n].tobytes() for i, n in enumerate(lengths)]


def _decode_payloads(decode, payloads: list[bytes], tables, shape: tuple[int, int, int], device: str | torch.device,
                    max_lanes: int | None) -> torch.Tensor:
    """payloads -> decode(data, offsets, tables, shape, max_lanes) with the payloads packed back to back
    (rans_v2.pack_payloads) and tables (a numpy array: decode's table form) on `device`; a damaged payload
    raises ValueError (rans_v2.raise_errors: the first one's code and lane)."""
    from latentstore.codec.entropy import rans_v2

    raw, offsets = rans_v2.pack_payloads(payloads)
    data = torch.from_numpy(raw.copy()).to(device)
    out, err = decode(data, torch.from_numpy(offsets).to(device), torch.from_numpy(tables).to(device), shape,
                      max_lanes)
    rans_v2.raise_errors(err.cpu().numpy())
    return out


def encode_batch(symbols: torch.Tensor, tables, lanes: int | None = None) -> list[bytes]:
    """Convenience: (N, C, h, w) uint8 symbols on any device -> N payloads, identical to rans_v2.encode_batch."""
    import numpy as np

    from latentstore.codec.entropy import rans_v2

    N, C, h, w = symbols.shape
    t = np.asarray(tables)
    rans_v2.check_tables(t, C, t.shape[-1])
    if N and int(symbols.max()) >= t.shape[-1]:
        raise ValueError(f"rANS symbols must be < L = {t.shape[-1]}, got {int(symbols.max())}")
    K = rans_v2.lanes_for(lanes, C, h, w)
    return _payloads(*encode_lanes(symbols, torch.from_numpy(t.astype(np.int64)), K))


def decode_batch(payloads: list[bytes], tables, shape: tuple[int, int, int], device: str | torch.device = "cuda",
                 max_lanes: int | None = None) -> torch.Tensor:
    """Convenience: payloads -> (N, C, h, w) uint8 on `device`; damage raises ValueError (rans_v2's messages)."""
    import numpy as np

    from latentstore.codec.entropy import rans_v2

    t = np.asarray(tables)
    rans_v2.check_tables(t, int(shape[0]), t.shape[-1])
    return _decode_payloads(decode_packed, payloads, t.astype(np.int64), shape, device, max_lanes)
