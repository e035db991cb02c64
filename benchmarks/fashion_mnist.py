"""The paper's classification comparison on data we have: Fashion-MNIST (Debian's dataset-fashion-mnist).

    python benchmarks/fashion_mnist.py --work runs/fmnist [--epochs 3] [--limit 0]

1. prepare : the 70k idx images -> 64x64 RGB PNG trees (train/<class>/, test/<class>/)  (8x8 latents)
2. convert : `latentstore convert` of both trees at every shipped operating point (real stores)
3. train   : scaled cResNet-51 on the latents; scaled ResNet-50 on the originals and on each
             operating point's reconstructions (the store decoded by its own codec)
4. report  : benchmarks/results/fashion_mnist.{csv,md,png}: top-1/top-5 per operating point and
             input, GFLOPs per image with and without the decoder, wall time per epoch.
Every stage skips what is already done, so the script can be rerun after an interruption.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from latentstore.codec.zoo import available_codecs, load_codec  # noqa: E402
from latentstore.data.fashion_mnist import FASHION_MNIST_CLASSES, fashion_mnist  # noqa: E402

SIZE = 64
MODEL_KW = dict(width=16, depth_scale=0.5)  # the scaled family: same shape as the paper's, CPU-sized


def prepare(work: str, limit: int) -> dict:
    from PIL import Image
    out = {}
    for split in ("train", "test"):
        root = os.path.join(work, "png", split)
        out[split] = root
        done = os.path.join(root, ".done")
        if os.path.exists(done):
            continue
        x, y = fashion_mnist(split)
        if limit:
            x, y = x[: limit if split == "train" else limit // 6], y[: limit if split == "train" else limit // 6]
        for c in FASHION_MNIST_CLASSES:
            os.makedirs(os.path.join(root, c), exist_ok=True)
        for i, (img, lab) in enumerate(zip(x, y)):
            im = Image.fromarray(img).resize((SIZE, SIZE), Image.Resampling.BICUBIC).convert("RGB")
            im.save(os.path.join(root, FASHION_MNIST_CLASSES[lab], f"{i:05d}.png"), compress_level=1)
        open(done, "w").close()
    return out


def originals_npz(work: str, pngs: dict) -> dict:
    """The original 64x64 images as arrays (the ResNet-on-originals input), in the stores' label order."""
    from PIL import Image
    from latentstore.convert.sources import list_inputs
    out = {}
    for split, root in pngs.items():
        path = os.path.join(work, f"orig-{split}.npz")
        out[split] = path
        if os.path.exists(path):
            continue
        listing = list_inputs(root)
        images = np.stack([np.asarray(Image.open(it.ref).convert("RGB")) for it in listing.items])
        np.savez(path, images=images, labels=np.array([it.label for it in listing.items]),
                 num_classes=len(listing.label_names))
    return out


def convert_all(work: str, pngs: dict, codecs: list[str]) -> dict:
    from latentstore.convert.pipeline import ConvertOptions, convert
    stores, times = {}, {}
    for c in codecs:
        for split, root in pngs.items():
            dst = os.path.join(work, "stores", f"{c}-{split}.zarr")
            stores[(c, split)] = dst
            if os.path.exists(os.path.join(dst, "zarr.json")):
                try:
                    from latentstore.store import open_store
                    open_store(dst)
                    continue
                except Exception:
                    pass
            t = time.time()
            convert(root, dst, ConvertOptions(codec=c, size=SIZE, shard_size=1024, batch_size=256,
                                              resume=os.path.exists(dst), progress=True))
            times[(c, split)] = time.time() - t
    return stores


def run(work: str, name: str, **cfg) -> dict:
    from latentstore_train.classify import ClassifyConfig, train
    out = os.path.join(work, "runs", name)
    done = os.path.join(out, "result.json")
    if os.path.exists(done):
        return json.load(open(done))
    r = train(ClassifyConfig(**cfg), out)
    res = {"epochs": r["epochs"], "config": r["config"]}
    json.dump(res, open(done, "w"), indent=1)
    return res


def flops_per_image(codecs: list[str]) -> dict:
    import torch
    from latentstore.models.flops import _Dec, gflops
    from latentstore.models.resnet import build
    out = {"resnet50": gflops(build("resnet50", num_classes=10, **MODEL_KW), torch.randn(1, 3, SIZE, SIZE))}
    for c in codecs:
        codec = load_codec(c)
        C = codec.cfg.C
        out[f"cresnet51-C{C}"] = gflops(build("cresnet51", in_channels=C, num_classes=10, **MODEL_KW),
                                        torch.randn(1, C, SIZE // 8, SIZE // 8))
        out[f"decoder-{c}"] = gflops(_Dec(codec), torch.randn(1, C, SIZE // 8, SIZE // 8))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="runs/fmnist")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N training images (0: all 60k)")
    ap.add_argument("--stage", choices=["prepare", "convert", "train", "all"], default="all")
    a = ap.parse_args(argv)
    os.makedirs(a.work, exist_ok=True)
    codecs = [c for c in available_codecs() if c.startswith("ls-")]
    pngs = prepare(a.work, a.limit)
    if a.stage == "prepare":
        return
    stores = convert_all(a.work, pngs, codecs)
    if a.stage == "convert":
        return
    orig = originals_npz(a.work, pngs)
    common = dict(epochs=a.epochs, batch_size=128, lr=0.2, weight_decay=5e-4, num_workers=2, **MODEL_KW)
    results = []
    r = run(a.work, "rgb-original", input="rgb", train=orig["train"], val=orig["test"], model="resnet50", **common)
    results.append(("original", "-", "ResNet-50 (RGB)", r))
    for c in codecs:
        bpp = load_codec(c).cfg.target_bpp
        r = run(a.work, f"latent-{c}", input="latent", train=stores[(c, "train")], val=stores[(c, "test")],
                model="cresnet51", **common)
        results.append((c, bpp, "cResNet-51 (latents)", r))
        r = run(a.work, f"recon-{c}", input="recon", train=stores[(c, "train")], val=stores[(c, "test")],
                model="resnet50", **common)
        results.append((c, bpp, "ResNet-50 (reconstructions)", r))
    report(results, flops_per_image(codecs), stores, a)


def report(results, fl, stores, a) -> None:
    from latentstore.store.info import info
    rows = []
    for codec, bpp, model, r in results:
        last = r["epochs"][-1]
        C = r["config"]["in_channels"]
        if model.startswith("cResNet"):
            g, g_dec = fl[f"cresnet51-C{C}"], fl[f"cresnet51-C{C}"]
        else:
            g = fl["resnet50"]
            g_dec = g + (fl[f"decoder-{codec}"] if codec != "original" else 0.0)
        store_bpp = info(stores[(codec, "train")])["bpp_stored"] if codec != "original" else None
        rows.append({"operating_point": codec, "target_bpp": bpp, "store_bpp": store_bpp, "input": model,
                     "top1": last["top1"], "top5": last["top5"], "gflops_classifier": g, "gflops_with_decoder": g_dec,
                     "s_per_epoch": float(np.mean([e["epoch_seconds"] for e in r["epochs"]])), "epochs": len(r["epochs"]),
                     "train_samples": r["config"]["train_samples"], "val_samples": r["config"]["val_samples"]})
    res = os.path.join(HERE, "results")
    os.makedirs(res, exist_ok=True)
    with open(os.path.join(res, "fashion_mnist.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    import platform
    lines = [f"# Fashion-MNIST at 64x64 (8x8 latents): classification from latents vs reconstructions",
             "", f"Command: `python benchmarks/fashion_mnist.py --work {a.work} --epochs {a.epochs}"
             f"{' --limit ' + str(a.limit) if a.limit else ''}`; machine: {platform.machine()} CPU, "
             f"{os.cpu_count()} cores; date {time.strftime('%Y-%m-%d')}.", "",
             "Models: scaled cResNet-51 / ResNet-50 (width 16, half depth), SGD+Nesterov, warmup+cosine, flips only.", "",
             "| operating point | store bpp | input | top-1 | top-5 | GFLOPs classifier | GFLOPs incl. decoder | s/epoch |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sb = f"{r['store_bpp']:.3f}" if r["store_bpp"] else "-"
        lines.append(f"| {r['operating_point']} | {sb} | {r['input']} | {r['top1']:.2f} | {r['top5']:.2f} | "
                     f"{r['gflops_classifier']:.4f} | {r['gflops_with_decoder']:.4f} | {r['s_per_epoch']:.0f} |")
    open(os.path.join(res, "fashion_mnist.md"), "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, marker in (("cResNet-51 (latents)", "o"), ("ResNet-50 (reconstructions)", "s")):
        sel = [r for r in rows if r["input"] == label]
        ax.plot([r["gflops_with_decoder"] for r in sel], [r["top1"] for r in sel], marker + "-", label=label)
        for r in sel:
            ax.annotate(r["operating_point"], (r["gflops_with_decoder"], r["top1"]), fontsize=8,
                        textcoords="offset points", xytext=(4, 4))
    o = [r for r in rows if r["operating_point"] == "original"]
    if o:
        ax.axhline(o[0]["top1"], color="gray", ls="--", label="ResNet-50 on originals")
    ax.set_xlabel("GFLOPs per image (classifier + decoder where one is needed)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("Fashion-MNIST 64x64: accuracy vs compute")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(res, "fashion_mnist.png"), dpi=100)


if __name__ == "__main__":
    main()
