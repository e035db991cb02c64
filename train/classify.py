"""Classification from latents (cResNet) or from RGB (ResNet on originals or on reconstructions).

    latentstore train classify --input latent --train STORE --val STORE --model cresnet51 --out runs/x
    torchrun --nproc_per_node 8 -m latentstore.cli train classify ...        # DDP, one node
    (python -m latentstore_train.classify takes the same options)

Inputs: `latent` (a latent store), `recon` (a latent store decoded to RGB by its embedded codec),
`rgb` (an image folder, or an .npz of images+labels). SGD with momentum and weight decay, linear
warmup then cosine; bf16 autocast and channels_last on CUDA; top-1/top-5 on centre crops.
Checkpoints (model, optimizer, loader position) resume exactly; the resolved config sits beside
them; log.csv and curves.png record the run.
"""
from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from latentstore.data.datasets import LatentMapDataset, ResumableLoader, dequantize_on
from latentstore.device import autocast_for, resolve_device, to_channels_last
from latentstore.models.resnet import build
from latentstore_train.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint


@dataclass
class ClassifyConfig:
    input: str = "latent"  # latent | recon | rgb
    train: str = ""  # training data: a store (latent, recon), or an image folder / .npz (rgb)
    val: str = ""  # validation data, same kind
    model: str = "cresnet51"  # resnet50 | resnet71 | cresnet39 | cresnet51 | cresnet72
    width: int = 64  # base width (64 = the paper's); smaller for CPU-sized experiments
    depth_scale: float = 1.0  # scales every stage's block count
    epochs: int = 10  # passes over the training data
    batch_size: int = 128  # per process
    lr: float = 0.1  # peak learning rate for batch 256 (scaled linearly by the global batch)
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 1e-4  # L2 on every weight
    warmup_epochs: float = 0.5  # linear warmup, then cosine to zero
    crop: int = 0  # latent crop side (0: no crop); RGB crop side for image folders (0: 224)
    seed: int = 0  # init and data order
    num_workers: int = 2  # DataLoader workers
    ckpt_every: int = 0  # also checkpoint every N steps (0: once per epoch)
    max_steps: int = 0  # stop after this many steps in total (0: run all epochs); tests and smoke runs
    device: str = "auto"  # auto | cpu | cuda


def _dist(device: str) -> tuple[int, int, int]:
    """(rank, world, local rank) under torchrun; NCCL for CUDA training, gloo for CPU (even where CUDA exists)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device == "cuda" else "gloo")
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    return 0, 1, 0


def make_dataset(kind: str, path: str, train: bool, crop: int, seed: int):
    """-> (dataset, num_classes, in_channels, centres): centres (L,) for latent stores, else None."""
    if kind == "latent":
        ds = LatentMapDataset(path, train=train, crop=crop or None, output="symbols", seed=seed)
        s = ds.store.schema
        return ds, len(s.label_names), s.codec["C"], ds.store.centres
    from latentstore.data.rgb import ArrayImageDataset, ImageFolderDataset
    if kind == "recon" or path.endswith(".npz"):
        if kind == "recon":
            from latentstore_train.data import decoded_store
            images, labels, n_classes = decoded_store(path)
        else:
            z = np.load(path, allow_pickle=False)
            images, labels, n_classes = z["images"], z["labels"], int(z["num_classes"])
        return ArrayImageDataset(images, labels, train, seed), n_classes, 3, None
    ds = ImageFolderDataset(path, crop or 224, train, seed)
    return ds, len(ds.label_names), 3, None


def batch_input(b: dict, centres, device: str) -> torch.Tensor:
    """The model's input on `device`: latents cross as uint8 symbols and are expanded there; images as floats."""
    x = dequantize_on(b["latent"], centres, device) if centres is not None else b["image"].to(device, non_blocking=True)
    return to_channels_last(x, device)


def lr_at(cfg: ClassifyConfig, step: int, steps_per_epoch: int, world: int) -> float:
    peak = cfg.lr * cfg.batch_size * world / 256
    warm = cfg.warmup_epochs * steps_per_epoch
    total = cfg.epochs * steps_per_epoch
    if step < warm:
        return peak * (step + 1) / warm
    return 0.5 * peak * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))


@torch.no_grad()
def evaluate(model, loader, centres, device: str) -> dict:
    model.eval()
    n = top1 = top5 = 0
    loss = 0.0
    for b in loader:
        x = batch_input(b, centres, device)
        y = b["label"].to(device)
        with autocast_for(device):
            logits = model(x).float()
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        k = min(5, logits.shape[1])
        pred = logits.topk(k, 1).indices
        top1 += (pred[:, 0] == y).sum().item()
        top5 += (pred == y[:, None]).any(1).sum().item()
        n += len(y)
    model.train()
    return {"val_loss": loss / max(n, 1), "top1": 100 * top1 / max(n, 1), "top5": 100 * top5 / max(n, 1), "n": n}


def train(cfg: ClassifyConfig, out_dir: str, progress: bool = True) -> dict:
    device = resolve_device(cfg.device)
    rank, world, local = _dist(device)
    if device == "cuda":
        torch.cuda.set_device(local)
    os.makedirs(out_dir, exist_ok=True)
    train_ds, n_classes, cin, centres = make_dataset(cfg.input, cfg.train, True, cfg.crop, cfg.seed)
    val_ds, _, _, _ = make_dataset(cfg.input, cfg.val, False, cfg.crop, cfg.seed)
    torch.manual_seed(cfg.seed)  # here, not earlier: loading data may build (and so seed-consume) a codec
    model = build(cfg.model, in_channels=cin, num_classes=n_classes, width=cfg.width, depth_scale=cfg.depth_scale)
    model = model.to(device)
    if device == "cuda":
        model = model.to(memory_format=torch.channels_last)
    ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local] if device == "cuda" else None) \
        if world > 1 else model
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]  # BN and biases: no weight decay
    opt = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0}],
                          lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    loader = ResumableLoader(train_ds, cfg.batch_size, cfg.num_workers, cfg.seed, rank, world,
                             pin_memory=device == "cuda")
    val_loader = ResumableLoader(val_ds, 256, cfg.num_workers, cfg.seed, rank=0, world=1, shuffle=False)
    steps_per_epoch = len(loader)
    gen = torch.Generator().manual_seed(cfg.seed)  # unused by the data (seeded per sample); kept for the RNG record
    step, log, epochs_log, elapsed = 0, [], [], 0.0
    resolved = {**asdict(cfg), "device_resolved": device, "world_size": world, "num_classes": n_classes,
                "in_channels": cin, "train_samples": len(train_ds), "val_samples": len(val_ds)}
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
                             "loader": loader.state_dict()})
            write_logs(out_dir, log, epochs_log)

    model.train()
    epoch_start = time.time()
    while step < total_steps:
        epoch = loader.epoch
        for b in loader:
            for g in opt.param_groups:
                g["lr"] = lr_at(cfg, step, steps_per_epoch, world)
            x = batch_input(b, centres, device)
            y = b["label"].to(device, non_blocking=True)
            with autocast_for(device):
                loss = F.cross_entropy(ddp_model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            log.append({"step": step, "epoch": epoch, "loss": loss.item(), "lr": opt.param_groups[0]["lr"],
                        "seconds": time.time() - t0})
            if bar:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
            if cfg.ckpt_every and step % cfg.ckpt_every == 0:
                checkpoint()
            if step >= total_steps:
                break
        if loader.batches_done == steps_per_epoch:  # stopped on the epoch's last batch: close the epoch
            loader.set_epoch(epoch + 1)
        if loader.batches_done == 0:  # the epoch ran to its end
            ev = evaluate(model, val_loader, centres, device) if rank == 0 else {}
            epochs_log.append({"epoch": epoch + 1, "step": step, "epoch_seconds": time.time() - epoch_start, **ev})
            epoch_start = time.time()
            checkpoint()
    if bar:
        bar.close()
    checkpoint()
    if world > 1:
        dist.barrier()
    return {"steps": step, "epochs": epochs_log, "log": log, "config": resolved}


def write_logs(out_dir: str, log: list, epochs_log: list) -> None:
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
            if epochs_log and "top1" in epochs_log[0]:
                ax[1].plot([e["epoch"] for e in epochs_log], [e["top1"] for e in epochs_log], "o-", label="top-1")
                ax[1].plot([e["epoch"] for e in epochs_log], [e["top5"] for e in epochs_log], "s-", label="top-5")
                ax[1].legend()
            ax[1].set_title("validation accuracy (%)")
            ax[1].set_xlabel("epoch")
            fig.tight_layout()
            fig.savefig(os.path.join(out_dir, "curves.png"), dpi=90)
            plt.close(fig)
        except Exception as e:  # a plot must not kill a run
            print(f"plot skipped: {e}")


if __name__ == "__main__":  # python -m latentstore_train.classify: the same options as `latentstore train classify`
    import sys

    from latentstore.cli import main
    main(["train", "classify", *sys.argv[1:]], prog_name="latentstore")
