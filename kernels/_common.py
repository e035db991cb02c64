"""Shared pieces of the fused kernels: tiling, launch configurations, the tuner, histogram reduction.

Tiling. z is contiguous (B, C, h, w), i.e. B*C rows of HW = h*w elements, row b*C + c holding
channel c. A program owns one channel c, one block of BLOCK columns of the row and ROWS batch
indices b: it loops over z[b, c, block] for its ROWS values of b (all of one channel), so its
histogram contribution is one row of the C x L tables, accumulated per lane in registers across
the loop and reduced across the program once, at its end. Programs are numbered channel-major,

    pid = (c * NBG + bg) * NHB + hb        NHB = cdiv(HW, BLOCK), NBG = cdiv(B, ROWS),

so the NBG * NHB programs of channel c are consecutive and their partial histograms form one
contiguous slab of the partial buffer.

Histograms. Two ways to combine the per-program histograms, chosen by LATENTSTORE_HIST:
  partial (default): each program stores its C x L row contribution to partial[pid] (no atomics,
      no zero-fill); a second, tiny kernel (_reduce_partials_kernel, one program per channel) sums
      each channel's slab in a fixed order and writes soft fp32 / hard int64. Deterministic.
  atomic: each program adds its L sums with one atomic per bin (2L per program, after the
      in-register reduction) into zero-filled outputs. One launch fewer when the zero-fill is
      cheap, but fp32 atomics make the soft histogram's low bits run-to-run nondeterministic.
Either way a program issues O(L) global writes for ROWS * BLOCK elements; the old kernels issued
2L atomics per BLOCK elements, all programs of a channel contending for the same L addresses.

Configurations. A KernelConfig is (BLOCK, ROWS, num_warps). default_config() is a heuristic that
needs no GPU time (LATENTSTORE_AUTOTUNE=0, problems under TUNE_MIN_ELEMENTS, and the tuner's
first candidate); interpreter_config() is what TRITON_INTERPRET=1 runs unless a test pins one.
On a CUDA device the tuner (tuned_config) times candidate configurations of the *whole launcher*
(main kernel + reduction pass) once per shape bucket and keeps the fastest, in memory and in a
small JSON file (LATENTSTORE_TUNE_CACHE, default ~/.cache/latentstore/kernel-tuning.json; "0"
turns it off) keyed by GPU, Triton version and bucket, so a later process does not re-time.
Not triton.autotune: the partial buffer's size and the reduction pass depend on the
configuration, and triton.autotune times one kernel with its arguments fixed.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
# tl.fdiv(..., approx=True) (div.approx.f32) exists in recent Triton only; older ones get div.full.f32.
FDIV_APPROX = "approx" in inspect.signature(tl.math.fdiv).parameters
MAX_ROWS = 255  # per-lane hard counts are packed 8 bits per bin (see _pack_hard): at most 255 per lane
TUNE_MIN_ELEMENTS = 1 << 18  # below this a launch is latency-bound (one image): no tuning stall


@dataclass(frozen=True)
class KernelConfig:
    BLOCK: int  # columns (elements of one row) per program and loop step; a power of two
    ROWS: int  # batch indices (rows of one channel) per program: the loop length
    num_warps: int = 4

    def __post_init__(self):
        assert self.BLOCK >= 16 and self.BLOCK & (self.BLOCK - 1) == 0, "BLOCK must be a power of two >= 16"
        assert 1 <= self.ROWS <= MAX_ROWS, f"ROWS must be in [1, {MAX_ROWS}]"
        assert self.num_warps in (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class Tiling:
    """The launch geometry of one configuration on one (B, C, HW)."""
    cfg: KernelConfig
    B: int
    C: int
    HW: int
    NHB: int  # column blocks per row
    NBG: int  # batch groups per channel

    @property
    def per_channel(self) -> int:
        return self.NHB * self.NBG

    @property
    def programs(self) -> int:
        return self.C * self.per_channel


def _shape(z: torch.Tensor) -> tuple[int, int, int]:
    """(B, C, HW) of a (B, C, h, w) tensor."""
    return z.shape[0], z.shape[1], z.shape[2] * z.shape[3]


def tiling(cfg: KernelConfig, B: int, C: int, HW: int) -> Tiling:
    return Tiling(cfg, B, C, HW, triton.cdiv(HW, cfg.BLOCK), triton.cdiv(B, cfg.ROWS))


# ------------------------------------------------------------------------- environment switches
def hist_mode() -> str:
    mode = os.environ.get("LATENTSTORE_HIST", "partial").lower()
    if mode not in ("partial", "atomic"):
        raise ValueError(f"LATENTSTORE_HIST={mode!r}: expected partial or atomic")
    return mode


def autotune_enabled(device: torch.device) -> bool:
    """LATENTSTORE_AUTOTUNE=0/1 forces it; by default on for CUDA tensors, off in the interpreter."""
    env = os.environ.get("LATENTSTORE_AUTOTUNE")
    if env is not None:
        return env.strip().lower() not in ("0", "false", "off", "no", "")
    return device.type == "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1"


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# ------------------------------------------------------------------------------ shared jit parts
@triton.jit
def _tile(HW, NHB, NBG, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """This program's channel, first batch index and column offsets (see the module doc)."""
    pid = tl.program_id(0)
    hb = pid % NHB
    t = pid // NHB
    bg = t % NBG
    ch = t // NBG
    return ch, bg * ROWS, hb * BLOCK + tl.arange(0, BLOCK)


@triton.jit
def _centres(c_ptr, L: tl.constexpr):
    """The L centres as a tuple of fp32 scalars, loaded once per program."""
    cs = ()
    for j in tl.static_range(L):
        cs = cs + (tl.load(c_ptr + j).to(tl.float32),)
    return cs


@triton.jit
def _zeros_tuple(L: tl.constexpr, BLOCK: tl.constexpr, dtype: tl.constexpr):
    acc = ()
    for j in tl.static_range(L):
        acc = acc + (tl.zeros([BLOCK], dtype),)
    return acc


@triton.jit
def _nearest(z, cs, L: tl.constexpr):
    """Per element: the squared distances (a tuple of L), the smallest one and its index.

    Ties go to the lowest index (strict <), like torch.argmin. A NaN z compares false everywhere
    and keeps index 0, as torch.argmin does for an all-NaN row (best_d is then NaN)."""
    diff = z - cs[0]
    best_d = diff * diff
    best_j = tl.zeros(z.shape, tl.int32)
    ds = (best_d,)
    for j in tl.static_range(1, L):
        diff = z - cs[j]
        d = diff * diff
        upd = d < best_d
        best_d = tl.where(upd, d, best_d)
        best_j = tl.where(upd, j, best_j)
        ds = ds + (d,)
    return ds, best_d, best_j


@triton.jit
def _recip(x, APPROX: tl.constexpr):
    """1 / x for x in [1, L] (a softmax denominator): div.approx.f32 (2 ulp, two instructions)
    where this Triton has tl.fdiv(approx=), else div.full.f32 (2 ulp, with range fix-ups)."""
    if APPROX:
        r = tl.fdiv(1.0, x, approx=True)
    else:
        r = tl.fdiv(1.0, x, ieee_rounding=False)
    return r


@triton.jit
def _pack_hard(words, best_j, mask, L: tl.constexpr):
    """Adds one count for bin best_j to per-lane packed counters: int64 words of 8 bins x 8 bits.

    A shift and an add per element (plus a select per word when L > 8) instead of L compares and
    L adds for one-hot counting. A lane sees ROWS <= 255 elements, so its fields cannot overflow."""
    one = tl.where(mask, 1, 0).to(tl.int64)
    inc = one << ((best_j & 7) * 8).to(tl.int64)
    new = ()
    for w in tl.static_range((L + 7) // 8):
        if (L + 7) // 8 == 1:
            new = new + (words[w] + inc,)
        else:
            new = new + (words[w] + tl.where((best_j >> 3) == w, inc, 0),)
    return new


@triton.jit
def _hard_sums(words, L: tl.constexpr, BLOCK: tl.constexpr, V: tl.constexpr):
    """Program-wide counts of the L bins (a tuple of int32 scalars) from the per-lane packed words.

    V > 1: each thread first adds its V consecutive lanes' words *packed* (a reshape that matches
    the load's vector layout, so no data moves; fields stay < 256 because ROWS * V <= 255), and
    unpacks once per thread instead of once per element slot: the unpacking was most of the
    conversion kernel's per-program cost."""
    per_thread = ()
    for w in tl.static_range((L + 7) // 8):
        if V > 1:
            per_thread = per_thread + (tl.sum(tl.reshape(words[w], [BLOCK // V, V]), axis=1),)
        else:
            per_thread = per_thread + (words[w],)
    sums = ()
    for j in tl.static_range(L):
        sums = sums + (tl.sum(((per_thread[j // 8] >> (8 * (j % 8))) & 255).to(tl.int32), axis=0),)
    return sums


def pack_width(cfg: KernelConfig, HW: int, elem_size: int) -> int:
    """V for _hard_sums: the elements per thread of one vector load (16 bytes), when rows are
    16-element aligned (else the loads are scalar and V = 1), limited so that ROWS * V <= 255."""
    if HW % 16:
        return 1
    v = min(cfg.BLOCK // (32 * cfg.num_warps), 16 // elem_size)
    while v > 1 and cfg.ROWS * v > MAX_ROWS:
        v //= 2
    return max(1, v)


@triton.jit
def _write_hist(vals, row, out_ptr, L: tl.constexpr, LP: tl.constexpr, ATOMIC: tl.constexpr):
    """Writes a tuple of L per-program sums to row `row` of an (rows, L) table: a plain store into
    the partial buffer, or one atomic add per bin into the zero-filled output."""
    jj = tl.arange(0, LP)
    vec = tl.zeros([LP], vals[0].dtype)
    for j in tl.static_range(L):
        vec = tl.where(jj == j, vals[j], vec)
    ptrs = out_ptr + row * L + jj  # row < #programs: int32 is plenty
    if ATOMIC:
        tl.atomic_add(ptrs, vec.to(out_ptr.dtype.element_ty), mask=jj < L, sem="relaxed")
    else:
        tl.store(ptrs, vec.to(out_ptr.dtype.element_ty), mask=jj < L)


@triton.jit
def _reduce_partials_kernel(soft_part_ptr, hard_part_ptr, soft_ptr, hard_ptr, PER_G,
                            L: tl.constexpr, LP: tl.constexpr, BLOCK_P: tl.constexpr,
                            HAS_SOFT: tl.constexpr, HAS_HARD: tl.constexpr):
    """Second pass of the partial-histogram scheme: group g (a channel, or the single group of the
    backward's centre gradient) sums its PER_G consecutive partial rows in a fixed order."""
    g = tl.program_id(0)
    jj = tl.arange(0, LP)
    pp = tl.arange(0, BLOCK_P)
    acc = tl.zeros([BLOCK_P, LP], tl.float32)
    hacc = tl.zeros([BLOCK_P, LP], tl.int32)
    base = g.to(tl.int64) * PER_G
    for p0 in range(0, PER_G, BLOCK_P):
        rows = p0 + pp
        m = (rows[:, None] < PER_G) & (jj[None, :] < L)
        idx = (base + rows)[:, None] * L + jj[None, :]
        if HAS_SOFT:
            acc += tl.load(soft_part_ptr + idx, mask=m, other=0.0)
        if HAS_HARD:
            hacc += tl.load(hard_part_ptr + idx, mask=m, other=0)
    out = g.to(tl.int64) * L + jj
    if HAS_SOFT:
        tl.store(soft_ptr + out, tl.sum(acc, axis=0), mask=jj < L)
    if HAS_HARD:
        tl.store(hard_ptr + out, tl.sum(hacc, axis=0).to(tl.int64), mask=jj < L)


def reduce_partials(soft_part: torch.Tensor | None, hard_part: torch.Tensor | None, groups: int, per_group: int,
                    L: int, soft_out: torch.Tensor | None, hard_out: torch.Tensor | None) -> None:
    """Partial rows (groups * per_group, L), fp32 soft / int32 hard -> (groups, L) fp32 / int64."""
    lp = triton.next_power_of_2(L)
    block_p = max(2, min(triton.next_power_of_2(per_group), max(2, 4096 // lp)))
    dummy = soft_part if soft_part is not None else hard_part
    _reduce_partials_kernel[(groups,)](
        dummy if soft_part is None else soft_part, dummy if hard_part is None else hard_part,
        dummy if soft_out is None else soft_out, dummy if hard_out is None else hard_out, per_group,
        L=L, LP=lp, BLOCK_P=block_p, HAS_SOFT=soft_part is not None, HAS_HARD=hard_part is not None,
        num_warps=4)
