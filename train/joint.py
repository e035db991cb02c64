"""Joint finetuning of a codec and a cResNet on its latents (Torfason et al. 2018, Sec. 5):

    L = gamma * (MSE(x, x_hat) + beta * max(H(q) - H_t, 0)) + CE(y, y_hat)

    latentstore train joint --codec ls-c8 --classifier runs/cls-c8 --train train.npz --val val.npz --out runs/j8
    latentstore train joint ... --freeze-codec      # the control: the same steps and schedule, the codec frozen

RGB images go through the encoder, the soft-to-hard quantizer (forward: the hard centres, the values a
store holds; backward: the soft assignment) and from there to the decoder (MSE) and to the classifier
(CE). Both networks start from their trained states. Adam, one learning rate per network, x0.1 for the
last 20% of steps. The run writes `codec.safetensors` (a new codec: its entropy tables refitted on the
training images, so `latentstore convert --codec RUN/codec.safetensors` and `compress` use it) and
`classifier/` (a classify-style run: `config.json` + `ckpt.safetensors`, usable as a segmentation
backbone). The paper's appendix values for gamma and the learning rates are not at hand here; the
defaults are chosen so that the two terms are of the same size at the start, and are recorded.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from latentstore.codec.zoo import codec_file, load_codec_file
from latentstore.data.datasets import ResumableLoader
from latentstore.device import autocast_for, resolve_device
from latentstore.errors import UsageError
from latentstore.models.resnet import build
from latentstore_train.checkpoint import has_checkpoint, load_checkpoint, read_model_weights, save_checkpoint
from latentstore_train.common import init_dist as _dist, write_logs
from latentstore_train.codec_loss import compression_loss


@dataclass
class JointConfig:
    codec: str = "ls-c16"  # the codec to finetune: a zoo name or a codec .safetensors file
    classifier: str = ""  # a `latentstore train classify --input latent` run trained on this codec's latents
    train: str = ""  # RGB training images: an .npz (images, labels, num_classes) or a folder SRC/<class>/<image>
    val: str = ""  # RGB validation images, same kind
    size: int = 0  # image side for image folders (0: 224); .npz images are used at their own size
    gamma: float = 1e-3  # weight of the compression loss (MSE on 0..255 is ~1000x the CE: this evens them)
    beta: float = 0.0  # entropy hinge weight (0: the codec's own)
    target_bpp: float = 0.0  # the rate target, H_t = target_bpp * 64 / C (0: the codec's own operating point)
    sigma: float = 8.0  # sharpness of the soft assignment while finetuning (codec training ends at 8)
    epochs: int = 1  # passes over the training images
    batch_size: int = 64  # per process
    lr_codec: float = 1e-5  # Adam learning rate of the codec
    lr_classifier: float = 1e-4  # Adam learning rate of the classifier
    freeze_codec: bool = False  # the control run: the same steps and schedule with the codec frozen
    name: str = ""  # the new codec's name, its id in every bitstream (default: CODEC-joint / CODEC-control)
    seed: int = 0  # initialisation and data order
    num_workers: int = 2  # DataLoader workers
    ckpt_every: int = 0  # also checkpoint every N steps (0: once per epoch)
    max_steps: int = 0  # stop after this many steps in total (0: all epochs); tests and smoke runs
    eval_images: int = 500  # validation images compressed to real bytes for the bpp report (0: all)
    device: str = "auto"  # auto | cpu | cuda


class JointModel(nn.Module):
    """Codec and classifier as one module (one state dict, one DDP wrapper, one checkpoint)."""

    def __init__(self, codec: nn.Module, classifier: nn.Module, freeze_codec: bool):
        super().__init__()
        self.codec, self.classifier, self.freeze_codec = codec, classifier, freeze_codec
        self.codec.requires_grad_(not freeze_codec)

    def forward(self, x01: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_codec):
            out = self.codec(x01)  # x_hat (B, 3, H, W), z_q (B, C, H/8, W/8): the hard centres forward
        return {**out, "logits": self.classifier(out["z_q"])}  # logits (B, classes)


def joint_loss(out: dict, x: torch.Tensor, y: torch.Tensor, cfg: JointConfig, beta: float, target_bits: float) -> dict:
    """L = gamma * (MSE + beta * hinge) + CE; the control (frozen codec) optimises CE alone."""
    comp = compression_loss(out, x, beta, target_bits)
    ce = F.cross_entropy(out["logits"].float(), y)
    loss = ce if cfg.freeze_codec else cfg.gamma * comp["loss"] + ce
    return {"loss": loss, "ce": ce, "compression": comp["loss"], "mse255": comp["mse255"], "rate_hinge": comp["rate_hinge"]}


def load_classifier(run: str, C: int) -> tuple[nn.Module, dict]:
    """The classifier of a classify run, checked to read C-channel latents."""
    cfg_path, ckpt = os.path.join(run, "config.json"), os.path.join(run, "ckpt.safetensors")
    if not (os.path.exists(cfg_path) and os.path.exists(ckpt)):
        raise UsageError(f"{run}: not a classify run (no config.json and ckpt.safetensors)")
    with open(cfg_path) as f:
        c = json.load(f)
    if c.get("input") != "latent":
        raise UsageError(f"{run}: classifier was trained on --input {c.get('input')}, not on latents")
    if c.get("in_channels") != C:
        raise UsageError(f"{run}: classifier reads {c.get('in_channels')}-channel latents; the codec has C={C}")
    model = build(c["model"], in_channels=C, num_classes=c["num_classes"], width=c["width"], depth_scale=c["depth_scale"])
    state = read_model_weights(run)  # checked against ckpt.json's sha256 where the run has one
    model.load_state_dict(state)
    return model, c


def make_images(path: str, train: bool, size: int, seed: int):
    """Images in [0, 1] for the codec: an .npz in memory, or an image folder decoded with Pillow."""
    from latentstore.data.rgb import ArrayImageDataset, ImageFolderDataset
    if path.endswith(".npz"):
        z = np.load(path, allow_pickle=False)
        return ArrayImageDataset(z["images"], z["labels"], train, seed, normalize=False), int(z["num_classes"])
    ds = ImageFolderDataset(path, size or 224, train, seed, normalize=False)
    return ds, len(ds.label_names)


def lr_scale(step: int, total: int) -> float:
    return 0.1 if step >= 0.8 * total else 1.0


def check_config(cfg: JointConfig) -> None:
    if not cfg.gamma > 0:
        raise UsageError(f"--gamma must be > 0 (got {cfg.gamma}); use --freeze-codec for the classifier-only control")
    if not cfg.classifier or not cfg.train or not cfg.val:
        raise UsageError("--classifier, --train and --val are required")
    if cfg.beta < 0 or cfg.target_bpp < 0 or cfg.sigma <= 0:
        raise UsageError("--beta and --target-bpp must be >= 0 and --sigma > 0")


def train(cfg: JointConfig, out_dir: str, progress: bool = True) -> dict:
    check_config(cfg)
    device = resolve_device(cfg.device)
    rank, world, local = _dist(device)
    if device == "cuda":
        torch.cuda.set_device(local)
    os.makedirs(out_dir, exist_ok=True)
    codec = load_codec_file(codec_file(cfg.codec), device)  # a private copy: the zoo's cached codec stays as it is
    classifier, cls_cfg = load_classifier(cfg.classifier, codec.cfg.C)
    train_ds, n_classes = make_images(cfg.train, True, cfg.size, cfg.seed)
    val_ds, _ = make_images(cfg.val, False, cfg.size, cfg.seed)
    if n_classes != cls_cfg["num_classes"]:
        raise UsageError(f"{cfg.train} has {n_classes} classes; the classifier predicts {cls_cfg['num_classes']}")
    torch.manual_seed(cfg.seed)
    codec.quantizer.sigma = cfg.sigma
    model = JointModel(codec, classifier, cfg.freeze_codec).to(device)
    beta = cfg.beta or codec.cfg.beta
    target_bits = (cfg.target_bpp or codec.cfg.target_bpp) * 64.0 / codec.cfg.C
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local] if device == "cuda" else None) \
        if world > 1 else model
    groups = [{"params": list(classifier.parameters()), "lr": cfg.lr_classifier, "base_lr": cfg.lr_classifier}]
    if not cfg.freeze_codec:
        groups.append({"params": list(codec.parameters()), "lr": cfg.lr_codec, "base_lr": cfg.lr_codec})
    opt = torch.optim.Adam(groups)
    loader = ResumableLoader(train_ds, cfg.batch_size, cfg.num_workers, cfg.seed, rank, world, pin_memory=device == "cuda")
    total = cfg.epochs * len(loader) if not cfg.max_steps else min(cfg.max_steps, cfg.epochs * len(loader))
    gen = torch.Generator().manual_seed(cfg.seed)
    resolved = {**asdict(cfg), "device_resolved": device, "world_size": world, "beta_resolved": beta,
                "target_bits_per_symbol": target_bits, "codec_hash_start": codec.hash, "classifier_config": cls_cfg}
    step, log, elapsed = 0, [], 0.0
    if has_checkpoint(out_dir):
        meta = load_checkpoint(out_dir, model, opt, gen)
        step, log, elapsed = meta["step"], meta["log"], meta["elapsed"]
        loader.load_state_dict(meta["loader"])
    tb = tensorboard_writer(out_dir) if rank == 0 else None
    bar = _bar(progress and rank == 0, total, step, "control" if cfg.freeze_codec else "joint")
    t0 = time.time() - elapsed

    def checkpoint():
        if rank == 0:
            save_checkpoint(out_dir, step, model, opt, gen, resolved,
                            {"log": log, "elapsed": time.time() - t0, "loader": loader.state_dict()},
                            reader_link=True)  # crash-safe; ckpt.safetensors for the readers by that name
            write_logs(out_dir, log, [])

    model.train()
    while step < total:
        for b in loader:
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * lr_scale(step, total)
            x, y = b["image"].to(device, non_blocking=True), b["label"].to(device, non_blocking=True)
            with autocast_for(device):
                out = ddp(x)
                terms = joint_loss(out, x, y, cfg, beta, target_bits)
            opt.zero_grad(set_to_none=True)
            terms["loss"].backward()
            opt.step()
            step += 1
            row = step_row(step, loader.epoch, terms, out, y, codec.cfg.C, time.time() - t0)
            log.append(row)
            if tb is not None:
                for k, v in row.items():
                    if k not in ("step", "epoch"):
                        tb.add_scalar(k, v, step)
            if bar:
                bar.update(1)
                bar.set_postfix(ce=f"{row['ce']:.3f}", psnr=f"{row['psnr']:.1f}", bpp=f"{row['bpp_est']:.3f}")
            if (cfg.ckpt_every and step % cfg.ckpt_every == 0) or loader.batches_done == len(loader):
                checkpoint()
            if step >= total:
                break
        if loader.batches_done == len(loader):
            loader.set_epoch(loader.epoch + 1)
    if bar:
        bar.close()
    checkpoint()
    result = {"steps": step, "log": log, "config": resolved}
    if rank == 0:
        result.update(finish(model, cfg, out_dir, train_ds, val_ds, device, cls_cfg))
    if tb is not None:
        tb.close()
    if world > 1:
        torch.distributed.barrier()
    return result


def step_row(step, epoch, terms, out, y, C, seconds) -> dict:
    mse = terms["mse255"].item()
    return {"step": step, "epoch": epoch, "loss": terms["loss"].item(), "ce": terms["ce"].item(),
            "acc": (out["logits"].argmax(1) == y).float().mean().item() * 100, "mse255": mse,
            "psnr": 10 * math.log10(255.0 ** 2 / max(mse, 1e-10)), "H_soft": out["entropy_soft"].item(),
            "H_hard": out["entropy_hard"].item(), "bpp_est": out["entropy_hard"].item() * C / 64.0,
            "rate_hinge": terms["rate_hinge"].item(), "seconds": seconds}


def tensorboard_writer(out_dir: str):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional: log.csv has every scalar too
        print("tensorboard is not installed: logging to log.csv only (pip install tensorboard)")
        return None
    return SummaryWriter(os.path.join(out_dir, "tb"))


def _bar(enabled: bool, total: int, initial: int, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc=desc, unit="step")


@torch.no_grad()
def finish(model: JointModel, cfg: JointConfig, out_dir: str, train_ds, val_ds, device: str, cls_cfg: dict) -> dict:
    """Measure top-1 and real bytes on val, then write the codec and the classifier."""
    from latentstore_train.joint_eval import evaluate_joint, write_outputs
    return write_outputs(model, cfg, out_dir, cls_cfg, evaluate_joint(model, cfg, train_ds, val_ds, device))
