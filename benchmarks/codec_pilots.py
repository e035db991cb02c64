"""Pilots for the long codec training: which recipe buys the most quality per CPU-second? Side by side, one run.

    nice -n 10 python -m benchmarks.codec_pilots [--point ls-c16] [--cpu-seconds 200] [--jobs 2] [--only A,B]

Every pilot trains the same operating point from the same seed for the same budget of *training CPU time*
(max_cpu_seconds: the process's CPU, all threads; fair on a shared machine), `--jobs` pilots at a time, one
process each. At the end of the budget each is validated as a long run would be (latentstore_train.codec_progress:
real v2 bytes with tables fitted on training photos, PSNR and MS-SSIM on the fixed validation subset), and the
validation's CPU is not counted in the budget. The schedule is the long run's (cosine over `--steps`), so the
pilots compare the same early phase of it. Writes benchmarks/results/codec_training/pilots.{csv,md}; the runs
stay in --work (default /tmp/codec_pilots), and a pilot already finished there is not run again.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

OUT = os.path.join(os.path.dirname(__file__), "results", "codec_training")
BASE = dict(N=64, batch_size=8, crop=128, photo_side=512, min_scale=1.0, lr=3e-4, lr_schedule="cosine", warmup=500,
            extra_photos=True, precision="bf16", threads=1, rate_scale=1.0)
# name -> (what it tests, the changes from BASE)
PILOTS = {
    "A-base": ("bf16 + channels_last, 128 px x 8, 1 thread, lr 3e-4", {}),
    "B-fp32": ("fp32 instead of bf16", dict(precision="fp32")),
    "C-192x4": ("192-px crops x 4", dict(crop=192, batch_size=4)),
    "D-256x2": ("256-px crops x 2", dict(crop=256, batch_size=2)),
    "E-2threads": ("2 threads in one process", dict(threads=2)),
    "F-N128": ("N=128 trunk", dict(N=128)),
    "G-lr1e-3": ("lr 1e-3", dict(lr=1e-3)),
    "H-rate1.4": ("H_t x 1.4 (rate calibration)", dict(rate_scale=1.4)),
    "I-finetune": ("finetune the shipped codec, lr 1e-4, sigma from 8, H_t x 1.4",
                   dict(init_from="{name}", lr=1e-4, warmup=0, sigma_start=8.0, rate_scale=1.4)),
    "J-multiscale": ("multi-scale crops (full-size photos, scale 0.25..1)", dict(photo_side=0, min_scale=0.25)),
}


def run_one(name: str, point: str, cpu_seconds: float, steps: int, work: str) -> dict:
    """One pilot, in this process (the parent starts each in its own)."""
    from latentstore_train.codec import recipe_config, train
    import latentstore_train.codec as codec_mod
    changes = {**BASE, **PILOTS[name][1]}
    changes["init_from"] = changes.get("init_from", "").format(name=point)
    codec_mod.RECIPES["_pilot"] = {**changes, "steps": steps}
    cfg = recipe_config(point, "_pilot", max_cpu_seconds=cpu_seconds, val_cpu_minutes=cpu_seconds / 120.0,
                        ckpt_minutes=0.0, ckpt_every=10 ** 9, log_every=50, device="cpu")
    out = os.path.join(work, name)
    r = train(cfg, out, progress=False)
    with open(os.path.join(out, "val.csv"), newline="") as f:
        val = list(csv.DictReader(f))
    from latentstore_train.checkpoint import tensors_path
    size = os.path.getsize(tensors_path(out))  # ckpt-<sha12>.safetensors: the file ckpt.json names
    row = {"pilot": name, "what": PILOTS[name][0], "steps": r["steps"], "train_cpu_s": round(r["train_cpu_seconds"], 1),
           "steps_per_cpu_s": round(r["steps"] / r["train_cpu_seconds"], 3), "wall_s": round(r["train_seconds"], 1),
           "ckpt_MB": round(size / 1e6, 2), **{f"val_{k}": float(val[-1][k]) for k in ("bpp", "psnr", "msssim")},
           "val_bpp_marginal": float(val[-1]["bpp_marginal"]), "val_step": int(val[-1]["step"]),
           "mid_msssim": float(val[0]["msssim"]) if len(val) > 1 else float("nan")}
    with open(os.path.join(out, "pilot.json"), "w") as f:
        json.dump(row, f)
    return row


def final_validation(out: str, point: str, steps: int) -> dict:
    """Validate a pilot's last checkpoint (the weights at its last step), as train() does where it stops."""
    from latentstore.codec.model import LatentCodec
    from latentstore_train.checkpoint import read_checkpoint
    from latentstore_train.codec import run_config
    from latentstore_train.codec_progress import Validator
    meta, tensors = read_checkpoint(out)
    model = LatentCodec(run_config(out).codec)
    model.load_state_dict({k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")})
    v = Validator(out, point, 1.0, step=meta["step"]).run(model, meta["step"], meta["cpu_seconds"], meta["elapsed"])
    return {**{f"val_{k}": float(v[k]) for k in ("bpp", "psnr", "msssim", "bpp_marginal")}, "val_step": steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--point", default="ls-c16")
    ap.add_argument("--cpu-seconds", type=float, default=200.0)
    ap.add_argument("--steps", type=int, default=150000, help="the schedule's length (the long run's)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated pilot names (default: all)")
    ap.add_argument("--work", default="/tmp/codec_pilots")
    ap.add_argument("--one", default="", help=argparse.SUPPRESS)  # internal: run one pilot in this process
    a = ap.parse_args()
    if a.one:
        print(json.dumps(run_one(a.one, a.point, a.cpu_seconds, a.steps, a.work)))
        return
    names = [n for n in PILOTS if not a.only or n in a.only.split(",")]
    os.makedirs(a.work, exist_ok=True)

    def launch(name):
        done = os.path.join(a.work, name, "pilot.json")
        if not os.path.exists(done):
            cmd = [sys.executable, "-m", "benchmarks.codec_pilots", "--one", name, "--point", a.point,
                   "--cpu-seconds", str(a.cpu_seconds), "--steps", str(a.steps), "--work", a.work]
            t0 = time.time()
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
            if p.returncode:
                print(f"{name}: failed ({p.stderr.strip().splitlines()[-1:]})", flush=True)
                return None
            print(f"{name}: done in {time.time() - t0:.0f} s", flush=True)
        with open(done) as f:
            row = json.load(f)
        if row["val_step"] != row["steps"]:  # a pilot run before train() validated where it stops
            row.update(final_validation(os.path.join(a.work, name), a.point, row["steps"]))
            with open(done, "w") as f:
                json.dump(row, f)
        return row

    with ThreadPoolExecutor(a.jobs) as pool:
        rows = [r for r in pool.map(launch, names) if r]
    write(rows, a)


def write(rows: list[dict], a) -> None:
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "pilots.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    base = next((r for r in rows if r["pilot"] == "A-base"), rows[0])
    lines = [f"# Codec pilots: {a.point}, {a.cpu_seconds:.0f} training CPU-seconds each, {a.jobs} at a time",
             "", f"Command: `nice -n 10 python -m benchmarks.codec_pilots --point {a.point} --cpu-seconds "
             f"{a.cpu_seconds:.0f} --jobs {a.jobs}` ({time.strftime('%Y-%m-%d')}, the shared 2-core machine). "
             f"Schedule: cosine over {a.steps} steps (the long run's), so every pilot is early in it. Validation: "
             "6 validation photos at 512 px, delivered bpp from the real v2 coder.", "",
             "| pilot | what | steps | steps / CPU-s | x base | ckpt MB | val bpp | PSNR | MS-SSIM |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['pilot']} | {r['what']} | {r['steps']} | {r['steps_per_cpu_s']:.2f} | "
                     f"{r['steps_per_cpu_s'] / base['steps_per_cpu_s']:.2f} | {r['ckpt_MB']:.1f} | "
                     f"{r['val_bpp']:.3f} | "
                     f"{r['val_psnr']:.2f} | {r['val_msssim']:.4f} |")
    with open(os.path.join(OUT, "pilots.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
