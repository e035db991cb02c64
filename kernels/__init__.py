"""latentstore_kernels: the quantizer's math (reference.py) and its fused Triton kernels.

Dispatch: CUDA tensors take the Triton kernels, everything else the plain-PyTorch reference.
LATENTSTORE_KERNELS=triton forces the kernels (on the CPU that needs TRITON_INTERPRET=1);
LATENTSTORE_KERNELS=reference forces the reference.
"""
from __future__ import annotations

import os

import torch

from .reference import (dequantize, entropy_bits, quantize_reference, symbol_histogram,  # noqa: F401
                        symbols_reference)

_BACKENDS = ("auto", "triton", "reference")


def backend_for(t: torch.Tensor) -> str:
    choice = os.environ.get("LATENTSTORE_KERNELS", "auto").lower()
    if choice not in _BACKENDS:
        raise ValueError(f"LATENTSTORE_KERNELS={choice!r}: expected one of {', '.join(_BACKENDS)}")
    if choice != "auto":
        return choice
    return "triton" if t.is_cuda else "reference"


def quantize(z: torch.Tensor, centres: torch.Tensor, sigma: float) -> dict[str, torch.Tensor]:
    """Training quantizer: {'z_q', 'symbols', 'soft_hist' (C, L), 'hard_hist' (C, L)}."""
    if backend_for(z) == "triton":
        from .fused_quantize import quantize_fused
        return quantize_fused(z, centres, sigma)
    return quantize_reference(z, centres, sigma)


def symbols(z: torch.Tensor, centres: torch.Tensor, bias: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Conversion: {'symbols' uint8, 'hard_hist' (C, L)}, with an optional fused per-channel bias."""
    if backend_for(z) == "triton":
        from .fused_symbols import symbols_fused
        return symbols_fused(z, centres, bias)
    return symbols_reference(z, centres, bias)
