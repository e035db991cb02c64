"""What the training loops share: DDP set-up, the warmup+cosine schedule, the SGD set-up, model inputs, run logs.

One home each, so classification, segmentation and later jobs cannot drift apart.
"""
from __future__ import annotations

import csv
import math
import os

import numpy as np
import torch
import torch.distributed as dist

from latentstore.data.datasets import dequantize_on
from latentstore.device import to_channels_last


def init_dist(device: str) -> tuple[int, int, int]:
    """(rank, world, local rank) under torchrun; NCCL for CUDA training, gloo for CPU (even where CUDA exists)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device == "cuda" else "gloo")
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    return 0, 1, 0


def batch_input(b: dict, centres, device: str, decoder=None) -> torch.Tensor:
    """The model's input on `device`: latents cross as uint8 symbols (or, with a GPU decoder, as compressed
    bytes) and are expanded there; images as floats."""
    if "payload" in b:
        x = decoder(b)["latent"]
    elif centres is not None:
        x = dequantize_on(b["latent"], centres, device)
    else:
        x = b["image"].to(device, non_blocking=True)
    return to_channels_last(x, device)


def lr_at(cfg, step: int, steps_per_epoch: int, world: int) -> float:
    """Linear warmup then cosine to zero; the peak is cfg.lr for a global batch of 256, scaled linearly.
    cfg: any config with lr, batch_size, warmup_epochs and epochs."""
    peak = cfg.lr * cfg.batch_size * world / 256
    warm = cfg.warmup_epochs * steps_per_epoch
    total = cfg.epochs * steps_per_epoch
    if step < warm:
        return peak * (step + 1) / warm
    return 0.5 * peak * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))


def sgd(model: torch.nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum; weight decay on weights only (BN parameters and biases have none)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return torch.optim.SGD([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0}],
                           lr=lr, momentum=momentum, nesterov=True)


def write_logs(out_dir: str, log: list, epochs_log: list, metrics=(("top1", "top-1"), ("top5", "top-5")),
               title: str = "validation accuracy (%)") -> None:
    """log.csv (per step), epochs.csv (per epoch) and curves.png: training loss, and `metrics` of epochs_log."""
    for name, rows in (("log.csv", log), ("epochs.csv", epochs_log)):
        if rows:
            keys = sorted({k for r in rows for k in r}, key=lambda k: list(rows[-1]).index(k) if k in rows[-1] else 99)
            with open(os.path.join(out_dir, name), "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=keys)
                w.writeheader()
                w.writerows(rows)
    if log:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
            k = max(1, len(log) // 100)
            v = np.convolve([r["loss"] for r in log], np.ones(k) / k, mode="valid")
            ax[0].plot(range(len(v)), v)
            ax[0].set_title("training loss")
            ax[0].set_xlabel("step")
            shown = [(key, label) for key, label in metrics if epochs_log and key in epochs_log[0]]
            for (key, label), marker in zip(shown, "os^v"):
                ax[1].plot([e["epoch"] for e in epochs_log], [e[key] for e in epochs_log], marker + "-", label=label)
            if shown:
                ax[1].legend()
            ax[1].set_title(title)
            ax[1].set_xlabel("epoch")
            fig.tight_layout()
            fig.savefig(os.path.join(out_dir, "curves.png"), dpi=90)
            plt.close(fig)
        except Exception as e:  # a plot must not kill a run
            print(f"plot skipped: {e}")
