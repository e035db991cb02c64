"""What the training loops share: DDP set-up, the warmup+cosine schedule, the SGD set-up, model inputs, run logs.

One home each, so classification, segmentation and later jobs cannot drift apart.
"""
from __future__ import annotations

import csv
import math
import os
import sys

import numpy as np
import torch
import torch.distributed as dist

from latentstore.data.datasets import dequantize_on
from latentstore.device import to_channels_last
from latentstore.errors import StoreError, UsageError


class CorruptCount:
    """Samples a loader skipped as corrupt (skip_corrupt: batch["corrupt"]), counted per epoch and in all. A run
    fails once one epoch skipped more than cfg.max_corrupt_fraction of its samples: damage stays where it is, so
    every epoch meets the same corrupt samples, and an epoch is the unit the fraction is measured on."""

    def __init__(self, cfg, epoch_samples: int, what: str = "training"):
        self.max_fraction = float(getattr(cfg, "max_corrupt_fraction", 0.0))
        if not 0 <= self.max_fraction <= 1:
            raise UsageError(f"--max-corrupt-fraction must be in [0, 1] (got {self.max_fraction})")
        self.epoch_samples, self.what = epoch_samples, what
        self.epoch = self.total = 0

    def add(self, batch: dict) -> int:
        """Count a batch's skipped samples (one stderr line each batch that has some); returns how many."""
        bad = batch.get("corrupt")
        n = 0 if bad is None else len(bad)
        if n:
            self.epoch += n
            self.total += n
            errors = batch["corrupt_errors"]
            print(f"skipped {n} corrupt sample(s) in {self.what} ({self.epoch} this epoch): {errors[0]}",
                  file=sys.stderr)
            if self.epoch > self.max_fraction * self.epoch_samples:
                raise StoreError(f"{self.epoch} of {self.epoch_samples} {self.what} samples of one epoch are corrupt, "
                                 f"over --max-corrupt-fraction {self.max_fraction:g}; last: {errors[-1]}")
        return n

    def end_epoch(self) -> int:
        n, self.epoch = self.epoch, 0
        return n


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


def run_epochs(cfg, out_dir: str, model: torch.nn.Module, opt: torch.optim.Optimizer, loader, resolved: dict,
               step_loss, end_epoch, rank: int, world: int, progress: bool = True, plot_metrics=None,
               plot_title: str = "validation accuracy (%)") -> dict:
    """The epoch loop of classification and segmentation: exact resume from out_dir's checkpoint, warmup+cosine
    lr, one optimizer step per batch, a per-step log, checkpoints every cfg.ckpt_every steps and at each epoch's
    end (after `end_epoch(epoch, train_seconds) -> dict`, which evaluates on rank 0 and returns {} elsewhere).
    step_loss(batch) -> the batch's loss under autocast. cfg: lr, batch_size, warmup_epochs, epochs, max_steps,
    ckpt_every, seed, model, input. Returns steps, epochs (the per-epoch log) and log (the per-step log)."""
    import time

    from latentstore_train.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
    steps_per_epoch = len(loader)
    gen = torch.Generator().manual_seed(cfg.seed)  # unused by the data (seeded per sample); kept for the RNG record
    step, log, epochs_log, elapsed = 0, [], [], 0.0
    if has_checkpoint(out_dir):
        meta = load_checkpoint(out_dir, model, opt, gen)
        step, log, epochs_log, elapsed = meta["step"], meta["log"], meta["epochs_log"], meta["elapsed"]
        loader.load_state_dict(meta["loader"])
    total_steps = cfg.epochs * steps_per_epoch if not cfg.max_steps else min(cfg.max_steps, cfg.epochs * steps_per_epoch)
    t0 = time.time() - elapsed
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm
        bar = tqdm(total=total_steps, initial=step, desc=f"{cfg.model}/{cfg.input}", unit="step")

    def checkpoint():
        if rank == 0:
            save_checkpoint(out_dir, step, model, opt, gen, resolved,
                            {"log": log, "epochs_log": epochs_log, "elapsed": time.time() - t0,
                             "loader": loader.state_dict()}, reader_link=True)  # crash-safe; ckpt.safetensors for readers
            write_logs(out_dir, log, epochs_log, *((plot_metrics, plot_title) if plot_metrics else ()))

    model.train()
    epoch_start = time.time()
    skip = getattr(cfg, "skip_corrupt", False)
    corrupt = CorruptCount(cfg, loader.epoch_samples())
    while step < total_steps:
        epoch = loader.epoch
        for b in loader:
            if not (corrupt.add(b) and "index" not in b):  # a batch of nothing but corrupt samples: no update
                for g in opt.param_groups:
                    g["lr"] = lr_at(cfg, step, steps_per_epoch, world)
                loss = step_loss(b)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                log.append({"step": step + 1, "epoch": epoch, "loss": loss.item(), "lr": opt.param_groups[0]["lr"],
                            "seconds": time.time() - t0, **({"skipped_corrupt": corrupt.epoch} if skip else {})})
                if bar:
                    bar.set_postfix(loss=f"{loss.item():.3f}")
            step += 1
            if bar:
                bar.update(1)
            if cfg.ckpt_every and step % cfg.ckpt_every == 0:
                checkpoint()
            if step >= total_steps:
                break
        if loader.batches_done == steps_per_epoch:  # stopped on the epoch's last batch: close the epoch
            loader.set_epoch(epoch + 1)
        if loader.batches_done == 0:  # the epoch ran to its end
            train_s = time.time() - epoch_start
            epochs_log.append({"epoch": epoch + 1, "step": step, "epoch_seconds": train_s, **end_epoch(epoch, train_s),
                               **({"skipped_corrupt": corrupt.end_epoch()} if skip else {})})
            epoch_start = time.time()
            checkpoint()
    if bar:
        bar.close()
    checkpoint()
    if world > 1:
        dist.barrier()
    return {"steps": step, "epochs": epochs_log, "log": log, **({"skipped_corrupt": corrupt.total} if skip else {})}
