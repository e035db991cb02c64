"""Conversion benchmark: `latentstore convert` (the CLI, start-up included) against a plain Pillow + torch fp32 loop.

    nice -n 10 python benchmarks/convert.py [--images 400,4000] [--codec ls-c32] [--memory 1000,10000]

1. Throughput, every row in one run, each a fresh process timed from outside (start-up included: Python,
   torch, the codec, DALI's pipeline, numba's kernels, the store's table fit, the final `info`): the CLI with
   its default policy (bf16 autocast where the CPU has native bf16, latentstore/device.py), the CLI forced
   to fp32 (LATENTSTORE_PRECISION=fp32, at the smallest count only), and the straightforward loop a user
   would write: Pillow decode, resize + centre crop, the fp32 encoder in batches of 32 on all cores
   (torch's intra-op threads), symbols, entropy coding, one file per image.
2. Where the time goes: start-up (the process's wall time minus the conversion's own) and the pipeline's
   seconds per stage (decode, encode, entropy coding, write; fit: the store's v2 table fit, whose decoding
   and encoding also count in decode and encode).
3. Memory (--memory): peak RSS of a conversion of 1k and of 10k inputs (a list file cycling over the images,
   at 128 px): it streams, so the two should be about equal.
Inputs: JPEG crops (~400x350, q90) of the offline photos (benchmarks/loader.make_jpegs). Results: OUT/convert.md
and convert.csv. The GPU measurements are in benchmarks/gpu.py, which uses the helpers below.
"""
from __future__ import annotations

import argparse
import copy
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
    """The baseline a user would write: no DALI, no overlap, no fused kernel; the encoder in plain fp32 on all
    cores (torch's intra-op threads). Returns seconds."""
    import torch
    from PIL import Image
    from latentstore.codec.zoo import load_codec
    from latentstore.convert.sources import list_inputs
    from latentstore.device import CodecPolicy
    torch.set_num_threads(os.cpu_count() or 1)
    fp32 = CodecPolicy("cpu", "fp32", layout="contiguous")  # what `codec.symbols(x)` ran before the policy
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
            sym = codec.symbols(x, policy=fp32)["symbols"].numpy()
        for i, s in enumerate(sym):
            with open(os.path.join(dst, f"{b0 + i:07d}.lsb"), "wb") as f:
                f.write(codec.pack(s, (size, size)))
    return time.perf_counter() - t


def peak_rss_mb(src_list: str, dst: str, codec: str, size: int, device: str = "auto") -> dict:
    """A conversion in a fresh process: its peak RSS, samples and seconds."""
    code = ("import json,resource,time,sys;from latentstore.convert.pipeline import ConvertOptions,convert;"
            f"t=time.time();s=convert({src_list!r},{dst!r},ConvertOptions(codec={codec!r},size={size},progress=False,"
            f"shard_size=256,batch_size=32,device={device!r}));"
            "print(json.dumps({'rss_mb':resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024,'n':s.stored,"
            "'s':time.time()-t}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_runs(jpegs: str, work: str, codec: str, size: int, counts: list[int], device: str = "auto") -> list[dict]:
    """Peak RSS of conversions of `counts` inputs (a list file cycling over the JPEGs)."""
    files = sorted(os.path.abspath(os.path.join(r, f)) for r, _, fs in os.walk(jpegs) for f in fs if f.endswith(".jpg"))
    out = []
    for n in counts:
        lst = os.path.join(work, f"list-{n}.txt")
        with open(lst, "w") as f:
            for i in range(n):
                f.write(f"{files[i % len(files)]}\t{i % 10}\n")
        d = os.path.join(work, f"mem-{n}.zarr")
        shutil.rmtree(d, ignore_errors=True)
        m = peak_rss_mb(lst, d, codec, size, device)
        shutil.rmtree(d)
        if m["n"] != n:
            raise SystemExit(f"memory run stored {m['n']} of {n} inputs: the measurement would mean nothing")
        out.append({"inputs": n, **m})
    return out


def dali_decode_only(files: list[str], size: int, batch: int, device: str, source: str = "reader",
                     threads: int = 8, epochs: int = 1) -> float:
    """img/s of DALI alone on the same files: decode (mixed, the hardware decoder at the pipeline's load, on
    CUDA) + resize + centre crop, as conversion does. source: "reader" (fn.readers.file) or "memory"
    (external_source over the encoded bytes already in memory). One warm-up epoch, then `epochs` timed."""
    from nvidia.dali import fn, pipeline_def, types
    from latentstore.convert.decode import HW_DECODER_LOAD
    cuda = device == "cuda"
    data = [np.fromfile(f, dtype=np.uint8) for f in files] if source == "memory" else None

    @pipeline_def(batch_size=batch, num_threads=threads, device_id=0 if cuda else None, exec_dynamic=True,
                  prefetch_queue_depth=2)
    def pipe():
        if source == "reader":
            enc, _ = fn.readers.file(files=files, name="r")
        else:
            enc = fn.external_source(source=[data[i: i + batch] for i in range(0, len(data), batch)], cycle=True)
        dec = {"device": "mixed", "hw_decoder_load": HW_DECODER_LOAD} if cuda else {"device": "cpu"}
        img = fn.decoders.image(enc, output_type=types.RGB, **dec)
        return fn.crop(fn.resize(img, resize_shorter=size, antialias=True), crop=(size, size))

    p = pipe()
    p.build()
    iters = -(-len(files) // batch)

    def epoch():
        for _ in range(iters):
            p.run()
        if cuda:
            import torch
            torch.cuda.synchronize()
    epoch()
    t = time.perf_counter()
    for _ in range(epochs):
        epoch()
    return epochs * iters * batch / (time.perf_counter() - t)


def dali_rgb(files: list[str], bs: int, dev: str, side: int, threads: int):
    """An endless iterator of (images (B, 3, side, side) float, labels) from JPEGs through DALI (mixed decoding on
    CUDA): random resized crop, flip, normalise, as ImageNet training does. DALI may reuse a buffer nothing
    references, so a batch stays referenced until the work the consumer queued on it has run (an event recorded
    when the consumer asks for the next batch, waited for two batches later)."""
    import collections
    import torch
    from nvidia.dali import fn, pipeline_def, types
    cuda = dev == "cuda"

    @pipeline_def(batch_size=bs, num_threads=threads, device_id=0 if cuda else None, exec_dynamic=True, seed=0)
    def pipe():
        jpegs, labels = fn.readers.file(files=files, labels=[i % 10 for i in range(len(files))], random_shuffle=True)
        img = fn.decoders.image_random_crop(jpegs, device="mixed" if cuda else "cpu", output_type=types.RGB)
        img = fn.resize(img, size=(side, side))
        return fn.crop_mirror_normalize(img, dtype=types.FLOAT, output_layout="CHW", mirror=fn.random.coin_flip(),
                                        mean=[123.7, 116.3, 103.5], std=[58.4, 57.1, 57.4]), labels
    p = pipe()
    p.build()
    held, prev = collections.deque(), None
    while True:
        if cuda and prev is not None:  # the consumer has queued its work on the previous batch
            ev = torch.cuda.Event()
            ev.record()
            held.append((ev, prev))
            if len(held) > 2:
                held.popleft()[0].synchronize()
        img, lab = p.run()
        x = torch.from_dlpack(img.as_tensor()) if cuda else torch.from_numpy(img.as_array())
        prev = img
        yield x, torch.from_numpy(lab.as_array().reshape(-1).astype("int64")).to(dev)


def encoder_ceiling(codec_name: str, batch: int, size: int, device: str, mode: str, iters: int = 20) -> float:
    """img/s of the ls-c* encoder + fused symbols kernel alone on random pixels (bf16 autocast, channels_last on
    CUDA): mode eager, compile (torch.compile of the encoder) or graph (a CUDA graph of the eager step)."""
    import torch
    import latentstore_kernels as K
    from latentstore.codec.zoo import load_codec
    from latentstore.device import autocast_for
    model = copy.deepcopy(load_codec(codec_name)).to(device).to(memory_format=torch.channels_last)
    x = torch.rand(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    fwd = None
    if mode == "compile":
        enc, norm = model.encoder, model.normalise
        fwd = torch.compile(lambda t: enc.forward_unbiased(norm(t)), dynamic=False)

    @torch.no_grad()
    def step():
        with autocast_for(device):
            if fwd is None:
                return model.symbols(x)
            z, bias = fwd(x)
            return K.symbols(z, model.quantizer.centres.detach(), bias.detach())
    for _ in range(3):  # warm-up: cuDNN, autotuning, compilation
        step()
    run = step
    if mode == "graph":
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            step()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            step()
        run = g.replay
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        run()
    if device == "cuda":
        torch.cuda.synchronize()
    return iters * batch / (time.perf_counter() - t)


def machine() -> str:
    """CPU model, cores and bf16 flags, for the results' header."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    bf = [f for f in ("avx512_bf16", "amx_bf16", "avx512_vnni") if f in flags]
    return f"{model}, {os.cpu_count()} cores ({', '.join(bf) or 'no native bf16'})"


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=ROOT).stdout.strip()
        return out.stdout.strip() + (" + uncommitted changes" if dirty else "")
    except OSError:
        return "unknown"


def run_cli(src: str, dst: str, codec: str, size: int, env: dict | None = None) -> dict:
    """`latentstore convert` in a fresh process: wall seconds from outside, and what it reports of itself."""
    shutil.rmtree(dst, ignore_errors=True)
    cli = os.path.join(os.path.dirname(sys.executable), "latentstore")
    cmd = [cli, "convert", src, dst, "--codec", codec, "--size", str(size), "--quiet"]
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed: {out.stdout[-2000:]}{out.stderr[-2000:]}")
    rep = {"wall_s": wall}
    for line in out.stdout.splitlines():
        if line.startswith("converted"):  # "converted N images stored, ... in X s (Y img/s); ..."
            rep["stored"] = int(line.split()[1].replace(",", ""))
            rep["inside_s"] = float(line.split(" in ")[1].split(" s ")[0])
        elif line.startswith("stages (s)"):
            rep["stages"] = {k: float(v) for k, v in (kv.split() for kv in line[len("stages (s)"):].split(","))}
        elif line.startswith("encoder"):
            rep["policy"] = line.split(None, 1)[1]
    rep["startup_s"] = wall - rep["inside_s"]
    shutil.rmtree(dst, ignore_errors=True)
    return rep


def run_plain(src: str, dst: str, codec: str, size: int) -> dict:
    """plain_loop in a fresh process: wall seconds from outside (its imports included) and its loop's own."""
    shutil.rmtree(dst, ignore_errors=True)
    code = (f"import sys,json;sys.path.insert(0,{ROOT!r});from benchmarks.convert import plain_loop;"
            f"print(json.dumps({{'loop_s':plain_loop({src!r},{dst!r},{codec!r},{size})}}))")
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    wall = time.perf_counter() - t
    n = len(os.listdir(dst))
    shutil.rmtree(dst, ignore_errors=True)
    loop = json.loads(out.stdout.strip().splitlines()[-1])["loop_s"]
    return {"wall_s": wall, "inside_s": loop, "startup_s": wall - loop, "stored": n, "policy": "fp32 (plain torch)"}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default="400,4000", help="input counts, one set of rows each")
    ap.add_argument("--codec", default="ls-c32")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--memory", default="", help="input counts for the peak-RSS runs, e.g. 1000,10000 ('' to skip)")
    ap.add_argument("--work", default="runs/convert-bench")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="where convert.md and convert.csv go")
    a = ap.parse_args(argv)
    from benchmarks.loader import make_jpegs
    counts = [int(x) for x in a.images.split(",") if x]
    rows = []
    for n in counts:
        jpegs = make_jpegs(os.path.join(a.work, f"jpeg-{n}"), n)
        dst, plain = os.path.join(a.work, "pipeline.zarr"), os.path.join(a.work, "plain")
        if n == counts[0]:  # warm the page cache and numba's on-disk cache, so no row pays for them alone
            run_cli(jpegs, dst, a.codec, a.size)
        todo = [("latentstore convert (default policy)", lambda: run_cli(jpegs, dst, a.codec, a.size))]
        if n == counts[0]:
            todo.append(("latentstore convert, LATENTSTORE_PRECISION=fp32",
                         lambda: run_cli(jpegs, dst, a.codec, a.size, {"LATENTSTORE_PRECISION": "fp32"})))
        todo.append(("plain Pillow + torch fp32 loop", lambda: run_plain(jpegs, plain, a.codec, a.size)))
        res = []
        for what, fn in todo:
            r = fn()
            if r["stored"] != n:
                raise SystemExit(f"{what}: stored {r['stored']} of {n} inputs: the measurement would mean nothing")
            res.append({"what": what, "inputs": n, **r})
            print(f"{n:6d} inputs  {what:48s} {r['wall_s']:7.1f} s  ({n / r['wall_s']:6.1f} img/s; start-up "
                  f"{r['startup_s']:.1f} s) {r.get('stages', '')}", flush=True)
        base = res[-1]["wall_s"]
        for r in res:
            r["ratio"] = base / r["wall_s"]
            r["ratio_without_startup"] = res[-1]["inside_s"] / r["inside_s"]
        rows += res
    mem = memory_runs(os.path.join(a.work, f"jpeg-{counts[0]}"), a.work, a.codec, 128,
                      [int(x) for x in a.memory.split(",")]) if a.memory else []
    lines = [f"# Conversion throughput on the CPU: JPEG crops (~400x350, q90) -> {a.codec} at {a.size}x{a.size}", "",
             f"Command: `nice -n 10 python benchmarks/convert.py --images {a.images} --codec {a.codec}`; machine: "
             f"{machine()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; commit {commit()}. "
             "Every row in one run, each a fresh process timed from outside (start-up included), niced alike. "
             "The machine was shared with other work while it ran: ratios of rows measured minutes apart carry "
             "that noise.", "",
             "| inputs | pipeline | encoder | wall s | images/s | start-up s | ratio | ratio without start-up |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['inputs']:,} | {r['what']} | {r.get('policy', '')} | {r['wall_s']:.1f} | "
              f"{r['inputs'] / r['wall_s']:.1f} | {r['startup_s']:.1f} | {r['ratio']:.2f}x | "
              f"{r['ratio_without_startup']:.2f}x |" for r in rows]
    lines += ["", "Seconds per stage inside the CLI's conversion (stages overlap, so they can sum to more than its "
              "wall time; fit: the v2 table fit, its decoding and encoding also counted in decode and encode); "
              "start-up = the process's wall time minus the conversion's own:", ""]
    for r in rows:
        if "stages" in r:
            lines.append(f"- {r['inputs']:,} inputs, {r['policy']}: start-up {r['startup_s']:.1f}, "
                         + ", ".join(f"{k} {v:.1f}" for k, v in r["stages"].items()) + f"; conversion {r['inside_s']:.1f}")
    if mem:
        lines += ["", "| inputs converted (128 px) | peak RSS (MB) | images/s |", "|---|---|---|"]
        lines += [f"| {m['inputs']:,} | {m['rss_mb']:.0f} | {m['n'] / m['s']:.1f} |" for m in mem]
    lines += ["", "No GPU was used for this run: the GPU path is measured by `make bench-gpu` (benchmarks/gpu.py)."]
    os.makedirs(a.out, exist_ok=True)
    open(os.path.join(a.out, "convert.md"), "w").write("\n".join(lines) + "\n")
    with open(os.path.join(a.out, "convert.csv"), "w", newline="") as f:
        flat = [{k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in r.items()} for r in rows]
        keys = sorted({k for r in flat for k in r}, key=lambda k: (k != "what", k))
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(flat)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
