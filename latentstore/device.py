"""Where work runs: one device resolver and one autocast policy for conversion, training and evaluation.

bf16 autocast on CUDA (tensor cores, half the activation bytes); plain fp32 on the CPU, where bf16
convolutions are slower and would change the bytes a conversion writes.
"""
from __future__ import annotations

import contextlib

import torch

from .errors import UsageError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> str:
    """'auto' -> 'cuda' when a GPU is present, else 'cpu'; 'cuda' without a GPU is a usage error."""
    if name not in DEVICES:
        raise UsageError(f"--device must be one of {', '.join(DEVICES)} (got {name!r})")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    return name


def autocast_for(device: str):
    """The autocast context every hot loop uses: bf16 on CUDA, disabled elsewhere."""
    if device == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_channels_last(x: torch.Tensor, device: str) -> torch.Tensor:
    """NHWC for convolutions on CUDA (the layout tensor cores want); unchanged elsewhere."""
    return x.contiguous(memory_format=torch.channels_last) if device == "cuda" else x
