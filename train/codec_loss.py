"""The codec's training loss (latentstore_train.codec trains with it; joint finetuning reuses eq. 1).

Torfason et al. eq. 1: MSE(x, x_hat) on the 0..255 scale + beta * max(H_soft - H_t, 0); the -msssim variants
swap the distortion for msssim_weight * (1 - MS-SSIM), optionally with some MSE kept.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from latentstore_train import codec_data


def compression_loss(out: dict, x: torch.Tensor, beta: float, target_bits: float) -> dict[str, torch.Tensor]:
    """Torfason et al. eq. 1: MSE(x, x_hat) on the 0..255 scale + beta * max(H_soft - H_t, 0)."""
    mse255 = F.mse_loss(out["x_hat"].float(), x) * (255.0 ** 2)
    rate = torch.relu(out["entropy_soft"] - target_bits)
    return {"loss": mse255 + beta * rate, "mse255": mse255, "rate_hinge": rate}


def loss_terms(model, x: torch.Tensor, distortion: str = "mse", msssim_weight: float = 3000.0,
               mse_weight: float = 0.0, autocast=None, rate_scale: float = 1.0) -> dict:
    """The training loss: eq. 1 (MSE), or with msssim_weight * (1 - MS-SSIM) [+ mse_weight * MSE] as the
    distortion; H_t is the point's times rate_scale. The forward runs under `autocast` (a context; None: none),
    the loss always in fp32."""
    with autocast if autocast is not None else contextlib.nullcontext():
        out = model(x)
    c = compression_loss(out, x, model.cfg.beta, rate_scale * model.cfg.target_bits_per_symbol)
    loss = c["loss"]
    if distortion == "msssim":
        loss = (msssim_weight * codec_data.msssim_distortion(out["x_hat"], x) + mse_weight * c["mse255"]
                + model.cfg.beta * c["rate_hinge"])
    return {"loss": loss, "mse255": c["mse255"], **out}
