"""The soft-to-hard quantizer as an nn.Module.

The math lives in latentstore_kernels.reference; latentstore_kernels.quantize picks the fused
Triton kernel on CUDA and the reference elsewhere (LATENTSTORE_KERNELS=triton|reference forces one).
"""
from __future__ import annotations

import torch
import torch.nn as nn

import latentstore_kernels as K


class SoftToHardQuantizer(nn.Module):
    """Learnable centres; returns z_q, symbols, per-channel soft/hard histograms and both entropies."""

    def __init__(self, L: int = 6, centre_range: float = 2.0, sigma: float = 1.0):
        super().__init__()
        self.centres = nn.Parameter(torch.linspace(-centre_range, centre_range, L))
        self.sigma = sigma  # set by the training schedule; not a parameter

    def sorted_centres(self) -> torch.Tensor:
        """Centres as frozen into a bitstream: symbol j means the j-th centre in this order."""
        return self.centres.detach().float()

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        q = K.quantize(z, self.centres, float(self.sigma))
        q["entropy_soft"] = K.entropy_bits(q["soft_hist"])  # differentiable; the training rate term
        q["entropy_hard"] = K.entropy_bits(q["hard_hist"].detach()).detach()
        return q

    @torch.no_grad()
    def symbols(self, z: torch.Tensor, bias: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return K.symbols(z, self.centres.detach(), bias)

    def dequantize(self, symbols: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return K.dequantize(symbols, self.centres.detach(), dtype)
