"""Image quality metrics on uint8 RGB arrays: PSNR (paper's definition) and MS-SSIM (pytorch-msssim)."""
from __future__ import annotations

import math

import numpy as np
import torch
from pytorch_msssim import ms_ssim

_MSSSIM_WEIGHTS = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def msssim(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM on 0..255 RGB with the standard 5 scales and 11-px window when the image has room
    (shorter side > 160). Smaller images use a smaller window and fewer scales (renormalised
    weights); below 33 px it is single-scale SSIM. Figures on such images are flagged by size."""
    from pytorch_msssim import ssim
    x = torch.from_numpy(np.array(a)).permute(2, 0, 1).unsqueeze(0).double()
    y = torch.from_numpy(np.array(b)).permute(2, 0, 1).unsqueeze(0).double()
    side = min(a.shape[:2])
    if side > 160:
        return float(ms_ssim(x, y, data_range=255.0, size_average=True))
    if side <= 32:
        win = max(3, min(11, side - (1 - side % 2)))
        return float(ssim(x, y, data_range=255.0, size_average=True, win_size=win))
    win = 11
    while (win - 1) * 16 >= side:
        win -= 2
    scales = 5
    while scales > 1 and side // 2 ** (scales - 1) < win:
        scales -= 1
    w = _MSSSIM_WEIGHTS[:scales]
    w = [v / sum(w) for v in w]
    return float(ms_ssim(x, y, data_range=255.0, size_average=True, weights=w, win_size=win))


def bpp(n_bytes: int, shape: tuple) -> float:
    return n_bytes * 8.0 / (shape[0] * shape[1])
