"""Train a codec operating point: latentstore train codec --name ls-c16 --out runs/ls-c16
(also: python -m latentstore_train.codec ...)

Data: random crops of the offline photos' training split (latentstore.data.photos), flips included.
Loss (Torfason et al. eq. 1): MSE(x, x_hat) on the 0..255 scale + beta * max(H_soft - H_t, 0),
with H_t = target_bpp * 64 / C bits per symbol.
Sigma schedule: the soft assignment's sharpness rises geometrically from `sigma` to `sigma_final`
over the run, so the soft histogram (the rate term) tracks the hard one ever more closely.
Learning rate: `lr`, divided by 10 for the last 20% of steps.
Runs on CPU (fp32) and CUDA (bf16 autocast) alike; checkpoints resume exactly.
"""
from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from latentstore.codec.model import CodecConfig, LatentCodec
from latentstore.codec.zoo import OPERATING_POINTS, save_codec
from latentstore.data.photos import available_photos, resize_shorter
from latentstore.device import autocast_for, resolve_device
from latentstore.errors import UsageError
from latentstore_train.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint


@dataclass
class CodecTrainConfig:
    codec: CodecConfig = field(default_factory=CodecConfig)  # the operating point being trained
    steps: int = 3000  # optimizer steps
    batch_size: int = 8  # crops per step
    crop: int = 128  # crop side in pixels (multiple of 8)
    lr: float = 3e-4  # Adam learning rate (x0.1 for the last 20% of steps)
    sigma_final: float = 8.0  # sigma at the last step; starts at codec.sigma
    photo_side: int = 512  # photos are downscaled to this shorter side before cropping (camera-sized wallpapers are too smooth at full size)
    seed: int = 0  # seeds the crop sampler and the initialisation
    ckpt_every: int = 200  # steps between checkpoints
    device: str = "auto"  # auto | cpu | cuda
    max_photos: int = 0  # 0 = all training photos; >0 = the first N (tests)
    stop_at: int = 0  # stop this invocation after this step, schedule unchanged (0 = run to `steps`); resume tests


def codec_config_for(name: str, beta: float | None = None, N: int | None = None) -> CodecConfig:
    """The config of a named operating point (C and target bpp from the paper), with optional overrides."""
    if name not in OPERATING_POINTS:
        raise UsageError(f"unknown operating point {name!r} (known: {', '.join(OPERATING_POINTS)})")
    C, bpp = OPERATING_POINTS[name]
    cfg = CodecConfig(name=name, C=C, target_bpp=bpp)
    if beta is not None:
        cfg.beta = beta
    if N is not None:
        cfg.N = N
    return cfg


def sigma_at(cfg: CodecTrainConfig, step: int) -> float:
    t = min(1.0, step / max(1, cfg.steps))
    return cfg.codec.sigma * (cfg.sigma_final / cfg.codec.sigma) ** t


def lr_at(cfg: CodecTrainConfig, step: int) -> float:
    return cfg.lr * (0.1 if step >= 0.8 * cfg.steps else 1.0)


def load_training_photos(cfg: CodecTrainConfig) -> list[torch.Tensor]:
    photos = available_photos("train")
    if cfg.max_photos:
        photos = photos[: cfg.max_photos]
    if not photos:
        raise UsageError("no training photos found (install scikit-image or the Debian wallpaper packages)")
    out = []
    for p in photos:
        a = resize_shorter(p.load(), cfg.photo_side)
        if min(a.shape[:2]) >= cfg.crop:
            out.append(torch.from_numpy(np.array(a, copy=True)).permute(2, 0, 1).contiguous())  # (3, H, W) uint8
    return out


def sample_batch(photos: list[torch.Tensor], cfg: CodecTrainConfig, gen: torch.Generator) -> torch.Tensor:
    """(B, 3, crop, crop) float in [0, 1]; all randomness from `gen`, so resume replays it exactly."""
    crops = []
    for _ in range(cfg.batch_size):
        img = photos[int(torch.randint(len(photos), (1,), generator=gen))]
        _, h, w = img.shape
        y = int(torch.randint(h - cfg.crop + 1, (1,), generator=gen))
        x = int(torch.randint(w - cfg.crop + 1, (1,), generator=gen))
        c = img[:, y: y + cfg.crop, x: x + cfg.crop]
        if int(torch.randint(2, (1,), generator=gen)):
            c = c.flip(-1)
        crops.append(c)
    return torch.stack(crops).float() / 255.0


def loss_terms(model: LatentCodec, x: torch.Tensor) -> dict[str, torch.Tensor]:
    out = model(x)
    mse255 = F.mse_loss(out["x_hat"].float(), x) * (255.0 ** 2)
    ht = model.cfg.target_bits_per_symbol
    rate = torch.relu(out["entropy_soft"] - ht)
    return {"loss": mse255 + model.cfg.beta * rate, "mse255": mse255, **out}


def train(cfg: CodecTrainConfig, out_dir: str, install_to: str | None = None, progress: bool = True) -> dict:
    os.makedirs(out_dir, exist_ok=True)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = LatentCodec(cfg.codec).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    photos = load_training_photos(cfg)
    step, log, elapsed = 0, [], 0.0
    resolved = {**asdict(cfg), "device_resolved": device, "n_photos": len(photos)}
    if has_checkpoint(out_dir):
        meta = load_checkpoint(out_dir, model, opt, gen)
        step, log, elapsed = meta["step"], meta.get("log", []), meta.get("elapsed", 0.0)
    t0 = time.time() - elapsed
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.steps, initial=step, desc=cfg.codec.name, unit="step")
    model.train()
    end = min(cfg.steps, cfg.stop_at) if cfg.stop_at else cfg.steps
    while step < end:
        model.quantizer.sigma = sigma_at(cfg, step)
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step)
        x = sample_batch(photos, cfg, gen).to(device)
        with autocast_for(device):
            t = loss_terms(model, x)
        opt.zero_grad(set_to_none=True)
        t["loss"].backward()
        opt.step()
        step += 1
        row = {"step": step, "loss": t["loss"].item(), "mse255": t["mse255"].item(),
               "psnr": 10 * math.log10(255.0 ** 2 / max(t["mse255"].item(), 1e-10)),
               "H_soft": t["entropy_soft"].item(), "H_hard": t["entropy_hard"].item(),
               "bpp_est": t["entropy_hard"].item() * cfg.codec.C / 64.0, "sigma": model.quantizer.sigma,
               "lr": opt.param_groups[0]["lr"], "seconds": time.time() - t0}
        log.append(row)
        if bar:
            bar.update(1)
            bar.set_postfix(psnr=f"{row['psnr']:.2f}", bpp=f"{row['bpp_est']:.3f}")
        if step % cfg.ckpt_every == 0 or step == end:
            save_checkpoint(out_dir, step, model, opt, gen, resolved, {"log": log, "elapsed": time.time() - t0})
            write_log(out_dir, log)
    if bar:
        bar.close()
    result = {"steps": step, "train_seconds": log[-1]["seconds"] if log else 0.0, "device": device}
    if install_to:
        model.update(symbol_counts(model, photos, device))  # the frozen entropy model, then the new hash
        meta = {**result, "seed": cfg.seed, "device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                "date": time.strftime("%Y-%m-%d"), "n_train_photos": len(photos), "train_config": resolved}
        result["weights_hash"] = save_codec(model.cpu(), install_to, meta)
    return result


@torch.no_grad()
def symbol_counts(model: LatentCodec, photos: list[torch.Tensor], device: str) -> np.ndarray:
    """Per-channel symbol counts over the whole training photos: what `model.update` freezes."""
    model.eval()
    hist = np.zeros((model.cfg.C, model.cfg.L), dtype=np.int64)
    for img in photos:
        hist += model.symbols(img.unsqueeze(0).float().to(device) / 255.0)["hard_hist"].cpu().numpy()
    return hist


def write_log(out_dir: str, log: list[dict]) -> None:
    if not log:
        return
    with open(os.path.join(out_dir, "log.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(log[0]))
        w.writeheader()
        w.writerows(log)
    try:
        plot_log(log, os.path.join(out_dir, "curves.png"))
    except Exception as e:  # a plot must never kill a training run
        print(f"plot skipped: {e}")


def plot_log(log: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = [r["step"] for r in log]
    k = max(1, len(log) // 100)

    def smooth(v):
        return np.convolve(v, np.ones(k) / k, mode="valid")

    fig, ax = plt.subplots(1, 3, figsize=(13, 3.5))
    for a, key, title in zip(ax, ["loss", "bpp_est", "psnr"], ["loss", "bpp (hard entropy estimate)", "PSNR (dB, train crops)"]):
        v = smooth(np.array([r[key] for r in log]))
        a.plot(steps[len(steps) - len(v):], v)
        a.set_title(title)
        a.set_xlabel("step")
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":  # python -m latentstore_train.codec: the same options as `latentstore train codec`
    import sys

    from latentstore.cli import main
    main(["train", "codec", *sys.argv[1:]], prog_name="latentstore")
