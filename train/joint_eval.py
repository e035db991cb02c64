"""The end of a joint run: top-1, entropy and real bytes on the validation images, then the outputs.

Outputs beside the run's checkpoints:
    codec.safetensors     the finetuned codec under its new name, entropy tables refitted on the training
                          images (the control writes its unchanged starting codec)
    classifier/           a classify-style run (config.json + ckpt.safetensors): a segmentation backbone
    result.json           the figures below, and what they were measured on
"""
from __future__ import annotations

import hashlib
import os
import shutil

import numpy as np
import torch
from safetensors.torch import save

from latentstore.atomic import write_bytes_atomic, write_json_atomic
from latentstore.codec.zoo import codec_file, save_codec
from latentstore.eval.metrics import psnr

FIT_IMAGES = 2000  # training images whose symbols refit the joint codec's entropy tables


def _batches(ds, n: int, batch: int = 256):
    """(images in [0, 1], labels) in order, the first n samples (0: all)."""
    n = len(ds) if not n else min(n, len(ds))
    for b0 in range(0, n, batch):
        items = [ds[i] for i in range(b0, min(n, b0 + batch))]
        yield torch.stack([it["image"] for it in items]), torch.tensor([it["label"] for it in items])


@torch.no_grad()
def evaluate_joint(model, cfg, train_ds, val_ds, device: str) -> dict:
    model.eval()
    codec = model.codec
    if not cfg.freeze_codec:  # the encoder moved: its symbol statistics did too
        counts = np.zeros((codec.cfg.C, codec.cfg.L), np.int64)
        for x, _ in _batches(train_ds, FIT_IMAGES):
            counts += codec.symbols(x.to(device))["hard_hist"].cpu().numpy()
        codec.cfg.name = cfg.name or f"{os.path.splitext(os.path.basename(cfg.codec))[0]}-joint"
        codec.update(counts)
    hits = n = 0
    hist = np.zeros((codec.cfg.C, codec.cfg.L), np.int64)
    psnrs, payload, pixels = [], 0, 0
    for x, y in _batches(val_ds, 0):
        x = x.to(device)
        r = codec.symbols(x)
        hist += r["hard_hist"].cpu().numpy()
        logits = model.classifier(codec.quantizer.dequantize(r["symbols"]))  # the values a store holds
        hits += (logits.argmax(1).cpu() == y).sum().item()
        n += len(y)
        if not cfg.eval_images or n - len(y) < cfg.eval_images:  # real bytes and PSNR on the first images
            rec = codec.reconstruct(r["symbols"], x.shape[-2:])
            for s, a, b in zip(r["symbols"].cpu().numpy(), x, rec):
                payload += len(codec.pack(s, x.shape[-2:]))
                pixels += x.shape[-1] * x.shape[-2]
                to8 = lambda t: (t.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()  # noqa: E731
                psnrs.append(psnr(to8(a), to8(b)))
    p = hist.sum(0) / max(hist.sum(), 1)
    H = float(-(p[p > 0] * np.log2(p[p > 0])).sum())
    return {"top1": 100.0 * hits / max(n, 1), "val_images": n, "H_bits_per_symbol": H,
            "bpp_entropy": H * codec.cfg.C / 64.0, "bpp_real": payload * 8 / max(pixels, 1),
            "bytes_images": len(psnrs), "psnr_val": float(np.mean(psnrs)) if psnrs else float("nan")}


def write_outputs(model, cfg, out_dir: str, cls_cfg: dict, figures: dict) -> dict:
    codec, dst = model.codec, os.path.join(out_dir, "codec.safetensors")
    if cfg.freeze_codec:
        shutil.copyfile(codec_file(cfg.codec), dst)
    else:
        codec.meta = {"joint_from": cfg.codec, "classifier": cfg.classifier, "gamma": cfg.gamma,
                      "train": cfg.train, "steps_config": {"epochs": cfg.epochs, "max_steps": cfg.max_steps}}
        save_codec(codec.cpu(), dst)
    cdir = os.path.join(out_dir, "classifier")
    os.makedirs(cdir, exist_ok=True)
    state = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.classifier.state_dict().items()}
    data = save(state)
    write_bytes_atomic(os.path.join(cdir, "ckpt.safetensors"), data)
    write_json_atomic({**cls_cfg, "trained_by": "latentstore train joint", "codec_file": dst,
                       "tensors_sha256": hashlib.sha256(data).hexdigest()},  # what its readers check it against
                      os.path.join(cdir, "config.json"))
    result = {"mode": "control" if cfg.freeze_codec else "joint", "codec": dst, "codec_name": codec.cfg.name,
              "codec_hash": codec.hash, **figures}
    write_json_atomic(result, os.path.join(out_dir, "result.json"))
    return result
