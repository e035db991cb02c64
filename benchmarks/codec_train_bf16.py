"""Is a bf16 codec training step faster than fp32 on this CPU, and does it train as well? Side by side, one run.

    nice -n 19 python -m benchmarks.codec_train_bf16 [--codec ls-c32] [--threads 1] [--steps 40]

Speed: the same training step (forward under autocast or not, fp32 loss, backward, Adam) of the shipped codec
on the same crops, fp32 / fp32 + channels_last / bf16 autocast + channels_last, in interleaved rounds (the
machine is shared: each round measures all three back to back). Quality: from the same weights and the same
crops, `--steps` finetuning steps in fp32 and in bf16, then the loss of both on held-out crops, in fp32.
Writes benchmarks/results/codec_training/bf16_step.{md,csv}.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import os
import time

import torch

from latentstore.codec.zoo import load_codec_file, codec_file
from latentstore_train import codec_data
from latentstore_train.codec import cpu_has_native_bf16, loss_terms

OUT = os.path.join(os.path.dirname(__file__), "results", "codec_training")
MODES = {"fp32": (False, False), "fp32+channels_last": (False, True), "bf16+channels_last": (True, True)}


def make(codec, channels_last):
    m = copy.deepcopy(codec).train()
    return m.to(memory_format=torch.channels_last) if channels_last else m


def step(model, opt, x, bf16, channels_last, distortion):
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ac = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    t = loss_terms(model, x, distortion, 3000.0, 0.5, ac)
    opt.zero_grad(set_to_none=True)
    t["loss"].backward()
    opt.step()
    return float(t["loss"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--codec", default="ls-c32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=40, help="finetuning steps of the quality comparison")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    codec = load_codec_file(codec_file(a.codec))
    codec.quantizer.sigma = 8.0
    photos = codec_data.load_training_photos(192, 768, extra=True)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for bs, crop in [(8, 128), (4, 192)]:
        batches = [codec_data.sample_batch(photos, bs, crop, gen, 0.5) for _ in range(4)]
        models = {k: make(codec, cl) for k, (_, cl) in MODES.items()}
        opts = {k: torch.optim.Adam(m.parameters(), lr=1e-6) for k, m in models.items()}
        times = {k: [] for k in MODES}
        for k, (bf, cl) in MODES.items():  # warm-up: oneDNN picks its kernels on the first calls
            step(models[k], opts[k], batches[0], bf, cl, "msssim")
        for _ in range(a.rounds):
            for k, (bf, cl) in MODES.items():
                t0 = time.perf_counter()
                for x in batches:
                    step(models[k], opts[k], x, bf, cl, "msssim")
                times[k].append((time.perf_counter() - t0) / len(batches))
        base = min(times["fp32"])
        for k in MODES:
            rows.append({"batch": bs, "crop": crop, "mode": k, "ms_per_step": 1000 * min(times[k]),
                         "speedup_vs_fp32": base / min(times[k])})
            print(rows[-1], flush=True)
    # quality: same start, same crops, fp32 vs bf16, then held-out loss in fp32
    train_b = [codec_data.sample_batch(photos, 4, 192, gen, 0.5) for _ in range(a.steps)]
    held = [codec_data.sample_batch(photos, 4, 192, gen, 0.5) for _ in range(6)]
    quality = {}
    for k in ("fp32", "bf16+channels_last"):
        bf, cl = MODES[k]
        m = make(codec, cl)
        opt = torch.optim.Adam(m.parameters(), lr=1e-4)
        losses = [step(m, opt, x, bf, cl, "msssim") for x in train_b]
        m = m.to(memory_format=torch.contiguous_format)
        with torch.no_grad():
            ev = [loss_terms(m, x, "msssim", 3000.0, 0.5) for x in held]
        quality[k] = {"train_loss_last10": sum(losses[-10:]) / 10, "heldout_loss_fp32": sum(float(e["loss"]) for e in ev) / len(ev),
                      "heldout_mse255": sum(float(e["mse255"]) for e in ev) / len(ev)}
        print(k, quality[k], flush=True)
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "bf16_step.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = [f"# bf16 vs fp32 codec training step ({a.codec}, {a.threads} thread(s), native bf16: {cpu_has_native_bf16()})",
             "", "`nice -n 19 python -m benchmarks.codec_train_bf16` (best of interleaved rounds, same crops)", "",
             "| batch x crop | mode | ms/step | speed-up vs fp32 |", "|---|---|---|---|"]
    lines += [f"| {r['batch']} x {r['crop']} | {r['mode']} | {r['ms_per_step']:.0f} | {r['speedup_vs_fp32']:.2f}x |" for r in rows]
    lines += ["", f"Quality: {a.steps} finetuning steps (MS-SSIM + 0.5 MSE, lr 1e-4) from the same weights on the same crops, "
              "then the loss on 6 held-out batches computed in fp32:", "",
              "| mode | train loss (last 10) | held-out loss | held-out MSE (0..255) |", "|---|---|---|---|"]
    lines += [f"| {k} | {q['train_loss_last10']:.2f} | {q['heldout_loss_fp32']:.2f} | {q['heldout_mse255']:.2f} |"
              for k, q in quality.items()]
    with open(os.path.join(OUT, "bf16_step.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
