"""The paper's segmentation comparison (Torfason et al. 2018, Table 2 and Fig. 7) on the offline scenes.

    python benchmarks/segmentation.py --work runs/seg [--train 2000 --val 500 --size 128 --epochs 4]

1. scenes  : `latentstore datasets scenes` (Fashion-MNIST items on offline photos, VOC layout)
2. convert : `latentstore convert SCENES DST --split train|val` at every shipped operating point
3. train   : `latentstore train seg`, scaled networks: cResNet-51-d on the latents, ResNet-50-d on each
             operating point's reconstructions, ResNet-50-d on the original scenes; one seed, then a
             second seed for both inputs of every operating point where latent and recon differ by < 1 point
4. report  : benchmarks/results/segmentation.{md,csv,png}, segmentation_predictions.png, and per-run
             logs under benchmarks/results/segmentation_runs/
Every stage skips what is done and a run resumes from its checkpoint, so rerun after an interruption;
the report is rewritten after every run, so a crash keeps what was measured.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
RESULTS = os.path.join(HERE, "results")
CODECS = ["ls-c32", "ls-c16", "ls-c8"]  # the paper's 0.635, 0.330, 0.098 bpp operating points
CLI = [sys.executable, "-m", "latentstore.cli"]
NAMES = {"latent": "cResNet-51-d (latents)", "recon": "ResNet-50-d (reconstructions)", "rgb": "ResNet-50-d (originals)"}


def sh(args: list, env: dict | None = None) -> None:
    print("$", " ".join(args[2:] if args[:2] == CLI[:2] else args), flush=True)
    subprocess.run(args, check=True, env={**os.environ, **(env or {})})


def make_data(a) -> tuple[str, dict]:
    scenes = os.path.join(a.work, "scenes")
    if not os.path.exists(os.path.join(scenes, "scenes.json")):
        shutil.rmtree(scenes, ignore_errors=True)
        sh(CLI + ["datasets", "scenes", scenes, "--train", str(a.train), "--val", str(a.val), "--size", str(a.size),
                  "--seed", "0", "--quiet"])
    stores = {}
    for c in CODECS:
        for split in ("train", "val"):
            dst = os.path.join(a.work, "stores", f"{c}-{split}.zarr")
            stores[c, split] = dst
            if not os.path.exists(os.path.join(dst, "zarr.json")) or not _complete(dst):
                resume = ["--resume"] if os.path.exists(dst) else []
                sh(CLI + ["convert", scenes, dst, "--split", split, "--codec", c, "--size", str(a.size),
                          "--shard-size", "512", "--batch-size", "64", "--quiet"] + resume)
    return scenes, stores


def _complete(dst: str) -> bool:
    from latentstore.store import open_store
    try:
        open_store(dst)
        return True
    except Exception:
        return False


def run(a, name: str, inp: str, seed: int, train: str, val: str) -> dict:
    """One `latentstore train seg` run in its own process (memory back after it; a crash stays one run)."""
    out = os.path.join(a.work, "runs", name)
    done = os.path.join(out, "result.json")
    if not os.path.exists(done):
        model = "cresnet51d" if inp == "latent" else "resnet50d"
        sh(CLI + ["train", "seg", "--input", inp, "--train", train, "--val", val, "--model", model,
                  "--size", str(a.size), "--width", str(a.width), "--depth-scale", str(a.depth_scale),
                  "--epochs", str(a.epochs), "--batch-size", str(a.batch_size), "--lr", str(a.lr),
                  "--warmup-epochs", "0.3", "--seed", str(seed), "--num-workers", "0", "--threads", str(a.threads),
                  "--grid", "6", "--quiet", "--out", out],
           env={"OMP_NUM_THREADS": str(a.threads), "LATENTSTORE_CACHE": os.path.join(a.work, "cache")})
        ck = json.load(open(os.path.join(out, "ckpt.json")))
        m = json.load(open(os.path.join(out, "seg_metrics.json")))
        json.dump({"epochs": ck["epochs_log"], "config": ck["config"], "metrics": m}, open(done, "w"), indent=1)
        keep = os.path.join(RESULTS, "segmentation_runs")
        os.makedirs(keep, exist_ok=True)
        for f in ("config.json", "epochs.csv", "seg_metrics.json", "seg_metrics.csv", "curves.png"):  # grids: one combined figure
            if os.path.exists(os.path.join(out, f)):
                shutil.copy(os.path.join(out, f), os.path.join(keep, f"{name}-{f}"))
    return json.load(open(done))


def flops(a) -> dict:
    """GFLOPs per image of the networks as trained (scaled), of the paper-size networks, and of each decoder."""
    import torch

    from latentstore.codec.zoo import load_codec
    from latentstore.models.deeplab import build_seg
    from latentstore.models.flops import _Dec, gflops, seg_gflops
    out = {}
    for c in CODECS:
        C = load_codec(c).cfg.C
        with torch.device("meta"):  # the counter needs shapes only
            net = build_seg("cresnet51d", in_channels=C, num_classes=11, width=a.width, depth_scale=a.depth_scale)
            x = torch.empty(1, C, a.size // 8, a.size // 8)
        out[f"latent-{c}"] = gflops(net, x)
        out[f"latent-full-{c}"] = seg_gflops("cresnet51d", a.size, C, 11)
        out[f"decoder-{c}"] = gflops(_Dec(load_codec(c)), torch.randn(1, C, a.size // 8, a.size // 8))
    with torch.device("meta"):
        net = build_seg("resnet50d", in_channels=3, num_classes=11, width=a.width, depth_scale=a.depth_scale)
        x = torch.empty(1, 3, a.size, a.size)
    out["rgb"] = gflops(net, x)
    out["rgb-full"] = seg_gflops("resnet50d", a.size, num_classes=11)
    return out


def rows_of(results: dict, stores: dict, fl: dict) -> list[dict]:
    from latentstore.store.info import info
    rows = []
    for (inp, c, seed), r in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2])):
        e = r["epochs"]
        g = fl[f"latent-{c}"] if inp == "latent" else fl["rgb"]
        rows.append({"operating_point": c, "store_bpp": info(stores[c, "val"])["bpp_stored"] if c != "-" else None,
                     "input": inp, "network": NAMES[inp], "seed": seed, "miou": r["metrics"]["miou"],
                     "pixel_accuracy": r["metrics"]["pixel_accuracy"], "gflops": g,
                     "gflops_with_decoder": g + (fl[f"decoder-{c}"] if inp == "recon" else 0.0),
                     "s_per_epoch": float(np.mean([x["epoch_seconds"] for x in e if "epoch_seconds" in x])),
                     "epochs": len(e), "train_samples": r["config"]["train_samples"],
                     "val_samples": r["config"]["val_samples"], "background_only_miou": background_only(r["metrics"]),
                     "background_pct": 100 * r["metrics"]["per_class"][0]["gt_pixels"] / r["metrics"]["pixels"]})
    return rows


def background_only(m: dict) -> float:
    """The mIoU of predicting background everywhere on this val split: the floor a network must clear."""
    gt = [c["gt_pixels"] for c in m["per_class"]]
    return 100 * gt[0] / sum(gt) / sum(1 for g in gt if g)


def mean_miou(rows, c, inp) -> tuple[float, list]:
    v = [r["miou"] for r in rows if r["operating_point"] == c and r["input"] == inp]
    return (float(np.mean(v)) if v else float("nan")), v


def report(a, rows: list, fl: dict) -> None:
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "segmentation.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    rgb, rgb_v = mean_miou(rows, "-", "rgb")
    n = rows[0]
    lines = ["# Segmentation from latents vs reconstructions vs originals (offline scenes)", "",
             f"Command: `python benchmarks/segmentation.py --work {a.work} --train {a.train} --val {a.val} --size {a.size} "
             f"--epochs {a.epochs} --width {a.width} --depth-scale {a.depth_scale} --batch-size {a.batch_size} --lr {a.lr}`; "
             f"{platform.machine()} CPU, {os.cpu_count()} cores shared with other jobs, {a.threads} torch thread(s) "
             f"per run, no GPU; {time.strftime('%Y-%m-%d')}.", "",
             f"Scale: {n['train_samples']:,} train / {n['val_samples']:,} val scenes at {a.size}x{a.size} "
             f"({a.size // 8}x{a.size // 8} latents), 11 classes (background + 10 Fashion-MNIST items); networks scaled "
             f"to width {a.width}, depth x{a.depth_scale}; {a.epochs} epochs from scratch (no ImageNet pre-training), "
             f"batch {a.batch_size}, SGD+Nesterov, lr {a.lr} per 256, warmup+cosine, flips. The paper: VOC 2012 "
             f"(10,582 / 1,449 images), full-size ImageNet-pre-trained networks.", "",
             "mIoU (%) on the val split; seeds listed where two were run (mean first). GFLOPs per image of the "
             "networks as trained (2 per multiply-add).", "",
             "| operating point | store bpp | mIoU cResNet-51-d (latents) | mIoU ResNet-50-d (recon) | latents - recon "
             "| mIoU ResNet-50-d (originals) | GFLOPs latents | GFLOPs recon (+ decoder) | s/epoch latents / recon |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in CODECS:
        lat, lv = mean_miou(rows, c, "latent")
        rec, rv = mean_miou(rows, c, "recon")
        if not lv and not rv:
            continue
        bpp = next(r["store_bpp"] for r in rows if r["operating_point"] == c)
        sp = {i: np.mean([r["s_per_epoch"] for r in rows if r["operating_point"] == c and r["input"] == i] or [np.nan])
              for i in ("latent", "recon")}
        fmt = lambda m, v: f"{m:.2f}" + (f" ({', '.join(f'{x:.2f}' for x in v)})" if len(v) > 1 else "")  # noqa: E731
        lines.append(f"| {c} | {bpp:.3f} | {fmt(lat, lv)} | {fmt(rec, rv)} | {lat - rec:+.2f} | "
                     f"{fmt(rgb, rgb_v)} | {fl[f'latent-{c}']:.3f} | {fl['rgb']:.3f} "
                     f"(+{fl[f'decoder-{c}']:.3f} = {fl['rgb'] + fl[f'decoder-{c}']:.3f}) | "
                     f"{sp['latent']:.0f} / {sp['recon']:.0f} |")
    spreads = [abs(v[0] - v[1]) for c in CODECS for i in ("latent", "recon") for v in [mean_miou(rows, c, i)[1]]
               if len(v) > 1]
    lines += ["", f"A network that predicts background everywhere scores {n['background_only_miou']:.2f} mIoU on this "
              f"val split (background is {n['background_pct']:.1f}% of its labelled pixels)."
              + (f" Seed-to-seed spread of one configuration: {min(spreads):.2f} to {max(spreads):.2f} points."
                 if spreads else ""),
              "", "The paper (Table 2): latents equal to reconstructions at 0.635 bpp, +0.37 points at 0.330, "
              "+1.65 at 0.098.", "",
              f"Paper-size networks at {a.size} px (width 64, full depth; `latentstore.models.flops.seg_gflops`): "
              + ", ".join(f"cResNet-51-d on {c} {fl[f'latent-full-{c}']:.2f}" for c in CODECS)
              + f", ResNet-50-d {fl['rgb-full']:.2f} GFLOPs; the decoders add "
              + ", ".join(f"{fl[f'decoder-{c}']:.2f} ({c})" for c in CODECS) + ".", "",
              "![mIoU vs GFLOPs](segmentation.png)", "", "Predictions (ls-c8): ![grid](segmentation_predictions.png)",
              "", "Per-run config, epochs, per-class IoU and curves: `segmentation_runs/` (each run's own predictions.png "
              "stays in its run directory under --work)."]
    open(os.path.join(RESULTS, "segmentation.md"), "w").write("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    from latentstore.eval.segmentation import plot_miou_vs_gflops
    points = []
    for c in CODECS:
        for inp in ("latent", "recon"):
            m, v = mean_miou(rows, c, inp)
            if v:
                points.append({"label": f"{NAMES[inp].split(' (')[0]} {inp} {c}", "miou": m,
                               "gflops": fl[f"latent-{c}"] if inp == "latent" else fl["rgb"],
                               "gflops_decoder": fl[f"decoder-{c}"] if inp == "recon" else 0.0})
    if rgb_v:
        points.append({"label": "ResNet-50-d originals", "miou": rgb, "gflops": fl["rgb"], "gflops_decoder": 0.0})
    plot_miou_vs_gflops(points, os.path.join(RESULTS, "segmentation.png"),
                        f"scenes {a.size}px: mIoU vs GFLOPs (hollow: + decoder)")


def prediction_figure(a, stores: dict, scenes: str) -> None:
    """One grid at the lowest rate: image | reconstruction | truth | latents | reconstruction | original."""
    import torch
    from safetensors.torch import load_file

    from latentstore.data.datasets import collate
    from latentstore.eval.segmentation import plot_predictions
    from latentstore.models.deeplab import build_seg
    from latentstore_train.common import batch_input
    from latentstore_train.seg import SegConfig, make_data
    c = CODECS[-1]
    cols = {}
    for inp, name, data in (("latent", f"latent-{c}-s0", stores[c, "val"]), ("recon", f"recon-{c}-s0", stores[c, "val"]),
                            ("rgb", "rgb-s0", scenes)):
        ck = os.path.join(a.work, "runs", name, "ckpt.safetensors")
        if not os.path.exists(ck):
            return
        cfg = SegConfig(input=inp, size=a.size, width=a.width, depth_scale=a.depth_scale)
        d = make_data(cfg, data, "val", False)
        net = build_seg("cresnet51d" if inp == "latent" else "resnet50d", in_channels=d.in_channels, num_classes=11,
                        width=a.width, depth_scale=a.depth_scale)
        net.load_state_dict({k[6:]: v for k, v in load_file(ck).items() if k.startswith("model/")})
        cols[inp] = (net.eval(), d)
    rows = []
    with torch.no_grad():
        for i in np.linspace(0, len(cols["latent"][1].ds) - 1, 5).round().astype(int):
            preds = {}
            for inp, (net, d) in cols.items():
                b = collate([d.ds[int(i)]])
                preds[NAMES[inp].replace(" (", "\n(")] = net(batch_input(b, d.centres, "cpu")).argmax(1)[0].numpy()
            image, recon = cols["latent"][1].views(int(i))
            rows.append({"image": image, "recon": recon, "target": b["mask"][0].numpy(), "preds": preds,
                         "label": f"val #{i}"})
    plot_predictions(rows, os.path.join(RESULTS, "segmentation_predictions.png"), cols["latent"][1].class_names,
                     f"{c}: predictions of the three networks (seed 0)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="runs/seg")
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--val", type=int, default=500)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--depth-scale", type=float, default=0.3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=0.4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-second-seed", action="store_true")
    ap.add_argument("--stage", choices=["data", "all"], default="all")
    a = ap.parse_args(argv)
    a.work = os.path.abspath(a.work)
    os.makedirs(a.work, exist_ok=True)
    t0 = time.time()
    scenes, stores = make_data(a)
    print(f"data ready in {time.time() - t0:.0f} s", flush=True)
    if a.stage == "data":
        return
    fl = flops(a)
    results = {}

    def one(inp, c, seed):
        name = f"{inp}-{c}-s{seed}" if inp != "rgb" else f"rgb-s{seed}"
        tr, va = (scenes, scenes) if inp == "rgb" else (stores[c, "train"], stores[c, "val"])
        results[inp, c, seed] = run(a, name, inp, seed, tr, va)
        report(a, rows_of(results, stores, fl), fl)  # after every run: a crash keeps what was measured

    one("rgb", "-", 0)
    for c in CODECS[::-1]:  # the lowest rate first: the paper's largest gap
        one("latent", c, 0)
        one("recon", c, 0)
    for c in CODECS[::-1]:
        gap = results["latent", c, 0]["metrics"]["miou"] - results["recon", c, 0]["metrics"]["miou"]
        if abs(gap) < 1 and not a.no_second_seed:
            one("latent", c, 1)
            one("recon", c, 1)
    prediction_figure(a, stores, scenes)
    print(f"all done in {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
