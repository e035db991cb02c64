"""The codec training's precision policy: bf16 autocast where the hardware runs bf16 natively, fp32 elsewhere.

Measured side by side on the 2-core AVX512_BF16 development CPU (benchmarks/codec_train_bf16.py): a bf16
autocast + channels_last training step of ls-c32 ran 1.8-1.9x faster than fp32, and trained to the same
held-out loss. Where the CPU has no native bf16, oneDNN emulates it and fp32 is the faster choice.
Only the forward pass runs under autocast; the losses are computed in fp32.
(latentstore.device holds the CPU bf16 policy of coding; this is the training side of it.)
"""
from __future__ import annotations

import contextlib

import torch

from latentstore.device import autocast_for
from latentstore.errors import UsageError


def cpu_has_native_bf16() -> bool:
    """AVX512_BF16 or AMX-BF16: where oneDNN runs bf16 convolutions natively (faster than fp32). The one test
    lives in latentstore.device (the coding policy's); the flags are read here only if it is absent."""
    from latentstore import device
    if hasattr(device, "cpu_native_bf16"):
        return bool(device.cpu_native_bf16())
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(precision: str, device: str) -> str:
    """'auto' -> 'bf16' on CUDA and on a CPU with native bf16, else 'fp32'."""
    if precision not in ("auto", "fp32", "bf16"):
        raise UsageError(f"--precision must be auto, fp32 or bf16 (got {precision!r})")
    if precision == "auto":
        return "bf16" if device == "cuda" or cpu_has_native_bf16() else "fp32"
    return precision


def train_autocast(precision: str, device: str):
    """The forward pass's autocast: bf16 on CUDA (latentstore.device's policy) or the CPU, or none (fp32)."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return autocast_for(device) if device == "cuda" else torch.autocast("cpu", dtype=torch.bfloat16)
