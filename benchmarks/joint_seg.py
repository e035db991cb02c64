"""Segmentation with the jointly trained encoder against the control's (issue #15; the paper: +1.7 mIoU).

    python benchmarks/joint_seg.py --joint-work runs/fmnist-joint --seg-work runs/seg [--codecs ls-c8] [--seeds 0 1]

Takes the codecs that benchmarks/joint.py wrote (RUN/joint/<op>-joint-s0/codec.safetensors) and the offline
scenes that benchmarks/segmentation.py made (same settings: its defaults), converts the scenes with the joint
encoder, and trains cResNet-51-d on those latents exactly as segmentation.py trains on the shipped codec's.
The control's codec is the shipped one (`--freeze-codec` leaves it untouched; its hash is checked), so its
runs are segmentation.py's own `latent-<op>-s<seed>` runs, reused when they exist and made otherwise.
Writes benchmarks/results/joint_seg.{md,csv}.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
import segmentation as seg  # noqa: E402


def codec_hash(path: str) -> str:
    from latentstore.codec.zoo import load_codec
    return load_codec(path).hash


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--joint-work", default="runs/fmnist-joint", help="benchmarks/joint.py's --work")
    ap.add_argument("--seg-work", default="runs/seg", help="benchmarks/segmentation.py's --work (its scenes)")
    ap.add_argument("--codecs", nargs="+", default=["ls-c8"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--from-classifier", action="store_true",
                    help="start each cResNet-51-d from its run's classifier (joint: the jointly finetuned one; "
                         "control: the control's), at the classifier's width and depth, as the paper does")
    a = ap.parse_args(argv)
    s = argparse.Namespace(  # segmentation.py's defaults: the runs must be comparable
        work=os.path.abspath(a.seg_work), train=2000, val=500, size=128, epochs=4, width=8, depth_scale=0.3,
        batch_size=16, lr=0.4, threads=1)
    scenes, stores = seg.make_data(s)
    rows = []
    t0 = time.time()
    for c in a.codecs:
        joint = os.path.join(a.joint_work, "joint", f"{c}-joint-s0", "codec.safetensors")
        control = os.path.join(a.joint_work, "joint", f"{c}-control-s0", "codec.safetensors")
        if codec_hash(control) != codec_hash(c):
            raise SystemExit(f"error: {control} is not the shipped {c}: the control's runs cannot be reused")
        jstores = {}
        for split in ("train", "val"):
            dst = os.path.join(s.work, "stores", f"joint-{c}-{split}.zarr")
            if not os.path.exists(os.path.join(dst, "zarr.json")) or not seg._complete(dst):
                resume = ["--resume"] if os.path.exists(dst) else []
                seg.sh(seg.CLI + ["convert", scenes, dst, "--split", split, "--codec", joint, "--size", str(s.size),
                                  "--shard-size", "512", "--batch-size", "64", "--quiet"] + resume)
            jstores[split] = dst
        for seed in a.seeds:
            for row, name, tr, va in (("control", f"latent-{c}-s{seed}", stores[c, "train"], stores[c, "val"]),
                                      ("joint", f"latent-joint-{c}-s{seed}", jstores["train"], jstores["val"])):
                if a.from_classifier:
                    r = backbone_run(s, os.path.join(a.joint_work, "joint", f"{c}-{row}-s0", "classifier"),
                                     "bb-" + name, seed, tr, va)
                else:
                    r = seg.run(s, name, "latent", seed, tr, va)
                rows.append({"op": c, "row": row, "seed": seed, "miou": r["metrics"]["miou"],
                             "codec": codec_hash(joint if row == "joint" else c)})
                print(f"{c} {row} seed {seed}: mIoU {r['metrics']['miou']:.2f}", flush=True)
    report(rows, a)
    print(f"done in {time.time() - t0:.0f} s")


def backbone_run(s, classifier: str, name: str, seed: int, train: str, val: str) -> dict:
    """segmentation.py's latent run, but from `classifier`'s weights at its width and depth."""
    cfg = json.load(open(os.path.join(classifier, "config.json")))
    s2 = argparse.Namespace(**{**vars(s), "width": cfg["width"], "depth_scale": cfg["depth_scale"]})
    out = os.path.join(s.work, "runs", name)
    if not os.path.exists(os.path.join(out, "result.json")):
        seg.sh(seg.CLI + ["train", "seg", "--input", "latent", "--train", train, "--val", val, "--model", "cresnet51d",
                          "--backbone", classifier, "--size", str(s2.size), "--width", str(s2.width), "--depth-scale",
                          str(s2.depth_scale), "--epochs", str(s2.epochs), "--batch-size", str(s2.batch_size), "--lr",
                          str(s2.lr), "--warmup-epochs", "0.3", "--seed", str(seed), "--num-workers", "0",
                          "--threads", "2", "--grid", "0", "--quiet", "--out", out])
        m = json.load(open(os.path.join(out, "seg_metrics.json")))
        json.dump({"metrics": m, "backbone": classifier}, open(os.path.join(out, "result.json"), "w"), indent=1)
    return json.load(open(os.path.join(out, "result.json")))


def report(rows: list[dict], a) -> None:
    import numpy as np
    stem = "joint_seg_backbone" if a.from_classifier else "joint_seg"
    with open(os.path.join(seg.RESULTS, stem + ".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = ["# Segmentation with the jointly trained encoder vs the control's (offline scenes)", "",
             f"Command: `python benchmarks/joint_seg.py --joint-work {a.joint_work} --seg-work {a.seg_work} --codecs "
             f"{' '.join(a.codecs)} --seeds {' '.join(map(str, a.seeds))}{' --from-classifier' if a.from_classifier else ''}`; "
             f"{os.cpu_count()}-core CPU, no GPU; "
             f"{time.strftime('%Y-%m-%d')}.", "",
             "cResNet-51-d on each encoder's latents, trained as in segmentation.md (2,000 / 500 scenes at 128 px, "
             "width 8, depth x0.3, 4 epochs). The joint encoder is benchmarks/joint.py's (finetuned with a "
             "Fashion-MNIST classifier, seed 0); the control's encoder is the shipped codec."
             + (" Each network starts from its run's classifier (the jointly finetuned cResNet-51, or the control's), "
                "at that classifier's width and depth, as the paper does." if a.from_classifier else
                " Both networks start from scratch."), "",
             "| op. point | row | seed | mIoU | codec |", "|---|---|---|---|---|"]
    lines += [f"| {r['op']} | {r['row']} | {r['seed']} | {r['miou']:.2f} | {r['codec']} |" for r in rows]
    lines += ["", "Mean over seeds, joint minus control (mIoU points):", ""]
    for op in sorted({r["op"] for r in rows}):
        j = [r["miou"] for r in rows if r["op"] == op and r["row"] == "joint"]
        c = [r["miou"] for r in rows if r["op"] == op and r["row"] == "control"]
        lines.append(f"- {op}: joint {np.mean(j):.2f} vs control {np.mean(c):.2f} ({np.mean(j) - np.mean(c):+.2f}; "
                     f"{len(j)} seed(s), spread of control {np.ptp(c):.2f}, of joint {np.ptp(j):.2f}); predicting "
                     f"background everywhere scores 7.40")
    open(os.path.join(seg.RESULTS, stem + ".md"), "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
