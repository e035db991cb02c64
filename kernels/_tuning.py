"""Launch configurations of the fused kernels: the no-timing default, the interpreter's, and the tuner.

A KernelConfig is (BLOCK, ROWS, num_warps). default_config() is a heuristic that needs no GPU time
(LATENTSTORE_AUTOTUNE=0, problems under TUNE_MIN_ELEMENTS, and the tuner's first candidate);
interpreter_config() is what TRITON_INTERPRET=1 runs unless a test pins one. On a CUDA device the tuner
(tuned_config) times candidate configurations of the *whole launcher* (main kernel + reduction pass) once
per shape bucket and keeps the fastest, in memory and in a small JSON file (LATENTSTORE_TUNE_CACHE,
default ~/.cache/latentstore/kernel-tuning.json; "0" turns it off) keyed by GPU, Triton version and
bucket, so a later process does not re-time. See _common.py for the tiling these configurations set.
"""
from __future__ import annotations

import json
import os
from typing import Callable

import torch
import triton

from ._common import TUNE_MIN_ELEMENTS, KernelConfig, autotune_enabled, hist_mode, interpreting, tiling

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


