"""Conversion benchmark: `latentstore convert` against a plain Pillow + torch loop, same codec, same images.

    python benchmarks/convert.py [--images 300] [--codec ls-c32] [--memory 1000,10000]

1. Throughput (one run, side by side): images/s of the DALI pipeline (overlapped stages, fused
   symbol kernel, threaded entropy coding, sharded Zarr) vs a straightforward loop: Pillow decode,
   resize + centre crop, encoder in batches, symbols, entropy coding, one file per image.
2. Where the time goes: the pipeline's seconds per stage (decode, encode, entropy coding, write).
3. Memory: peak RSS of a conversion of 1k and of 10k inputs (a list file cycling over the images,
   at 128 px to keep it short): it streams, so the two should be about equal.
4. On CUDA: the same at 256 px with DALI mixed decoding (--device cuda).
Results: benchmarks/results/convert.md and convert.csv.
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
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


def plain_loop(src: str, dst: str, codec_name: str, size: int, batch: int = 32) -> float:
    """The baseline a user would write: no DALI, no overlap, no fused kernel. Returns seconds."""
    import torch
    from PIL import Image
    from latentstore.codec.zoo import load_codec
    from latentstore.convert.sources import list_inputs
    codec = load_codec(codec_name)
    items = list_inputs(src).items
    os.makedirs(dst, exist_ok=True)
    t = time.perf_counter()
    for b0 in range(0, len(items), batch):
        imgs = []
        for it in items[b0: b0 + batch]:
            im = Image.open(it.ref).convert("RGB")
            s = size / min(im.size)
            im = im.resize((max(size, round(im.width * s)), max(size, round(im.height * s))), Image.Resampling.BILINEAR)
            x, y = (im.width - size) // 2, (im.height - size) // 2
            imgs.append(np.asarray(im.crop((x, y, x + size, y + size))))
        x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255.0
        with torch.no_grad():
            sym = codec.symbols(x)["symbols"].numpy()
        for i, s in enumerate(sym):
            with open(os.path.join(dst, f"{b0 + i:07d}.lsb"), "wb") as f:
                f.write(codec.pack(s, (size, size)))
    return time.perf_counter() - t


def peak_rss_mb(src_list: str, dst: str, codec: str, size: int) -> dict:
    code = ("import json,resource,time,sys;from latentstore.convert.pipeline import ConvertOptions,convert;"
            f"t=time.time();s=convert({src_list!r},{dst!r},ConvertOptions(codec={codec!r},size={size},progress=False,"
            "shard_size=256,batch_size=32));"
            "print(json.dumps({'rss_mb':resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024,'n':s.stored,"
            "'s':time.time()-t}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--codec", default="ls-c32")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--memory", default="1000,10000", help="input counts for the peak-RSS runs ('' to skip)")
    ap.add_argument("--work", default="runs/convert-bench")
    a = ap.parse_args(argv)
    import torch
    from latentstore.convert.pipeline import ConvertOptions, convert
    from benchmarks.loader import make_jpegs
    jpegs = make_jpegs(os.path.join(a.work, "jpeg"), a.images)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = torch.cuda.get_device_name() if device == "cuda" else "none"
    dst = os.path.join(a.work, "pipeline.zarr")
    shutil.rmtree(dst, ignore_errors=True)
    convert(jpegs, dst, ConvertOptions(codec=a.codec, size=a.size, shard_size=64, progress=False, max_shards=1,
                                       device=device))  # warm-up: DALI, torch and the codec loaded once
    shutil.rmtree(dst)
    s = convert(jpegs, dst, ConvertOptions(codec=a.codec, size=a.size, shard_size=256, batch_size=32, progress=False,
                                           device=device))
    pipe_ips = s.stored / s.wall_s
    base_s = plain_loop(jpegs, os.path.join(a.work, "plain"), a.codec, a.size)
    base_ips = a.images / base_s
    shutil.rmtree(os.path.join(a.work, "plain"))
    rows = [{"what": f"latentstore convert ({device}, DALI {'mixed' if device == 'cuda' else 'cpu'})", "images": s.stored,
             "images_per_s": pipe_ips, **{f"stage_{k}_s": v for k, v in s.stage_s.items()}},
            {"what": "plain Pillow + torch loop", "images": a.images, "images_per_s": base_ips}]
    mem = []
    if a.memory:
        files = sorted(os.path.abspath(os.path.join(r, f)) for r, _, fs in os.walk(jpegs) for f in fs if f.endswith(".jpg"))
        for n in [int(x) for x in a.memory.split(",")]:
            lst = os.path.join(a.work, f"list-{n}.txt")
            with open(lst, "w") as f:
                for i in range(n):
                    f.write(f"{files[i % len(files)]}\t{i % 10}\n")
            d = os.path.join(a.work, f"mem-{n}.zarr")
            shutil.rmtree(d, ignore_errors=True)
            m = peak_rss_mb(lst, d, a.codec, 128)
            shutil.rmtree(d)
            if m["n"] != n:
                raise SystemExit(f"memory run stored {m['n']} of {n} inputs: the measurement would mean nothing")
            mem.append({"inputs": n, **m})
            print(f"peak RSS converting {n:,} inputs at 128 px: {m['rss_mb']:.0f} MB ({m['n'] / m['s']:.1f} img/s)", flush=True)
    lines = [f"# Conversion throughput: {a.images} JPEGs (~400x350, q90) -> {a.codec} at {a.size}x{a.size}", "",
             f"Command: `python benchmarks/convert.py --images {a.images} --codec {a.codec}`; {platform.machine()} CPU, "
             f"{os.cpu_count()} cores; GPU: {gpu}; {time.strftime('%Y-%m-%d')}. Both rows measured in one run.", "",
             "| pipeline | images/s | ratio |", "|---|---|---|",
             f"| {rows[0]['what']} | {pipe_ips:.1f} | {pipe_ips / base_ips:.2f}x |",
             f"| {rows[1]['what']} | {base_ips:.1f} | 1.00x |", "",
             "Seconds per stage inside the pipeline (stages overlap, so they can sum to more than the wall time): "
             + ", ".join(f"{k} {v:.1f}" for k, v in s.stage_s.items()) + f"; wall {s.wall_s:.1f}.", ""]
    if mem:
        lines += ["| inputs converted (128 px) | peak RSS (MB) | images/s |", "|---|---|---|"]
        lines += [f"| {m['inputs']:,} | {m['rss_mb']:.0f} | {m['n'] / m['s']:.1f} |" for m in mem]
    if device != "cuda":
        lines += ["", "No GPU was available for this run: the DALI mixed-decoding figure (target 3,000 images/s on an "
                  "H100/H200) is not measured here."]
    res = os.path.join(HERE, "results")
    os.makedirs(res, exist_ok=True)
    open(os.path.join(res, "convert.md"), "w").write("\n".join(lines) + "\n")
    with open(os.path.join(res, "convert.csv"), "w", newline="") as f:
        keys = sorted({k for r in rows for k in r}, key=lambda k: (k != "what", k))
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
