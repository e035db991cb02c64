"""Conversion kernel: latents -> uint8 symbols + per-channel hard histograms, in one pass.

Defined by reference.symbols_reference. The encoder's last-layer bias is fused in: the
encoder runs its last convolution without bias, and the kernel adds bias[channel] while it
quantizes, which saves one full read-modify-write pass over z. z may be fp32, bf16 or fp16 (the
caller need not make an fp32 copy); the kernel computes in fp32, like the reference.

NOTES, per latent element:
  bytes = read z (2 B bf16 / 4 B fp32) + write symbol (1 B) = 3 B / 5 B; the C x L histogram is
          accumulated per lane across the program's rows (packed 8-bit counters, a shift and an add
          per element), summed per thread while still packed, reduced once per program and written
          as one partial row (or L atomics).
  work  = per centre: sub, mul, compare, 2 selects = 5 instructions (an exact argmin needs every d_j
          rounded as the reference rounds it, so it cannot drop below these); ~10 more per element.
          ptxas (sm_90): 38 instr/element at L=6, 102 at L=16. Issue ceiling against a ~3 TB/s copy
          (benchmarks/kernels.py --sass): bf16 ~73% at L=6, ~27% at L=16; fp32 ~100% / ~45%.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (KernelConfig, _centres, _hard_sums, _nearest, _pack_hard, _shape, _tile, _write_hist,
                      _zeros_tuple, hist_mode, pack_width, reduce_partials, tiling)
from ._tuning import launch, tuned_config


@triton.jit
def _symbols_kernel(z_ptr, c_ptr, bias_ptr, sym_ptr, hard_ptr, B, C, HW, CHW, NHB, NBG,
                    L: tl.constexpr, LP: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr,
                    ROWS: tl.constexpr, V: tl.constexpr, ATOMIC: tl.constexpr):
    ch, b0, offs = _tile(HW, NHB, NBG, ROWS, BLOCK)
    cs = _centres(c_ptr, L)
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr + ch).to(tl.float32)
    hard = _zeros_tuple((L + 7) // 8, BLOCK, tl.int64)
    base = (b0 * C + ch).to(tl.int64) * HW  # row (b, ch); the next b is CHW on
    z_next = tl.load(z_ptr + base + offs, mask=offs < tl.where(b0 < B, HW, 0), other=0.0)
    for i in range(ROWS):
        b = b0 + i
        mask = offs < tl.where(b < B, HW, 0)
        z = z_next.to(tl.float32) + bias
        z_next = tl.load(z_ptr + base + CHW + offs, mask=offs < tl.where((b + 1 < B) & (i + 1 < ROWS), HW, 0),
                         other=0.0)
        _, _, best_j = _nearest(z, cs, L)
        tl.store(sym_ptr + base + offs, best_j.to(tl.uint8), mask=mask)
        hard = _pack_hard(hard, best_j, mask, L)
        base += CHW
    _write_hist(_hard_sums(hard, L, BLOCK, V), ch if ATOMIC else tl.program_id(0), hard_ptr, L, LP, ATOMIC)


def _launch_symbols(z, centres, bias, symbols, cfg: KernelConfig, atomic: bool, warm: bool = False):
    B, C, HW = _shape(z)
    L = centres.numel()
    t = tiling(cfg, B, C, HW)
    hard = (torch.zeros if atomic else torch.empty)((C, L), dtype=torch.int64, device=z.device)
    dst = hard if atomic else torch.empty((t.programs, L), dtype=torch.int32, device=z.device)
    launch(_symbols_kernel, (t.programs,),
           (z, centres, bias if bias is not None else centres, symbols, dst, B, C, HW, C * HW, t.NHB, t.NBG),
           dict(L=L, LP=triton.next_power_of_2(L), HAS_BIAS=bias is not None, BLOCK=cfg.BLOCK, ROWS=cfg.ROWS,
                V=pack_width(cfg, HW, z.element_size()), ATOMIC=atomic, num_warps=cfg.num_warps),
           warm)  # (without a bias, centres stand in for its pointer)
    if not atomic and not warm:
        reduce_partials(None, dst, C, t.per_channel, L, None, hard)
    return hard


def symbols_fused(z: torch.Tensor, centres: torch.Tensor, bias: torch.Tensor | None = None,
                  symbols: torch.Tensor | None = None, config: KernelConfig | None = None) -> dict[str, torch.Tensor]:
    """z (B, C, h, w) fp32/bf16/fp16 -> {'symbols': uint8 (B, C, h, w), 'hard_hist': int64 (C, L)}."""
    assert z.dim() == 4, "z must be (B, C, h, w)"
    z = z.detach().contiguous()
    centres = centres.detach().contiguous().float()
    L = centres.numel()
    C = z.shape[1]
    symbols = torch.empty(z.shape, dtype=torch.uint8, device=z.device) if symbols is None else symbols
    assert symbols.is_contiguous()
    if z.numel() == 0:
        return {"symbols": symbols, "hard_hist": torch.zeros((C, L), dtype=torch.int64, device=z.device)}
    bias = bias.detach().contiguous().float() if bias is not None else None
    atomic = hist_mode() == "atomic"
    cfg = tuned_config("symbols", z, L, lambda c, warm=False: _launch_symbols(z, centres, bias, symbols, c, atomic,
                                                                              warm), config)
    return {"symbols": symbols, "hard_hist": _launch_symbols(z, centres, bias, symbols, cfg, atomic)}
