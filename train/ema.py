"""An exponential moving average of a model's weights, kept beside the training run and exported in its place.

Late in the codec programme (issue #29) two checkpoints 700 steps apart gave 31.34 and 30.83 dB on the same 12
validation photos (eval rd; smooth photos moved by 1-2 dB): at lr ~1e-4 single weights wander. The average of the
last ~1/(1 - decay) steps' weights is what validation measures and what an export installs; training itself
continues on the raw weights.
"""
from __future__ import annotations

import contextlib

import torch

PREFIX = "ema/"  # the averaged weights' names in a checkpoint's tensors file


class WeightEMA:
    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        # starts from the weights it is given: a run that gains an EMA mid-way averages from there
        self.shadow = {k: p.detach().float().clone() for k, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for k, p in model.named_parameters():
            self.shadow[k].lerp_(p.detach().float(), 1.0 - self.decay)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {PREFIX + k: v.detach().cpu().contiguous() for k, v in self.shadow.items()}

    def load(self, tensors: dict[str, torch.Tensor]) -> bool:
        """Restore from a checkpoint's tensors; False (the shadow left at the current weights) when it has none."""
        if not any(k.startswith(PREFIX) for k in tensors):
            return False
        for k, v in self.shadow.items():
            v.copy_(tensors[PREFIX + k])
        return True

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        for k, p in model.named_parameters():
            p.copy_(self.shadow[k].to(p.dtype))

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module):
        """The model holds the averaged weights inside the block and its own again after it."""
        raw = {k: p.detach().clone() for k, p in model.named_parameters()}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for k, p in model.named_parameters():
                    p.copy_(raw[k])
