"""Where work runs: one device resolver, and the precision policy of the codec's networks.

Training (`autocast_for`): bf16 autocast on CUDA, fp32 elsewhere, as before.
Coding (`codec_policy`: the encoder and decoder of compress, decompress, convert and the service):
  CUDA                        bf16 autocast, channels_last
  CPU with native bf16        bf16 autocast, channels_last: AVX512_BF16 or AMX (2-2.6x the fp32 encoder on
                              the dev machine's EPYC, benchmarks/results/convert_cpu_policy.md); the
                              decoder's trunk in bf16, its last convolution in fp32 (model.decode)
  any other CPU               fp32 (bf16 is emulated there, slower than fp32)
LATENTSTORE_PRECISION=fp32 (or bf16, or auto) forces a choice; `latentstore convert --precision` too.
On the CPU, bf16 and fp32 symbols agree on ~99.86% of latent cells; a store records the policy that
wrote it (schema.policy["encoder"]) and a resume keeps it. Same inputs, same policy, same machine:
same bytes (tests/test_cpu_policy.py), whatever the batch, the thread count or the tiling.
"""
from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass

import torch

from .errors import UsageError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "bf16", "fp32")
PRECISION_ENV = "LATENTSTORE_PRECISION"  # forces the coding precision: auto | bf16 | fp32
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bf16 dot products


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
    """The autocast context of the training loops: bf16 on CUDA, disabled elsewhere."""
    if device == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_channels_last(x: torch.Tensor, device: str) -> torch.Tensor:
    """NHWC for convolutions on CUDA (the layout tensor cores want); unchanged elsewhere."""
    return x.contiguous(memory_format=torch.channels_last) if device == "cuda" else x


@functools.lru_cache(maxsize=1)
def cpu_native_bf16() -> bool:
    """Whether this CPU computes bf16 dot products natively (AVX512_BF16 or AMX): /proc/cpuinfo's flags,
    else (no /proc) torch's CPU capability naming AMX. torch's capability string alone says only 'AVX512'
    on an AVX512_BF16 EPYC, hence the flags."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return any(fl in flags for fl in BF16_CPU_FLAGS)
    except OSError:
        pass
    return "AMX" in str(torch.backends.cpu.get_cpu_capability()).upper()


@dataclass(frozen=True)
class CodecPolicy:
    """How the codec's networks run when they code (not when they train)."""
    device: str = "cpu"  # cpu | cuda
    dtype: str = "fp32"  # fp32 | bf16: autocast dtype of the encoder's convolutions and of the decoder's trunk
    layout: str = "channels_last"  # the activations' memory format (does not change a value on the CPU)
    compile: bool = False  # torch.compile of the encoder (conversion, fixed size): other rounding than eager

    @property
    def bf16(self) -> bool:
        return self.dtype == "bf16"

    def autocast(self):
        """The autocast region of the networks' bf16 part (a no-op for fp32)."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast("cuda" if self.device == "cuda" else "cpu", dtype=torch.bfloat16)

    def layout_of(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.layout == "channels_last" and x.dim() == 4 else x

    def record(self) -> dict:
        """What a store's schema.policy["encoder"] keeps, so that a resume runs the same arithmetic."""
        return {"device": self.device, "dtype": self.dtype, "layout": self.layout,
                "compile": "torch.compile" if self.compile else "eager"}

    def describe(self) -> str:
        return f"{self.dtype} {self.layout} on {self.device}" + (", torch.compile" if self.compile else "")


def resolve_precision(precision: str | None = None) -> str:
    """The precision asked for: the argument, else LATENTSTORE_PRECISION, else 'auto'."""
    p = (precision if precision is not None else os.environ.get(PRECISION_ENV, "")).strip().lower() or "auto"
    if p not in PRECISIONS:
        src = "--precision" if precision is not None else PRECISION_ENV
        raise UsageError(f"{src} must be one of {', '.join(PRECISIONS)} (got {p!r})")
    return p


def codec_policy(device: str | torch.device = "cpu", precision: str | None = None, compile: bool = False) -> CodecPolicy:
    """The coding policy on `device`: bf16 on CUDA and on CPUs with native bf16, fp32 elsewhere, unless
    `precision` (or LATENTSTORE_PRECISION) says bf16 or fp32."""
    dev = torch.device(device).type
    dev = "cuda" if dev == "cuda" else "cpu"
    p = resolve_precision(precision)
    if p == "auto":
        p = "bf16" if dev == "cuda" or cpu_native_bf16() else "fp32"
    return CodecPolicy(device=dev, dtype=p, layout="channels_last", compile=compile)


def policy_from_record(rec, device: str) -> CodecPolicy | None:
    """A store's recorded encoder policy back into a CodecPolicy (None: a store from before policies were
    recorded, written in fp32 on the CPU or bf16 on CUDA)."""
    if isinstance(rec, dict) and rec.get("dtype") in ("fp32", "bf16"):
        return CodecPolicy(device=rec.get("device", device), dtype=rec["dtype"],
                           layout=rec.get("layout", "channels_last"), compile=rec.get("compile") == "torch.compile")
    return None
