"""Fused soft-to-hard quantization with histogram entropy: training forward and backward.

The function is defined by reference.quantize_reference; this file must match it.

NOTES: the two numbers that bound these kernels, per latent element, with L centres.
  forward : bytes  = read z (2 or 4) + write z_q (2 or 4) + write symbol (1)          = 5 B (bf16) / 9 B (fp32)
            FLOPs  ~ 3L (distances) + 4L (exp, sum, weighted sum) + 2L (histograms) ~ 9L  (54 at L=6),
                     L of them exp: far under the H100's ~60 TFLOP/s fp32 even at 1 TB/s, so memory-bound.
  backward: bytes  = read z + read grad_z_q + write grad_z                           = 6 B (bf16) / 12 B (fp32)
            FLOPs  ~ 16L (recompute, weights, two reductions) ~ 96 at L=6; still memory-bound.
  The histograms are C x L per launch, reduced in registers per program and added with
  2L atomics per program: negligible traffic. No N x L buffer is ever written: the backward
  recomputes the assignment from z.
Layout: z is contiguous (B, C, h, w) viewed as rows of HW elements; program (row, block) sees one
channel, so its histogram contribution goes to one row of the C x L tables.

File order, as in the Triton tutorials: kernels -> launchers -> autograd.Function.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_BLOCK = 1024


@triton.jit
def _load_block(z_ptr, HW, C, BLOCK: tl.constexpr):
    """Program (row, block): row = b * C + channel, so one program's elements share a channel."""
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < HW
    base = row.to(tl.int64) * HW
    z = tl.load(z_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
    return row % C, offs, mask, base, z


@triton.jit
def _nearest(z, c_ptr, L: tl.constexpr):
    """Per element: the smallest squared distance, its centre index (ties -> lowest) and value."""
    best_d = tl.full(z.shape, float("inf"), tl.float32)
    best_j = tl.zeros(z.shape, tl.int32)
    best_c = tl.zeros(z.shape, tl.float32)
    for j in tl.static_range(L):
        cj = tl.load(c_ptr + j).to(tl.float32)
        diff = z - cj
        d = diff * diff
        upd = d < best_d  # strict: an equal distance keeps the earlier centre, like torch.argmin
        best_d = tl.where(upd, d, best_d)
        best_j = tl.where(upd, j, best_j)
        best_c = tl.where(upd, cj, best_c)
    return best_d, best_j, best_c


@triton.jit
def _softmax_denominator(z, c_ptr, best_d, sigma, L: tl.constexpr):
    """sum_j exp(-sigma d_j + sigma d_min) and sum_j exp(...) c_j (stable: the max logit is -sigma d_min)."""
    den = tl.zeros(z.shape, tl.float32)
    num = tl.zeros(z.shape, tl.float32)
    for j in tl.static_range(L):
        cj = tl.load(c_ptr + j).to(tl.float32)
        diff = z - cj
        e = tl.exp(-sigma * (diff * diff - best_d))
        den += e
        num += e * cj
    return den, num


@triton.jit
def _quantize_fwd_kernel(z_ptr, c_ptr, zq_ptr, sym_ptr, soft_ptr, hard_ptr, HW, C, sigma,
                         L: tl.constexpr, BLOCK: tl.constexpr):
    ch, offs, mask, base, z = _load_block(z_ptr, HW, C, BLOCK)
    best_d, best_j, best_c = _nearest(z, c_ptr, L)
    den, num = _softmax_denominator(z, c_ptr, best_d, sigma, L)
    inv_den = 1.0 / den
    z_soft = num * inv_den
    z_q = z_soft + (best_c - z_soft)  # forward value of z_soft + stopgrad(z_hard - z_soft)
    tl.store(zq_ptr + base + offs, z_q.to(zq_ptr.dtype.element_ty), mask=mask)
    tl.store(sym_ptr + base + offs, best_j.to(tl.uint8), mask=mask)

    for j in tl.static_range(L):
        cj = tl.load(c_ptr + j).to(tl.float32)
        diff = z - cj
        w = tl.exp(-sigma * (diff * diff - best_d)) * inv_den
        tl.atomic_add(soft_ptr + ch * L + j, tl.sum(tl.where(mask, w, 0.0), axis=0))
        tl.atomic_add(hard_ptr + ch * L + j, tl.sum((mask & (best_j == j)).to(tl.int32), axis=0))


@triton.jit
def _quantize_bwd_kernel(z_ptr, c_ptr, gzq_ptr, gsoft_ptr, gz_ptr, gc_ptr, HW, C, sigma,
                         L: tl.constexpr, BLOCK: tl.constexpr):
    ch, offs, mask, base, z = _load_block(z_ptr, HW, C, BLOCK)
    gy = tl.load(gzq_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
    gy = tl.where(mask, gy, 0.0)

    best_d, best_j, best_c = _nearest(z, c_ptr, L)
    den, num = _softmax_denominator(z, c_ptr, best_d, sigma, L)
    inv_den = 1.0 / den

    # g_w_j = dLoss/dw_j = gy * c_j (through z_soft) + gH[ch, j] (through the soft histogram)
    gbar = tl.zeros(z.shape, tl.float32)  # sum_k w_k g_w_k
    for j in tl.static_range(L):
        cj = tl.load(c_ptr + j).to(tl.float32)
        diff = z - cj
        w = tl.exp(-sigma * (diff * diff - best_d)) * inv_den
        gbar += w * (gy * cj + tl.load(gsoft_ptr + ch * L + j))

    gz = tl.zeros(z.shape, tl.float32)
    for j in tl.static_range(L):
        cj = tl.load(c_ptr + j).to(tl.float32)
        diff = z - cj
        w = tl.exp(-sigma * (diff * diff - best_d)) * inv_den
        g_a = w * (gy * cj + tl.load(gsoft_ptr + ch * L + j) - gbar)  # softmax backward: dLoss/dlogit_j
        g_a = tl.where(mask, g_a, 0.0)
        gz += g_a * (-2.0 * sigma * diff)  # dlogit_j/dz = -2 sigma (z - c_j)
        gc = tl.where(mask, gy * w, 0.0) + g_a * (2.0 * sigma * diff)  # direct z_soft term + logit term
        tl.atomic_add(gc_ptr + j, tl.sum(gc, axis=0))
    tl.store(gz_ptr + base + offs, gz.to(gz_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------- launchers
def _grid(z: torch.Tensor) -> tuple[int, int, int, int]:
    b, c = z.shape[:2]
    hw = z[0, 0].numel() if z.numel() else 0
    block = max(16, min(MAX_BLOCK, triton.next_power_of_2(max(hw, 1))))
    return b * c, triton.cdiv(hw, block), hw, block


def quantize_forward(z: torch.Tensor, centres: torch.Tensor, sigma: float,
                     z_q: torch.Tensor | None = None, symbols: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """z (B, C, h, w) fp32/bf16 -> the reference's dict. `z_q`/`symbols` may be passed preallocated."""
    assert z.dim() == 4, "z must be (B, C, h, w)"
    z = z.contiguous()
    centres = centres.detach().contiguous().float()
    L = centres.numel()
    B, C = z.shape[:2]
    z_q = torch.empty_like(z) if z_q is None else z_q
    symbols = torch.empty(z.shape, dtype=torch.uint8, device=z.device) if symbols is None else symbols
    soft = torch.zeros((C, L), dtype=torch.float32, device=z.device)
    hard = torch.zeros((C, L), dtype=torch.int32, device=z.device)
    rows, blocks, hw, block = _grid(z)
    if rows and blocks:
        _quantize_fwd_kernel[(rows, blocks)](z, centres, z_q, symbols, soft, hard, hw, C, float(sigma),
                                             L=L, BLOCK=block)
    return {"z_q": z_q, "symbols": symbols, "soft_hist": soft, "hard_hist": hard.long()}


def quantize_backward(z: torch.Tensor, centres: torch.Tensor, sigma: float, grad_z_q: torch.Tensor,
                      grad_soft_hist: torch.Tensor, grad_z: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (grad_z in z's dtype, grad_centres fp32 (L,)). Recomputes w from z: no saved N x L buffer."""
    z = z.contiguous()
    centres = centres.detach().contiguous().float()
    grad_z_q = grad_z_q.contiguous()
    grad_soft_hist = grad_soft_hist.contiguous().float()
    grad_z = torch.empty_like(z) if grad_z is None else grad_z
    grad_c = torch.zeros_like(centres)
    rows, blocks, hw, block = _grid(z)
    if rows and blocks:
        _quantize_bwd_kernel[(rows, blocks)](z, centres, grad_z_q, grad_soft_hist, grad_z, grad_c, hw, z.shape[1],
                                             float(sigma), L=centres.numel(), BLOCK=block)
    return grad_z, grad_c


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
