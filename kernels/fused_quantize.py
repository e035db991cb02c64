"""Fused soft-to-hard quantization with histogram entropy: training forward and backward.

The function is defined by reference.quantize_reference; this file must match it.

NOTES: what bounds these kernels, per latent element, with L centres.
  forward : bytes = read z (2 or 4) + write z_q (2 or 4) + write symbol (1)     = 5 B (bf16) / 9 B (fp32)
            work  = per centre: sub, mul (distance), compare + 2 selects (argmin), FMA + exp2 (logit),
                    add (softmax sum), FMA (soft-histogram accumulator): 9 instructions, 1 of them
                    MUFU; per element ~25 more (load, convert, 1/den, z_q, stores, packed hard count).
                    ptxas (sm_90): 79 instr/element at L=6, 191 at L=16.
  backward: bytes = read z + read grad_z_q + write grad_z                      = 6 B (bf16) / 12 B (fp32)
            work  = per centre: distance and min (3), exp2 + sums + t_j (5), softmax backward into
                    grad_z and the grad_centres accumulator (5): 13 instructions; ptxas: 105 / 251.
  exp2 runs once per (element, centre): the distances and exponentials stay in registers (Triton
  tuples, unrolled over L) between the passes that need them; the old kernels computed each exp
  twice in the forward and three times in the backward. No N x L buffer is ever written: the
  backward recomputes the assignment from z.
  Roofline. These are memory-bound only while instruction issue keeps up. An H100 SXM issues at
  most 132 SMs x 4 x ~1.755 GHz x 32 lanes ~ 30 T thread-instructions/s, so a kernel runs at most
  30e12 / (instr/element) elements/s. Against a ~3 TB/s copy (bytes/element above), with the
  amortised per-program part included (benchmarks/kernels.py --sass computes this from ptxas):
                          bf16 L=6   bf16 L=16   fp32 L=6   fp32 L=16
      forward  ceiling     ~56%        ~21%       ~100%       ~39%     of copy bandwidth
      backward ceiling     ~50%        ~20%       ~100%       ~39%
  i.e. at bf16, and at L=16 in either dtype, 70% of copy bandwidth is out of reach of *any* kernel
  that evaluates the reference's math per (element, centre) at one instruction per operation;
  the measurable goal there is the ceiling, and the speed-up over eager / torch.compile.
  MUFU (ex2, 16/clk/SM ~ 3.7 T/s) is not the limit once each exp2 is computed once.
Histograms: per-lane accumulators across a program's rows, one reduction per program, then either
  a partial-buffer row and a second tiny pass (default, deterministic) or one atomic per bin; see
  _common.py. Traffic: O(L) words per program, negligible.
Forward value: z_q = z_soft + stopgrad(z_hard - z_soft) equals z_hard up to one rounding of
  z_soft; the kernel writes z_hard + (z - z), which is z_hard exactly for finite z and NaN for a
  non-finite z (as the reference's z_soft is), without computing z_soft at all.

File order, as in the Triton tutorials: kernels -> launchers -> autograd.Function.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (FDIV_APPROX, LOG2E, KernelConfig, _centres, _hard_sums, _nearest, _pack_hard, _recip,
                      _shape, _tile, _write_hist, _zeros_tuple, hist_mode, pack_width, reduce_partials, tiling)
from ._tuning import launch, tuned_config


@triton.jit
def _quantize_fwd_kernel(z_ptr, c_ptr, zq_ptr, sym_ptr, soft_ptr, hard_ptr, B, C, HW, CHW, NHB, NBG, s2,
                         L: tl.constexpr, LP: tl.constexpr, BLOCK: tl.constexpr, ROWS: tl.constexpr, V: tl.constexpr,
                         ATOMIC: tl.constexpr, APPROX: tl.constexpr):
    """s2 = sigma * log2(e). soft_ptr/hard_ptr: partial rows (one per program) or, ATOMIC, the (C, L) outputs."""
    ch, b0, offs = _tile(HW, NHB, NBG, ROWS, BLOCK)
    cs = _centres(c_ptr, L)
    soft = _zeros_tuple(L, BLOCK, tl.float32)  # per-lane sum of w_ij over this program's rows
    hard = _zeros_tuple((L + 7) // 8, BLOCK, tl.int64)  # per-lane packed counts
    base = (b0 * C + ch).to(tl.int64) * HW  # row (b, ch) starts at (b * C + ch) * HW; the next b is CHW on
    z_next = tl.load(z_ptr + base + offs, mask=offs < tl.where(b0 < B, HW, 0), other=0.0)
    for i in range(ROWS):
        b = b0 + i
        mask = offs < tl.where(b < B, HW, 0)  # (a scalar limit: `in_row & (b < B)` is mistyped by the interpreter)
        z = z_next.to(tl.float32)
        # prefetch this channel's next row before the stores below (the compiler must assume they alias z)
        z_next = tl.load(z_ptr + base + CHW + offs, mask=offs < tl.where((b + 1 < B) & (i + 1 < ROWS), HW, 0),
                         other=0.0)
        ds, best_d, best_j = _nearest(z, cs, L)
        # w_j = softmax_j(-sigma d_j), shifted by the largest logit -sigma d_min; each exp2 once
        m = best_d * s2
        den = tl.exp2(m - ds[0] * s2)
        es = (den,)
        for j in tl.static_range(1, L):
            e = tl.exp2(m - ds[j] * s2)
            den += e
            es = es + (e,)
        inv = tl.where(mask, _recip(den, APPROX), 0.0)  # 0 on masked lanes: they add nothing below
        new = ()
        for j in tl.static_range(L):
            new = new + (soft[j] + es[j] * inv,)
        soft = new
        hard = _pack_hard(hard, best_j, mask, L)
        z_hard = tl.load(c_ptr + best_j)  # an L-entry gather, served from L1
        tl.store(zq_ptr + base + offs, (z_hard + (z - z)).to(zq_ptr.dtype.element_ty), mask=mask)
        tl.store(sym_ptr + base + offs, best_j.to(tl.uint8), mask=mask)
        base += CHW

    soft_sums = ()
    for j in tl.static_range(L):
        soft_sums = soft_sums + (tl.sum(soft[j], axis=0),)
    row = ch if ATOMIC else tl.program_id(0)
    _write_hist(soft_sums, row, soft_ptr, L, LP, ATOMIC)
    _write_hist(_hard_sums(hard, L, BLOCK, V), row, hard_ptr, L, LP, ATOMIC)


@triton.jit
def _quantize_bwd_kernel(z_ptr, c_ptr, gzq_ptr, gsoft_ptr, gz_ptr, gc_ptr, B, C, HW, CHW, NHB, NBG, s2, two_sigma,
                         L: tl.constexpr, LP: tl.constexpr, BLOCK: tl.constexpr, ROWS: tl.constexpr,
                         ATOMIC: tl.constexpr, APPROX: tl.constexpr):
    """Gradients through z_soft (gy = dLoss/dz_q) and the soft histogram (gH = dLoss/dsoft_hist[ch]):

    t_j = dLoss/dw_j = gy c_j + gH_j;   gbar = sum_j w_j t_j;   dLoss/dlogit_j = w_j (t_j - gbar);
    u_j = (t_j - gbar)(z - c_j)
    grad_z   = -2 sigma sum_j w_j u_j
    grad_c_j = sum_i w_ij (gy_i + 2 sigma u_ij)      (the direct z_soft term + the logit term)
    with w_j = e_j / den, the 1/den folded into per-element factors.
    """
    ch, b0, offs = _tile(HW, NHB, NBG, ROWS, BLOCK)
    cs = _centres(c_ptr, L)
    gh = ()
    for j in tl.static_range(L):
        gh = gh + (tl.load(gsoft_ptr + ch * L + j).to(tl.float32),)
    gc = _zeros_tuple(L, BLOCK, tl.float32)
    base = (b0 * C + ch).to(tl.int64) * HW
    m0 = offs < tl.where(b0 < B, HW, 0)
    z_next = tl.load(z_ptr + base + offs, mask=m0, other=0.0)
    gy_next = tl.load(gzq_ptr + base + offs, mask=m0, other=0.0)
    for i in range(ROWS):
        b = b0 + i
        mask = offs < tl.where(b < B, HW, 0)
        z = z_next.to(tl.float32)
        gy = gy_next.to(tl.float32)  # 0 on masked lanes (other=0)
        m1 = offs < tl.where((b + 1 < B) & (i + 1 < ROWS), HW, 0)
        z_next = tl.load(z_ptr + base + CHW + offs, mask=m1, other=0.0)
        gy_next = tl.load(gzq_ptr + base + CHW + offs, mask=m1, other=0.0)

        diff = z - cs[0]
        dmin = diff * diff
        diffs = (diff,)
        ds = (dmin,)
        for j in tl.static_range(1, L):
            diff = z - cs[j]
            d = diff * diff
            dmin = tl.minimum(dmin, d)
            diffs = diffs + (diff,)
            ds = ds + (d,)
        m = dmin * s2
        es = ()
        ts = ()
        for j in tl.static_range(L):
            e = tl.exp2(m - ds[j] * s2)
            t = gy * cs[j] + gh[j]
            if j == 0:
                den = e
                gbn = e * t
            else:
                den += e
                gbn += e * t
            es = es + (e,)
            ts = ts + (t,)
        inv = tl.where(mask, _recip(den, APPROX), 0.0)  # 0 on masked lanes: they add nothing below
        gbar = gbn * inv
        p = gy * inv
        q = two_sigma * inv
        new = ()
        for j in tl.static_range(L):
            u = (ts[j] - gbar) * diffs[j]
            if j == 0:
                gzn = es[j] * u
            else:
                gzn += es[j] * u
            new = new + (gc[j] + es[j] * (q * u + p),)  # w_j (gy + 2 sigma u_j)
        gc = new
        tl.store(gz_ptr + base + offs, (gzn * -q).to(gz_ptr.dtype.element_ty), mask=mask)
        base += CHW

    sums = ()
    for j in tl.static_range(L):
        sums = sums + (tl.sum(gc[j], axis=0),)
    _write_hist(sums, 0 if ATOMIC else tl.program_id(0), gc_ptr, L, LP, ATOMIC)


# ----------------------------------------------------------------------------------- launchers
def _launch_forward(z, centres, sigma, z_q, symbols, cfg: KernelConfig, atomic: bool, warm: bool = False):
    B, C, HW = _shape(z)
    L = centres.numel()
    t = tiling(cfg, B, C, HW)
    new = torch.zeros if atomic else torch.empty  # atomics add into zeros; the reduction pass overwrites
    soft = new((C, L), dtype=torch.float32, device=z.device)
    hard = new((C, L), dtype=torch.int64, device=z.device)
    if atomic:
        soft_dst, hard_dst = soft, hard
    else:  # one allocation for both partial tables: int32 storage, the soft half viewed as fp32
        part = torch.empty((2, t.programs, L), dtype=torch.int32, device=z.device)
        soft_dst, hard_dst = part[0].view(torch.float32), part[1]
    launch(_quantize_fwd_kernel, (t.programs,),
           (z, centres, z_q, symbols, soft_dst, hard_dst, B, C, HW, C * HW, t.NHB, t.NBG, float(sigma) * LOG2E),
           dict(L=L, LP=triton.next_power_of_2(L), BLOCK=cfg.BLOCK, ROWS=cfg.ROWS,
                V=pack_width(cfg, HW, z.element_size()), ATOMIC=atomic, APPROX=FDIV_APPROX, num_warps=cfg.num_warps),
           warm)
    if not atomic and not warm:
        reduce_partials(soft_dst, hard_dst, C, t.per_channel, L, soft, hard)
    return soft, hard


def quantize_forward(z: torch.Tensor, centres: torch.Tensor, sigma: float,
                     z_q: torch.Tensor | None = None, symbols: torch.Tensor | None = None,
                     config: KernelConfig | None = None) -> dict[str, torch.Tensor]:
    """z (B, C, h, w) fp32/bf16 -> the reference's dict. `z_q`/`symbols` may be passed preallocated
    (contiguous). `config` pins the launch configuration (tests, benchmarks); else tuned_config()."""
    assert z.dim() == 4, "z must be (B, C, h, w)"
    z = z.contiguous()
    centres = centres.detach().contiguous().float()
    L = centres.numel()
    C = z.shape[1]
    z_q = torch.empty_like(z) if z_q is None else z_q
    symbols = torch.empty(z.shape, dtype=torch.uint8, device=z.device) if symbols is None else symbols
    assert z_q.is_contiguous() and symbols.is_contiguous()
    if z.numel() == 0:
        return {"z_q": z_q, "symbols": symbols, "soft_hist": torch.zeros((C, L), device=z.device),
                "hard_hist": torch.zeros((C, L), dtype=torch.int64, device=z.device)}
    atomic = hist_mode() == "atomic"
    cfg = tuned_config("forward", z, L, lambda c, warm=False: _launch_forward(z, centres, sigma, z_q, symbols, c,
                                                                                atomic, warm), config)
    soft, hard = _launch_forward(z, centres, sigma, z_q, symbols, cfg, atomic)
    return {"z_q": z_q, "symbols": symbols, "soft_hist": soft, "hard_hist": hard}


def _launch_backward(z, centres, sigma, grad_z_q, grad_soft_hist, grad_z, cfg: KernelConfig, atomic: bool,
                     warm: bool = False):
    B, C, HW = _shape(z)
    L = centres.numel()
    t = tiling(cfg, B, C, HW)
    grad_c = (torch.zeros if atomic else torch.empty)(L, dtype=torch.float32, device=z.device)
    dst = grad_c if atomic else torch.empty((t.programs, L), dtype=torch.float32, device=z.device)
    launch(_quantize_bwd_kernel, (t.programs,),
           (z, centres, grad_z_q, grad_soft_hist, grad_z, dst, B, C, HW, C * HW, t.NHB, t.NBG, float(sigma) * LOG2E,
            2.0 * float(sigma)),
           dict(L=L, LP=triton.next_power_of_2(L), BLOCK=cfg.BLOCK, ROWS=cfg.ROWS, ATOMIC=atomic, APPROX=FDIV_APPROX,
                num_warps=cfg.num_warps), warm)
    if not atomic and not warm:
        reduce_partials(dst, None, 1, t.programs, L, grad_c, None)
    return grad_c


def quantize_backward(z: torch.Tensor, centres: torch.Tensor, sigma: float, grad_z_q: torch.Tensor,
                      grad_soft_hist: torch.Tensor, grad_z: torch.Tensor | None = None,
                      config: KernelConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (grad_z in z's dtype, grad_centres fp32 (L,)). Recomputes w from z: no saved N x L buffer."""
    z = z.contiguous()
    centres = centres.detach().contiguous().float()
    grad_z_q = grad_z_q.contiguous()
    grad_soft_hist = grad_soft_hist.contiguous().float()
    grad_z = torch.empty_like(z) if grad_z is None else grad_z
    assert grad_z.is_contiguous()
    L = centres.numel()
    if z.numel() == 0:
        return grad_z, torch.zeros_like(centres)
    atomic = hist_mode() == "atomic"
    cfg = tuned_config("backward", z, L, lambda c, warm=False: _launch_backward(z, centres, sigma, grad_z_q,
                                                                                grad_soft_hist, grad_z, c, atomic,
                                                                                warm), config)
    return grad_z, _launch_backward(z, centres, sigma, grad_z_q, grad_soft_hist, grad_z, cfg, atomic)


# --------------------------------------------------------------------------- autograd.Function
class FusedQuantizeFunction(torch.autograd.Function):
    """Outputs (z_q, symbols, soft_hist, hard_hist); gradients flow through z_q and soft_hist."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, centres: torch.Tensor, sigma: float):
        out = quantize_forward(z, centres, sigma)
        ctx.save_for_backward(z, centres)
        ctx.sigma = sigma
        ctx.mark_non_differentiable(out["symbols"], out["hard_hist"])
        return out["z_q"], out["symbols"], out["soft_hist"], out["hard_hist"]

    @staticmethod
    def backward(ctx, g_zq, _g_sym, g_soft, _g_hard):
        z, centres = ctx.saved_tensors
        if g_zq is None:
            g_zq = torch.zeros_like(z)
        if g_soft is None:
            g_soft = torch.zeros((z.shape[1], centres.numel()), device=z.device)
        gz, gc = quantize_backward(z, centres, ctx.sigma, g_zq, g_soft)
        return gz, gc.to(centres.dtype), None


def quantize_fused(z: torch.Tensor, centres: torch.Tensor, sigma: float) -> dict[str, torch.Tensor]:
    z_q, symbols, soft, hard = FusedQuantizeFunction.apply(z, centres, sigma)
    return {"z_q": z_q, "symbols": symbols, "soft_hist": soft, "hard_hist": hard}
