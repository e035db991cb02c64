"""Plain-PyTorch reference for the soft-to-hard quantizer (Agustsson et al. 2017).

This file *defines* the functions. The fused Triton kernels in this package must match it
(tests compare the two on irregular shapes), and it is the CPU path of the codec.

For a latent element z_i and L centres c_j:
    d_ij   = (z_i - c_j)^2                             squared distance, fp32
    w_ij   = softmax_j(-sigma * d_ij)                   soft assignment
    z_soft = sum_j w_ij c_j
    idx_i  = argmin_j d_ij  (ties -> the lowest j)      nearest centre, the symbol
    z_hard = c_{idx_i}
    out_i  = z_soft + stopgrad(z_hard - z_soft)        forward value: hard; gradient: soft
Histograms, per channel (C x L):
    soft_hist[c, j] = sum_{i in channel c} w_ij
    hard_hist[c, j] = #{i in channel c : idx_i = j}
Entropy estimate (bits per symbol), over the whole tensor:
    p_j = sum_c soft_hist[c, j] / N ;  H = -sum_j p_j log2 p_j
"""
from __future__ import annotations

import torch

LOG2_EPS = 1e-12  # keeps log2(0) finite; p_j = 0 contributes 0 to H in the limit anyway


def _f32(x: torch.Tensor) -> torch.Tensor:
    """Compute in fp32, or in fp64 when given fp64 (numerical gradient checks)."""
    return x if x.dtype == torch.float64 else x.float()


def _as_nc(z: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (C, B*h*w) view in fp32, the layout histograms are reduced over."""
    b, c = z.shape[:2]
    return z.float().transpose(0, 1).reshape(c, -1)


def soft_assign(z: torch.Tensor, centres: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (w, d): soft assignment weights and squared distances, shape z.shape + (L,), fp32."""
    diff = _f32(z).unsqueeze(-1) - _f32(centres)  # (..., L)
    d = diff * diff
    w = torch.softmax(-sigma * d, dim=-1)
    return w, d


def quantize_reference(z: torch.Tensor, centres: torch.Tensor, sigma: float) -> dict[str, torch.Tensor]:
    """Training forward of the quantizer, differentiable w.r.t. z and centres.

    z: (B, C, h, w) fp32 or bf16; centres: (L,). Returns a dict with fixed keys:
      z_q (z's dtype), symbols (uint8, z's shape), soft_hist (C, L) fp32, hard_hist (C, L) int64.
    """
    w, d = soft_assign(z, centres, sigma)  # (B, C, h, w, L)
    c32 = _f32(centres)
    z_soft = (w * c32).sum(-1)
    symbols = torch.argmin(d, dim=-1)  # torch returns the first minimum: ties -> lowest index
    z_hard = c32[symbols]
    z_q = z_soft + (z_hard - z_soft).detach()
    L = centres.numel()
    soft_hist = w.transpose(0, 1).reshape(z.shape[1], -1, L).sum(1)  # (C, L)
    hard_hist = symbol_histogram(symbols, L)
    return {
        "z_q": z_q.to(z.dtype),
        "symbols": symbols.to(torch.uint8),
        "soft_hist": soft_hist,
        "hard_hist": hard_hist,
    }


def symbol_histogram(symbols: torch.Tensor, L: int) -> torch.Tensor:
    """Per-channel counts (C, L) int64 of symbols shaped (B, C, h, w)."""
    s = _as_nc(symbols.long()).long()
    c = s.shape[0]
    offs = torch.arange(c, device=s.device).unsqueeze(1) * L
    return torch.bincount((s + offs).reshape(-1), minlength=c * L).reshape(c, L)


def symbols_reference(z: torch.Tensor, centres: torch.Tensor, bias: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Conversion path: nearest-centre symbols and per-channel hard histograms, no gradients.

    bias: optional (C,) added to z first (the encoder's last-layer bias, fused in the kernel).
    """
    if bias is not None:
        z = z.float() + bias.float().view(1, -1, 1, 1)
    diff = z.float().unsqueeze(-1) - centres.float()
    symbols = torch.argmin(diff * diff, dim=-1)
    return {"symbols": symbols.to(torch.uint8), "hard_hist": symbol_histogram(symbols, centres.numel())}


def entropy_bits(hist: torch.Tensor) -> torch.Tensor:
    """H = -sum p log2 p of a histogram (..., L) summed over all leading dims; bits per symbol."""
    h = _f32(hist).reshape(-1, hist.shape[-1]).sum(0)
    p = h / h.sum().clamp_min(LOG2_EPS)
    return -(p * torch.log2(p.clamp_min(LOG2_EPS))).sum()


def dequantize(symbols: torch.Tensor, centres: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 symbols -> centre values. Runs wherever `symbols` lives (GPU-side for loaders)."""
    return centres.to(device=symbols.device, dtype=dtype)[symbols.long()]
