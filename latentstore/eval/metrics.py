"""Image quality metrics on uint8 RGB arrays: PSNR (paper's definition) and MS-SSIM.

MS-SSIM is computed here in torch, batched: one reference against N reconstructions in one call
(`msssim_batch`), float32, on the GPU when there is one. It follows pytorch_msssim's definition
exactly (Gaussian window 11 / sigma 1.5, valid filtering, K = (0.01, 0.03), 2x2 average pooling
with odd sides padded, ReLU on the contrast terms, the standard 5 weights); tests/test_eval.py
checks it against pytorch_msssim in float64 to 1e-4. Why not pytorch_msssim itself: `eval rd`
compared 35 settings per photo one by one in float64, ~1 s each on 2 cores, which was 95% of its time.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

_MSSSIM_WEIGHTS = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333]
_K1, _K2 = 0.01, 0.03
_SHIFT = 128.0  # second moments are taken around mid-grey: 4x less cancellation in float32 than around 0
_BATCH_PIXELS = 2_000_000  # reconstructions x pixels per chunk: ~0.3 GB of float32 temporaries at most


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def msssim_params(side: int) -> tuple[int, list[float]]:
    """(window, weights) for an image whose shorter side is `side`.

    The standard 5 scales and 11-px window when the image has room (shorter side > 160). Smaller
    images use a smaller window and fewer scales (renormalised weights); at 32 px and below it is
    single-scale SSIM (one weight, and no ReLU, as pytorch_msssim.ssim). Figures on such images
    are flagged by size where they are reported."""
    if side > 160:
        return 11, list(_MSSSIM_WEIGHTS)
    if side <= 32:
        return max(3, min(11, side - (1 - side % 2))), [1.0]
    win = 11
    while (win - 1) * 16 >= side:
        win -= 2
    scales = 5
    while scales > 1 and side // 2 ** (scales - 1) < win:
        scales -= 1
    w = _MSSSIM_WEIGHTS[:scales]
    return win, [v / sum(w) for v in w]


def _gauss(win: int, device) -> torch.Tensor:
    coords = torch.arange(win, dtype=torch.float32) - win // 2  # built as pytorch_msssim builds it
    g = torch.exp(-(coords ** 2) / (2 * 1.5 ** 2))
    return (g / g.sum()).to(device)


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian, 'valid' (no padding), every plane alone: (N, C, H, W) -> (N, C, H-w+1, W-w+1).

    CPU: every plane a channel of two depthwise convolutions in channels-last layout, the layout
    oneDNN's depthwise kernels are made for, then back to NCHW. Measured on 2 cores, CPU seconds: for
    108 planes of 512x768, 0.45 against 0.75 for shifted adds and 1.4-4 for NCHW convolutions; for a
    whole 35-setting MS-SSIM of a 512x910 photo, 9 against 15 when everything is kept planes-last
    (elementwise ops on channel slices are slow). CUDA: shifted in-place adds, exact float32 (no cuDNN
    TF32 path to rule out)."""
    if x.is_cuda:
        return _blur_adds(x, g)
    k = g.numel()
    N, C, H, W = x.shape
    x = x.reshape(1, N * C, H, W).contiguous(memory_format=torch.channels_last)
    x = F.conv2d(x, g.view(1, 1, k, 1).expand(N * C, 1, k, 1).contiguous(), groups=N * C)
    x = F.conv2d(x, g.view(1, 1, 1, k).expand(N * C, 1, 1, k).contiguous(), groups=N * C)
    # back to NCHW: elementwise ops mixing the two layouts fall back to slow strided loops (measured 3x)
    return x.contiguous().view(N, C, H - k + 1, W - k + 1)


def _blur_adds(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    k = g.numel()
    H, W = x.shape[-2:]
    taps = [float(v) for v in g]
    y = x[..., 0: H - k + 1, :] * taps[0]
    for i in range(1, k):
        y.add_(x[..., i: H - k + 1 + i, :], alpha=taps[i])
    z = y[..., 0: W - k + 1] * taps[0]
    for i in range(1, k):
        z.add_(y[..., i: W - k + 1 + i], alpha=taps[i])
    return z


def _pool(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 2, padding=[s % 2 for s in x.shape[2:]])  # odd sides padded (and counted), as pytorch_msssim


class _Reference:
    """The reference image's side of SSIM at every scale, computed once for all reconstructions."""

    def __init__(self, X: torch.Tensor, g: torch.Tensor, levels: int):
        self.levels = []
        for level in range(levels):
            Xs = X - _SHIFT
            f = _blur(torch.cat([Xs, Xs * Xs]), g)
            mu1s = f[:1]
            self.levels.append((Xs, mu1s, f[1:] - mu1s * mu1s))  # shifted pixels, shifted mean, variance
            if level < levels - 1:
                X = _pool(X)


def _ssim_cs(ref: tuple, Y: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One scale: the reference's (Xs, mu1s, s1), each (1, 3, H, W), against Y (n, 3, H, W), 0..255 ->
    per-channel (ssim, cs), each (n, 3). Memory-bound: written as few full passes as possible, in place."""
    C1, C2 = (_K1 * 255.0) ** 2, (_K2 * 255.0) ** 2
    Xs, mu1s, s1 = ref
    n = Y.shape[0]
    q = torch.empty((3, *Y.shape), dtype=Y.dtype, device=Y.device)  # Ys, Ys^2, Xs*Ys: blurred in one call
    torch.sub(Y, _SHIFT, out=q[0])
    torch.mul(q[0], q[0], out=q[1])
    torch.mul(q[0], Xs, out=q[2])
    f = _blur(q.view(1, 9 * n, *Y.shape[2:]), g)
    f = f.view(3, n, 3, *f.shape[-2:])
    mu2s, s2, s12 = f[0], f[1], f[2]
    s2.addcmul_(mu2s, mu2s, value=-1)  # variances and covariance do not depend on the shift
    s12.addcmul_(mu1s, mu2s, value=-1)
    cs_map = s12.mul_(2).add_(C2).div_(s2.add_(s1).add_(C2))
    mu1 = mu1s + _SHIFT
    mu2 = mu2s.add_(_SHIFT)
    num = torch.mul(mu2, mu1).mul_(2).add_(C1)
    ssim_map = num.div_(mu2.mul_(mu2).add_(mu1 * mu1).add_(C1)).mul_(cs_map)
    return ssim_map.mean(dim=(2, 3)), cs_map.mean(dim=(2, 3))


def _to_tensor(a: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.uint8)).to(device).permute(2, 0, 1).float()  # copy: PIL arrays are read-only


def msssim_batch(ref: np.ndarray, recs: list[np.ndarray], device: str | None = None) -> np.ndarray:
    """MS-SSIM of each (H, W, 3) uint8 reconstruction against the (H, W, 3) uint8 reference -> (N,) float64.

    One batched computation (the reference's side once, reconstructions in chunks that bound memory),
    float32, on `device` (default: CUDA when present)."""
    if not len(recs):
        return np.zeros(0)
    for r in recs:
        if r.shape != ref.shape:
            raise ValueError(f"reconstruction {r.shape} and reference {ref.shape} differ in shape")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    H, W = ref.shape[:2]
    win, weights = msssim_params(min(H, W))
    g = _gauss(win, device)
    w = torch.tensor(weights, dtype=torch.float32, device=device).view(-1, 1, 1)
    chunk = max(1, _BATCH_PIXELS // (H * W))
    out = []
    with torch.no_grad():
        X = _Reference(_to_tensor(ref, device)[None], g, len(weights))
        for i in range(0, len(recs), chunk):
            Y = torch.stack([_to_tensor(r, device) for r in recs[i: i + chunk]])  # (n, 3, H, W)
            if len(weights) == 1:  # single-scale SSIM, as pytorch_msssim.ssim (no ReLU)
                out.append(_ssim_cs(X.levels[0], Y, g)[0].mean(1).double().cpu())
                continue
            terms = []
            for level in range(len(weights)):
                ssim_c, cs_c = _ssim_cs(X.levels[level], Y, g)
                if level < len(weights) - 1:
                    terms.append(torch.relu(cs_c))
                    Y = _pool(Y)
            terms.append(torch.relu(ssim_c))
            out.append(torch.prod(torch.stack(terms) ** w, dim=0).mean(1).double().cpu())  # (n,): channels averaged
    return torch.cat(out).numpy()


def msssim(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM on 0..255 RGB (see msssim_params for small images)."""
    return float(msssim_batch(a, [b])[0])


def bpp(n_bytes: int, shape: tuple) -> float:
    return n_bytes * 8.0 / (shape[0] * shape[1])
