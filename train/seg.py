"""Semantic segmentation from latents (cResNet-d) or from RGB (ResNet-d on originals or reconstructions).

    latentstore train seg --input latent --train TRAIN.zarr --val VAL.zarr --model cresnet51d --out runs/x
    torchrun --nproc_per_node 8 -m latentstore.cli train seg ...        # DDP, one node
    (python -m latentstore_train.seg takes the same options)

Inputs: `latent` (a store converted from a VOC-layout root, masks beside the latents), `recon` (that store
decoded to RGB by its embedded codec, the same masks), `rgb` (the VOC-layout root itself, brought to S x S
with the conversion's geometry). All three share one crop/flip policy and draws (latentstore/data/
seg_datasets.py). DeepLab-v2 ASPP head, logits upsampled bilinearly to the image, pixel-wise cross-entropy
ignoring 255; SGD + Nesterov, warmup then cosine, as classification. Exact resume as classification
(train/checkpoint.py). Each evaluation writes seg_metrics.json/.csv (mIoU, per-class IoU) and
predictions.png (image | reconstruction | ground truth | prediction); log.csv, epochs.csv, curves.png.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from latentstore.data.datasets import LatentMapDataset, ResumableLoader, collate
from latentstore.device import autocast_for, resolve_device
from latentstore.errors import UsageError
from latentstore.eval.segmentation import IGNORE_INDEX, SegMetric, plot_predictions, write_metrics
from latentstore.models.deeplab import SEG_ARCHS, build_seg, load_backbone_weights
from latentstore_train.common import CorruptCount, batch_input, init_dist, run_epochs, sgd


@dataclass
class SegConfig:
    input: str = "latent"  # latent | recon | rgb
    train: str = ""  # training data: a latent store with masks (latent, recon), or a VOC-layout root (rgb)
    val: str = ""  # validation data, same kind
    train_split: str = "train"  # rgb: the split of the train root (ImageSets/Segmentation/<split>.txt)
    val_split: str = "val"  # rgb: the split of the val root
    size: int = 256  # rgb: images and masks brought to S x S like conversion (shorter side to S, centre crop)
    model: str = "cresnet51d"  # cresnet39d | cresnet51d | cresnet72d (latents); resnet50d | resnet71d (RGB)
    backbone: str = ""  # start the backbone from a `train classify` run (its directory or ckpt.safetensors)
    width: int = 64  # base width (64 = the paper's); smaller for CPU-sized experiments
    depth_scale: float = 1.0  # scales every stage's block count
    epochs: int = 10  # passes over the training data
    batch_size: int = 16  # per process
    lr: float = 0.1  # peak learning rate for batch 256 (scaled linearly by the global batch)
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 1e-4  # L2 on every weight
    warmup_epochs: float = 0.5  # linear warmup, then cosine to zero
    crop: int = 0  # training crop side in latent cells, 8 px each (0: whole images); eval sees whole images
    seed: int = 0  # init, data order, crops and flips
    num_workers: int = 2  # DataLoader workers
    eval_batch_size: int = 32  # validation batch
    grid: int = 6  # rows of the predictions.png grid (0: none)
    threads: int = 0  # torch CPU threads (0: torch's default); 1 is fastest on a busy shared CPU
    ckpt_every: int = 0  # also checkpoint every N steps (0: once per epoch)
    max_steps: int = 0  # stop after this many steps in total (0: run all epochs); tests and smoke runs
    device: str = "auto"  # auto | cpu | cuda
    skip_corrupt: bool = False  # skip (and count) latent samples that fail their checksum or decode, not stop
    max_corrupt_fraction: float = 0.001  # with --skip-corrupt: fail once one epoch skipped more than this share


@dataclass
class SegData:
    ds: torch.utils.data.Dataset
    class_names: list
    in_channels: int
    centres: np.ndarray | None  # latent stores: symbol -> value; None for pixels
    views: Callable[[int], tuple]  # sample i -> (original (S, S, 3) or None, reconstruction or None)


def make_data(cfg: SegConfig, path: str, split: str, train: bool) -> SegData:
    from latentstore.data.seg_datasets import ArrayPairs, PixelSegDataset, VocPairs, fit_image
    from latentstore.data.imageio import load_image
    crop = (cfg.crop or None) if train else None
    if cfg.input == "rgb":
        pairs = VocPairs(path, split, cfg.size)
        if pairs.rejects:
            print(f"{path} ({split}): {len(pairs.rejects)} pair(s) left out, first: {pairs.rejects[0]['reason']}")
        return SegData(PixelSegDataset(pairs, train, crop, cfg.seed), pairs.class_names, 3, None,
                       lambda i: (pairs.load(i)[0], None))
    from latentstore.store import open_store
    from latentstore_train.data import decoded_store, require_masks, store_masks
    store = require_masks(open_store(path))
    names = list(store.schema.label_names)
    size = store.schema.policy["size"]

    def original(i: int):  # the source the sample was converted from, when it is still there
        src = store.meta(i).get("source", "")
        return fit_image(load_image(src), size) if "::" not in src and os.path.isfile(src) else None

    if cfg.input == "latent":  # LatentMapDataset reads masks per sample, cropped and flipped with the latents
        ds = LatentMapDataset(path, train=train, crop=crop, output="symbols", seed=cfg.seed,
                              skip_corrupt=cfg.skip_corrupt)
        return SegData(ds, names, store.schema.codec["C"], store.centres, lambda i: (original(i), store.decode_rgb(i)))
    images, _, _ = decoded_store(path)
    return SegData(PixelSegDataset(ArrayPairs(images, store_masks(path)), train, crop, cfg.seed), names, 3, None,
                   lambda i: (original(i), images[i]))


def seg_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over labelled pixels; 0 (not NaN) for a batch with none labelled."""
    n = (target != IGNORE_INDEX).sum().clamp(min=1)
    return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum") / n


@torch.no_grad()
def evaluate(model, loader, centres, device: str, metric: SegMetric, corrupt: CorruptCount | None = None) -> dict:
    """mIoU and friends on `loader`; `corrupt` counts the samples it skipped as corrupt (skip_corrupt)."""
    model.eval()
    metric.reset()
    loss = pixels = 0.0
    for b in loader:
        if corrupt is not None and corrupt.add(b) and "index" not in b:
            continue
        x = batch_input(b, centres, device)
        y = b["mask"].to(device).long()
        with autocast_for(device):
            logits = model(x).float()
        loss += F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX, reduction="sum").item()
        pixels += (y != IGNORE_INDEX).sum().item()
        metric.update(logits, y)
    model.train()
    out = {**metric.compute(), "val_loss": loss / max(pixels, 1)}
    return {**out, "val_skipped_corrupt": corrupt.end_epoch()} if corrupt is not None else out


@torch.no_grad()
def write_grid(model, data: SegData, cfg: SegConfig, device: str, path: str) -> None:
    """predictions.png: `cfg.grid` validation samples spread over the split, as the paper's figures."""
    idx = sorted({int(i) for i in np.linspace(0, len(data.ds) - 1, min(cfg.grid, len(data.ds))).round()})
    model.eval()
    rows = []
    for i in idx:
        b = collate([data.ds[i]])
        if "index" not in b:  # skipped as corrupt (skip_corrupt): counted by evaluate, left out of the grid
            continue
        with autocast_for(device):
            pred = model(batch_input(b, data.centres, device)).float().argmax(1)[0].cpu().numpy()
        image, recon = data.views(i)
        rows.append({"image": image, "recon": recon, "target": b["mask"][0].numpy(), "label": f"val #{i}",
                     "preds": {f"{cfg.model} ({cfg.input})": pred.astype(np.uint8)}})
    model.train()
    plot_predictions(rows, path, data.class_names, f"{cfg.model} on {cfg.input}")


def train(cfg: SegConfig, out_dir: str, progress: bool = True) -> dict:
    if cfg.input not in ("latent", "recon", "rgb"):
        raise UsageError(f"--input must be latent, recon or rgb (got {cfg.input!r})")
    if cfg.model not in SEG_ARCHS:
        raise UsageError(f"--model {cfg.model}: not a segmentation network ({', '.join(SEG_ARCHS)})")
    if SEG_ARCHS[cfg.model][0].startswith("cresnet") != (cfg.input == "latent"):
        raise UsageError(f"--model {cfg.model} does not read {cfg.input} input: cresnet*d read latents, "
                         f"resnet*d read pixels (recon, rgb)")
    if cfg.skip_corrupt and cfg.input != "latent":
        raise UsageError("--skip-corrupt reads latent stores (--input latent); other inputs stop at a corrupt sample")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    rank, world, local = init_dist(device)
    if device == "cuda":
        torch.cuda.set_device(local)
    os.makedirs(out_dir, exist_ok=True)
    tr = make_data(cfg, cfg.train, cfg.train_split, True)
    va = make_data(cfg, cfg.val, cfg.val_split, False)
    if tr.class_names != va.class_names or tr.in_channels != va.in_channels:
        raise UsageError(f"{cfg.train} and {cfg.val} differ in classes or channels: not a train/val pair")
    if cfg.input == "latent":  # a cResNet-d learns one codec's latents: another's val set would measure nothing
        a, b = (d.ds.store.schema.codec for d in (tr, va))
        if a["weights_hash"] != b["weights_hash"]:
            raise UsageError(f"{cfg.train} holds {a['id']} latents, {cfg.val} {b['id']}: convert both with one codec")
    names = tr.class_names
    torch.manual_seed(cfg.seed)  # here, not earlier: loading data may build (and so seed-consume) a codec
    model = build_seg(cfg.model, in_channels=tr.in_channels, num_classes=len(names), width=cfg.width,
                      depth_scale=cfg.depth_scale)
    backbone = load_backbone_weights(model, cfg.backbone).summary() if cfg.backbone else ""
    model = model.to(device)
    if device == "cuda":
        model = model.to(memory_format=torch.channels_last)
    ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local] if device == "cuda" else None) \
        if world > 1 else model
    opt = sgd(model, cfg.lr, cfg.momentum, cfg.weight_decay)
    loader = ResumableLoader(tr.ds, cfg.batch_size, cfg.num_workers, cfg.seed, rank, world,
                             pin_memory=device == "cuda")
    val_loader = ResumableLoader(va.ds, cfg.eval_batch_size, cfg.num_workers, cfg.seed, rank=0, world=1, shuffle=False)
    metric = SegMetric(len(names), names, device=device)
    resolved = {**asdict(cfg), "device_resolved": device, "world_size": world, "num_classes": len(names),
                "class_names": names, "in_channels": tr.in_channels, "train_samples": len(tr.ds),
                "val_samples": len(va.ds), "backbone_loaded": backbone}
    result: dict = {}
    val_corrupt = CorruptCount(cfg, val_loader.epoch_samples(), "validation") if cfg.skip_corrupt else None

    def step_loss(b):
        x = batch_input(b, tr.centres, device)
        y = b["mask"].to(device, non_blocking=True).long()
        with autocast_for(device):
            return seg_loss(ddp_model(x).float(), y)

    def end_epoch(epoch, train_s):
        if rank != 0:
            return {}
        result.clear()
        result.update(evaluate(model, val_loader, va.centres, device, metric, val_corrupt))
        write_metrics(result, out_dir, "seg_metrics", {"epoch": epoch + 1, "model": cfg.model, "input": cfg.input,
                                                       "val": cfg.val})
        if cfg.grid:
            write_grid(model, va, cfg, device, os.path.join(out_dir, "predictions.png"))
        return {"val_loss": result["val_loss"], "miou": result["miou"], "pixel_accuracy": result["pixel_accuracy"],
                **({"val_skipped_corrupt": result["val_skipped_corrupt"]} if val_corrupt is not None else {})}

    run = run_epochs(cfg, out_dir, model, opt, loader, resolved, step_loss, end_epoch, rank, world, progress,
                     (("miou", "mIoU"), ("pixel_accuracy", "pixel accuracy")), "validation (%)")
    return {**run, "config": resolved, "metrics": result}


if __name__ == "__main__":  # python -m latentstore_train.seg: the same options as `latentstore train seg`
    import sys

    from latentstore.cli import main
    main(["train", "seg", *sys.argv[1:]], prog_name="latentstore")
