"""Joint compression + classification finetuning against the paper's control, on Fashion-MNIST at 64x64.

    python benchmarks/joint.py --work runs/fmnist --steps 600 --seeds 0 1

For each shipped operating point (the stores, PNG trees and baseline cResNet-51 runs are those of
benchmarks/fashion_mnist.py, made first if absent):
  baseline : the cResNet-51 trained on the store's latents, evaluated as is;
  control  : `latentstore train joint --freeze-codec`: the classifier trained STEPS more steps, codec frozen;
  joint    : `latentstore train joint`: codec and classifier finetuned together for the same steps.
Every row is measured the same way on the 10k test images: top-1 from the codec's symbols, the symbols'
empirical entropy (bpp), real bytes of the first images, and the codec's PSNR / MS-SSIM on the validation
photos. Writes benchmarks/results/joint.{md,csv,png}; every run skips what is already done.
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

from benchmarks.fashion_mnist import MODEL_KW, convert_all, originals_npz, prepare, run  # noqa: E402
from latentstore.codec.zoo import available_codecs  # noqa: E402


def joint_run(work: str, name: str, **cfg) -> dict:
    from latentstore_train.joint import JointConfig, train
    out = os.path.join(work, "joint", name)
    done = os.path.join(out, "result.json")
    if os.path.exists(done) and os.path.exists(os.path.join(out, "summary.json")):
        return json.load(open(done))
    t = time.time()
    r = train(JointConfig(**cfg), out)
    res = {k: v for k, v in r.items() if k not in ("log", "config")}
    res["train_seconds"] = time.time() - t
    res["last_steps"] = r["log"][-20:] if r["log"] else []
    json.dump(res, open(os.path.join(out, "summary.json"), "w"), indent=1)
    return res


def photo_quality(codec_path: str) -> dict:
    from latentstore.eval.validation import measure_codec
    m = measure_codec(codec_path)
    return {"photo_bpp": m["bpp"], "photo_psnr": m["psnr"], "photo_msssim": m["msssim"]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="runs/fmnist")
    ap.add_argument("--steps", type=int, default=600, help="finetuning steps of control and joint runs")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--gamma", type=float, default=1e-3)
    ap.add_argument("--codecs", nargs="+", default=None)
    ap.add_argument("--baseline-epochs", type=int, default=3)
    a = ap.parse_args(argv)
    codecs = a.codecs or [c for c in available_codecs() if c.startswith("ls-")]
    pngs = prepare(a.work, 0)
    stores = convert_all(a.work, pngs, codecs)
    orig = originals_npz(a.work, pngs)
    rows = []
    for c in codecs:
        base = run(a.work, f"latent-{c}", input="latent", train=stores[(c, "train")], val=stores[(c, "test")],
                   model="cresnet51", epochs=a.baseline_epochs, batch_size=128, lr=0.2, weight_decay=5e-4,
                   num_workers=2, **MODEL_KW)
        cls_run = os.path.join(a.work, "runs", f"latent-{c}")
        common = dict(codec=c, classifier=cls_run, train=orig["train"], val=orig["test"], batch_size=a.batch_size,
                      num_workers=2, eval_images=2000, gamma=a.gamma)
        r = joint_run(a.work, f"{c}-baseline", epochs=0, freeze_codec=True, **common)
        rows.append({"op": c, "row": "baseline", "seed": "-", **r, **photo_quality(c),
                     "classify_top1": base["epochs"][-1]["top1"]})
        for s in a.seeds:
            for mode in ("control", "joint"):
                r = joint_run(a.work, f"{c}-{mode}-s{s}", epochs=100, max_steps=a.steps, seed=s,
                              freeze_codec=mode == "control", **common)
                rows.append({"op": c, "row": mode, "seed": s, **r, **photo_quality(r["codec"])})
    report(rows, a)


def report(rows: list[dict], a) -> None:
    res = os.path.join(HERE, "results")
    keys = ["op", "row", "seed", "top1", "bpp_entropy", "bpp_real", "psnr_val", "photo_bpp", "photo_psnr",
            "photo_msssim", "train_seconds", "codec_hash"]
    with open(os.path.join(res, "joint.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    lines = ["# Joint compression + classification finetuning vs the control (Fashion-MNIST, 64x64)", "",
             f"Command: `python benchmarks/joint.py --work {a.work} --steps {a.steps} --batch-size {a.batch_size} --seeds "
             f"{' '.join(map(str, a.seeds))} --gamma {a.gamma} --baseline-epochs {a.baseline_epochs}`; "
             f"{os.cpu_count()}-core CPU, no GPU; "
             f"{time.strftime('%Y-%m-%d')}.", "",
             "top-1 on the 10k test images from the codec's symbols; bpp from the symbols' empirical entropy and "
             "from real bytes (first 2,000 test images); PSNR / MS-SSIM of the codec on the validation photos.", "",
             "| op. point | row | seed | top-1 | bpp (entropy) | bpp (bytes) | test PSNR | photos: bpp | PSNR | MS-SSIM |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['op']} | {r['row']} | {r['seed']} | {r['top1']:.2f} | {r['bpp_entropy']:.3f} | "
                     f"{r['bpp_real']:.3f} | {r['psnr_val']:.2f} | {r['photo_bpp']:.3f} | {r['photo_psnr']:.2f} | "
                     f"{r['photo_msssim']:.4f} |")
    lines += ["", "Mean over seeds, joint minus control (top-1 points):", ""]
    for op in sorted({r["op"] for r in rows}):
        j = [r["top1"] for r in rows if r["op"] == op and r["row"] == "joint"]
        c = [r["top1"] for r in rows if r["op"] == op and r["row"] == "control"]
        if j and c:
            lines.append(f"- {op}: joint {np.mean(j):.2f} vs control {np.mean(c):.2f} ({np.mean(j) - np.mean(c):+.2f}; "
                         f"{len(j)} seed(s), spread of control {np.ptp(c):.2f}, of joint {np.ptp(j):.2f})")
    open(os.path.join(res, "joint.md"), "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(rows, os.path.join(res, "joint.png"))


def plot(rows: list[dict], path: str) -> None:
    """The paper's 'moves up' figure: accuracy against bpp, one line per row kind."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for kind, marker in (("baseline", "o"), ("control", "s"), ("joint", "^")):
        pts = {}
        for r in rows:
            if r["row"] == kind:
                pts.setdefault(r["op"], []).append((r["bpp_entropy"], r["top1"]))
        xs = [np.mean([p[0] for p in v]) for v in pts.values()]
        ys = [np.mean([p[1] for p in v]) for v in pts.values()]
        order = np.argsort(xs)
        ax.plot(np.array(xs)[order], np.array(ys)[order], marker + "-", label=kind)
    ax.set_xlabel("bits per pixel (entropy of the test images' symbols)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("Joint training 'moves up': Fashion-MNIST 64x64")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
