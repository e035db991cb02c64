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
import json
import os
from dataclasses import dataclass
from typing import Callable

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


# ------------------------------------------------------------------------------ configurations
# Elements per thread per loop step, by kernel: the per-element register cost grows with L (the
# forward keeps L distances/exponentials and L soft-histogram accumulators live; the backward
# L differences, L exponentials and L centre-gradient accumulators), so fewer elements per
# thread at larger L keeps the kernels clear of spills (checked with ptxas for sm_90 at L=6, 16).
def _per_thread(kind: str, L: int, elem_size: int) -> int:
    if kind == "symbols":
        return (8 if elem_size <= 2 else 4) if L <= 8 else 4
    if kind == "forward":
        return 4 if L <= 8 else 2
    return 2 if L <= 8 else 1  # backward


def _pick_block(HW: int, cap: int) -> int:
    """Largest power of two <= cap whose padding of the row's last block wastes <= 1/6 of the lanes."""
    block = max(16, min(cap, triton.next_power_of_2(max(HW, 1))))
    while block > 16 and (triton.cdiv(HW, block) * block - HW) * 6 > max(HW, 1):
        block //= 2
    return block


def sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132  # an H100 SXM, for CPU runs of the same heuristic


def default_config(kind: str, L: int, B: int, C: int, HW: int, elem_size: int, sms: int = 132) -> KernelConfig:
    """A sane configuration without timing anything (LATENTSTORE_AUTOTUNE=0, and the tuner's first
    candidate). A program's fixed cost (centre loads, the end-of-program reductions of 2L
    histogram values: ~150-280 instructions per thread at L=6, ~270-620 at L=16, by ptxas for
    sm_90) is amortised over ROWS * elements-per-thread elements at ~40-250 instructions each,
    so ROWS = 8 keeps it near 10%; but the grid must still fill the GPU (>= 2 programs per SM),
    so ROWS and the warps per program shrink, in this order of preference, until it does."""
    per_thread = _per_thread(kind, L, elem_size)
    b2 = triton.next_power_of_2(max(B, 1))
    best = None
    for rows, num_warps in ((8, 4), (8, 2), (4, 4), (4, 2), (2, 4), (2, 2), (1, 4), (1, 2), (1, 1)):
        block = _pick_block(HW, per_thread * 32 * num_warps)
        cfg = KernelConfig(block, min(rows, b2), max(1, min(num_warps, block // (32 * per_thread))))
        programs = tiling(cfg, B, C, HW).programs
        if programs >= 2 * sms:
            return cfg
        if best is None or programs > best[0]:
            best = (programs, cfg)
    return best[1]


def interpreter_config(B: int, HW: int) -> KernelConfig:
    """Under TRITON_INTERPRET=1 every program and every loop step costs a round of numpy calls, so
    the fewest, widest programs are the fastest: a whole row per block and the whole batch per
    program. Tests pin default_config() and other configurations explicitly."""
    return KernelConfig(max(16, min(4096, triton.next_power_of_2(max(HW, 1)))), max(1, min(B, 64)), 4)


def candidate_configs(kind: str, L: int, B: int, C: int, HW: int, elem_size: int, sms: int) -> list[KernelConfig]:
    """Stage 1 of the tuner's search, for H100-class GPUs: (BLOCK, num_warps) at the default ROWS, with
    1/2, 1 and 2 times the default elements per thread over 2, 4 or 8 warps, dropping blocks that
    waste more than 1/4 of their lanes. The default comes first. At most 10 configurations."""
    d = default_config(kind, L, B, C, HW, elem_size, sms)
    out = [d]
    spt = _per_thread(kind, L, elem_size)
    hw_pow2 = triton.next_power_of_2(max(HW, 1))
    for per_thread in sorted({max(1, spt // 2), spt, 2 * spt}):
        for num_warps in (2, 4, 8):
            block = per_thread * 32 * num_warps
            if block > max(hw_pow2, 64) or (triton.cdiv(HW, block) * block - HW) * 4 > HW:
                continue
            cfg = KernelConfig(block, d.ROWS, num_warps)
            if cfg not in out:
                out.append(cfg)
    return out


def candidate_rows(cfg: KernelConfig, B: int, C: int, HW: int, sms: int) -> list[KernelConfig]:
    """Stage 2: ROWS from 1 to 32 at the best (BLOCK, num_warps), keeping >= 1 program per SM."""
    out = []
    for rows in (1, 2, 4, 8, 16, 32):
        if rows > triton.next_power_of_2(max(B, 1)):
            break
        c = KernelConfig(cfg.BLOCK, rows, cfg.num_warps)
        if rows == 1 or tiling(c, B, C, HW).programs >= sms:
            out.append(c)
    return out


_TUNED: dict[tuple, KernelConfig] = {}
_DISK: dict[str, list] | None = None


def _cache_path() -> str | None:
    p = os.environ.get("LATENTSTORE_TUNE_CACHE")
    if p == "0":
        return None
    return p or os.path.join(os.path.expanduser("~"), ".cache", "latentstore", "kernel-tuning.json")


def _disk_key(key: tuple, device: torch.device) -> str:
    kind, L, dtype, C, B2, HW2, mode = key[:7]
    return (f"{torch.cuda.get_device_name(device)}|triton {triton.__version__}|{kind}|L{L}|{dtype}|C{C}|B{B2}"
            f"|HW{HW2}|{mode}")


def _disk_get(key: tuple, device: torch.device) -> KernelConfig | None:
    global _DISK
    path = _cache_path()
    if path is None:
        return None
    if _DISK is None:
        try:
            with open(path) as f:
                _DISK = json.load(f)
        except (OSError, ValueError):
            _DISK = {}
    v = _DISK.get(_disk_key(key, device))
    try:
        return KernelConfig(*v) if v else None
    except (AssertionError, TypeError):
        return None


def _disk_put(key: tuple, device: torch.device, cfg: KernelConfig) -> None:
    path = _cache_path()
    if path is None or _DISK is None:
        return
    _DISK[_disk_key(key, device)] = [cfg.BLOCK, cfg.ROWS, cfg.num_warps]
    try:  # best effort, atomic replace: concurrent processes at worst re-time
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(_DISK, f, indent=0, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass


def tuned_config(kind: str, z: torch.Tensor, L: int, run: Callable[..., object] | None,
                 config: KernelConfig | None = None) -> KernelConfig:
    """The configuration to launch with. `config` (tests, benchmarks) wins; under TRITON_INTERPRET=1
    interpreter_config(); with autotuning off, or under TUNE_MIN_ELEMENTS, default_config(); else
    the tuner: each candidate runs the whole launcher (`run`) under triton.testing.do_bench, first
    over (BLOCK, num_warps), then over ROWS, once per shape bucket (kind, L, dtype, C, and B, HW
    rounded up to powers of two, histogram mode, device); the fastest is cached (tuned_configs())."""
    if config is not None:
        return config
    B, C = z.shape[:2]
    HW = z[0, 0].numel() if z.numel() else 0
    if interpreting():
        return interpreter_config(B, HW)
    sms = sm_count(z.device)
    if not autotune_enabled(z.device) or z.numel() < TUNE_MIN_ELEMENTS:
        return default_config(kind, L, B, C, HW, z.element_size(), sms)
    key = (kind, L, z.dtype, C, triton.next_power_of_2(max(B, 1)), triton.next_power_of_2(max(HW, 1)),
           hist_mode(), str(z.device))
    best = _TUNED.get(key) or _disk_get(key, z.device)
    if best is None:
        from triton.testing import do_bench
        best = search(kind, L, B, C, HW, z.element_size(), sms, run,
                      lambda fn: do_bench(fn, warmup=5, rep=20, return_mode="median"), precompile=True)
        _disk_put(key, z.device, best)
    _TUNED[key] = best
    return best


def search(kind: str, L: int, B: int, C: int, HW: int, elem_size: int, sms: int,
           run: Callable[..., object], timer: Callable[[Callable[[], object]], float],
           precompile: bool = False) -> KernelConfig:
    """The tuner's two-stage search: the fastest (BLOCK, num_warps), then the fastest ROWS for it.
    `run(cfg)` launches; with precompile, each stage's kernels are first compiled in parallel
    (run(cfg, warm=True) under triton.AsyncCompileMode): ptxas, not timing, dominates tuning."""
    times: dict[KernelConfig, float] = {}

    def fastest(cands):
        todo = [c for c in cands if c not in times]
        if precompile and len(todo) > 1:
            _precompile(run, todo)
        for c in todo:
            times[c] = timer(lambda: run(c))
        return min(cands, key=times.__getitem__)

    return fastest(candidate_rows(fastest(candidate_configs(kind, L, B, C, HW, elem_size, sms)), B, C, HW, sms))


def _precompile(run: Callable[..., object], cfgs: list[KernelConfig]) -> None:
    """Compiles the candidates' kernels on a thread pool; best effort (older Triton: no-op)."""
    mode = getattr(triton, "AsyncCompileMode", None)
    if mode is None:
        return
    from concurrent.futures import ThreadPoolExecutor
    try:
        with ThreadPoolExecutor(max_workers=min(len(cfgs), os.cpu_count() or 1)) as pool, \
                mode(pool, ignore_errors=True):
            for c in cfgs:
                run(c, warm=True)
    except Exception:  # a failed precompile only costs the time it saved; the timed runs compile anew
        pass


def launch(kernel, grid: tuple, args: tuple, meta: dict, warm: bool = False) -> None:
    """kernel[grid](*args, **meta), or with warm only its compilation (no launch)."""
    if warm:
        kernel.warmup(*args, grid=grid, **meta)
    else:
        kernel[grid](*args, **meta)


def tuned_configs() -> dict[tuple, KernelConfig]:
    """What the tuner chose in this process, by shape bucket (benchmarks record it)."""
    return dict(_TUNED)


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
