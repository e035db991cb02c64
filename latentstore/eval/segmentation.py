"""Segmentation metrics and figures: confusion-matrix mIoU with an ignore label, per-class IoU, prediction grids.

Conventions (those of the VOC devkit and DeepLab, made explicit):
- the confusion matrix is accumulated over the whole split, rows = ground truth, columns = prediction;
  pixels whose ground truth is `ignore_index` (255: VOC's object borders and "void") are not counted,
  whatever was predicted there;
- IoU_c = TP_c / (TP_c + FP_c + FN_c) from that one matrix (not averaged per image);
- a class absent from both the ground truth and the predictions of the whole split has no IoU (0/0):
  it is reported as null (JSON) / empty (CSV) and left out of the mean. A class that is predicted but
  never present counts, with IoU 0: a false alarm is an error.
"""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import torch

IGNORE_INDEX = 255  # VOC's void label


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(K, K) int64 counts on the inputs' device; rows = ground truth, columns = prediction.

    pred: (...) class indices, or (B, K, H, W) logits (argmax over dim 1); target: (...) class indices."""
    if pred.ndim == target.ndim + 1:
        pred = pred.argmax(1)  # (B, K, H, W) logits -> (B, H, W) labels
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    t = target.reshape(-1).long()
    p = pred.reshape(-1).long()
    keep = t != ignore_index
    t, p = t[keep], p[keep]
    if t.numel() and (int(t.max()) >= num_classes or int(t.min()) < 0):
        raise ValueError(f"target label {int(t.max())} out of range for {num_classes} classes "
                         f"(only {ignore_index} is ignored)")
    # one bincount over the flattened (target, prediction) pairs: fast on CPU and GPU alike
    return torch.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_from_confusion(conf: np.ndarray | torch.Tensor) -> tuple[np.ndarray, float]:
    """(per-class IoU with NaN for classes absent from both sides, their nan-mean; NaN if none at all)."""
    c = conf.detach().cpu().numpy() if torch.is_tensor(conf) else np.asarray(conf)
    c = c.astype(np.float64)
    tp = np.diag(c)
    union = c.sum(0) + c.sum(1) - tp  # predicted + present - both
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    valid = ~np.isnan(iou)
    return iou, float(iou[valid].mean()) if valid.any() else float("nan")


class SegMetric:
    """Accumulates a confusion matrix over batches (on the batches' device); `compute` gives mIoU and more."""

    def __init__(self, num_classes: int, class_names: list[str] | None = None, ignore_index: int = IGNORE_INDEX,
                 device: str | torch.device = "cpu"):
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {num_classes} classes")
        self.ignore_index = ignore_index
        self.conf = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.conf.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred: (B, H, W) labels or (B, K, H, W) logits; target: (B, H, W) labels with ignore_index allowed."""
        c = confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        if c.device != self.conf.device:
            self.conf = self.conf.to(c.device)  # follow the data (GPU under DDP) rather than copy every batch
        self.conf += c

    def all_reduce(self) -> None:
        """Sum the matrices of all DDP ranks (a no-op without torch.distributed)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.conf)

    def compute(self) -> dict:
        iou, miou = iou_from_confusion(self.conf)
        c = self.conf.cpu().numpy()
        total = int(c.sum())
        return {
            "miou": 100 * miou,  # percent, as the paper reports it
            "pixel_accuracy": 100 * float(np.trace(c)) / total if total else float("nan"),
            "pixels": total,  # counted (non-ignored) pixels
            "num_classes": self.num_classes,
            "classes_in_mean": int((~np.isnan(iou)).sum()),
            "per_class": [{"id": k, "name": self.class_names[k],
                           "iou": None if np.isnan(iou[k]) else 100 * float(iou[k]),
                           "gt_pixels": int(c[k].sum()), "pred_pixels": int(c[:, k].sum())}
                          for k in range(self.num_classes)],
        }


def write_metrics(result: dict, out_dir: str, stem: str = "seg_metrics", extra: dict | None = None) -> tuple[str, str]:
    """`result` from SegMetric.compute -> {stem}.json (everything, plus `extra`) and {stem}.csv (per class)."""
    os.makedirs(out_dir, exist_ok=True)
    jpath, cpath = os.path.join(out_dir, stem + ".json"), os.path.join(out_dir, stem + ".csv")
    doc = {**(extra or {}), **result}
    doc = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in doc.items()}  # JSON has no NaN
    with open(jpath + ".tmp", "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(jpath + ".tmp", jpath)
    with open(cpath + ".tmp", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class_id", "class", "iou", "gt_pixels", "pred_pixels"])
        for r in result["per_class"]:
            w.writerow([r["id"], r["name"], "" if r["iou"] is None else f"{r['iou']:.4f}", r["gt_pixels"],
                        r["pred_pixels"]])
        w.writerow(["", "mean", "" if np.isnan(result["miou"]) else f"{result['miou']:.4f}", "", ""])
    os.replace(cpath + ".tmp", cpath)
    return jpath, cpath


def colorize(mask: np.ndarray) -> np.ndarray:
    """(H, W) labels -> (H, W, 3) uint8 in the VOC palette (255, void, is VOC's light beige)."""
    from ..data.voc import VOC_PALETTE
    return VOC_PALETTE.reshape(256, 3)[np.asarray(mask, dtype=np.uint8)]


def plot_predictions(rows: list[dict], path: str, class_names: list[str] | None = None, title: str = "") -> str:
    """A PNG grid, one row per sample: image | reconstruction | ground truth | prediction(s), as the paper's figures.

    Each row: {"image": (H, W, 3) uint8, "recon": (H, W, 3) uint8 or absent, "target": (H, W),
    "preds": {column title: (H, W) labels}, "label": optional row caption}. Class legend from class_names."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    has_recon = any(r.get("recon") is not None for r in rows)
    pred_titles = list(dict.fromkeys(t for r in rows for t in r["preds"]))
    cols = ["image"] + (["reconstruction"] if has_recon else []) + ["ground truth"] + pred_titles
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(2.2 * len(cols), 2.2 * len(rows) + 0.6), squeeze=False)
    present = set()
    for i, r in enumerate(rows):
        panels = [r["image"]] + ([r.get("recon")] if has_recon else []) + [colorize(r["target"])]
        panels += [colorize(r["preds"][t]) if t in r["preds"] else None for t in pred_titles]
        for m in [r["target"], *r["preds"].values()]:
            present |= set(np.unique(m).tolist())
        for j, (ax, im) in enumerate(zip(axes[i], panels)):
            ax.set_xticks([]), ax.set_yticks([])
            if im is not None:
                ax.imshow(im, interpolation="nearest")
            if i == 0:
                ax.set_title(cols[j], fontsize=9)
        if r.get("label"):
            axes[i][0].set_ylabel(r["label"], fontsize=8)
    if class_names:
        from ..data.voc import VOC_PALETTE
        pal = VOC_PALETTE.reshape(256, 3) / 255.0
        handles = [Patch(color=pal[k], label=class_names[k]) for k in sorted(present) if k < len(class_names)]
        fig.legend(handles=handles, loc="lower center", ncol=min(6, max(1, len(handles))), fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06 if class_names else 0, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_miou_vs_gflops(points: list[dict], path: str, title: str = "mIoU vs compute") -> str:
    """The paper's compute plot. points: {"label", "miou", "gflops", "gflops_decoder" (0 for latents/RGB)};
    each is drawn at its network's GFLOPs (filled) and, where a decoder ran first, also with it added (hollow)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for i, p in enumerate(points):
        color = f"C{i % 10}"
        ax.plot(p["gflops"], p["miou"], "o", color=color, label=p["label"])
        if p.get("gflops_decoder"):
            total = p["gflops"] + p["gflops_decoder"]
            ax.plot(total, p["miou"], "o", mfc="none", color=color, label=f"{p['label']} + decoder")
            ax.annotate("", (total, p["miou"]), (p["gflops"], p["miou"]), arrowprops=dict(arrowstyle="->", color=color))
    ax.set_xlabel("GFLOPs per image")
    ax.set_ylabel("mIoU (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
