"""`make bench-gpu`: every GPU benchmark of latentstore, one command, one GPU, about ten minutes on an H100.

    python benchmarks/gpu.py [--images 6000] [--out benchmarks/results] [--sections kernels,step,convert,loader,train]
    python benchmarks/gpu.py --dry-run --out DIR   # no GPU needed: tiny sizes on the CPU, Triton kernels through
                                                   # TRITON_INTERPRET=1; checks the script, its numbers mean nothing
Data: --images JPEG crops (~400x350, q90) of the offline photos (benchmarks/loader.py make_jpegs), made once in
--work; nothing comes from the network. Each section runs in its own process under a time limit (a failure is
reported, the others still run). Output: OUT/gpu-DATE.md and OUT/gpu-DATE.json (GPU, date, commit, every number,
each section's seconds). benchmarks/README.md says what each section measures and how a GPU machine gets DALI.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

# seconds each section may take on an H100 (estimates: torch.compile dominates kernels and encoder)
LIMITS = {"kernels": 150, "step": 60, "convert": 140, "encoder": 90, "loader": 50, "train": 70}
CODEC = "ls-c32"


def cfg(dry: bool) -> dict:
    """Sizes: the real run, or the dry run's tiny ones."""
    if dry:  # the Triton kernels run in the interpreter here: every size as small as still exercises the code
        return dict(size=32, batch=4, crop=None, steps=1, warm=1, width=8, rgb=32, mem=(6, 12), threads=2, pass_n=4)
    return dict(size=256, batch=256, crop=28, steps=150, warm=20, width=64, rgb=224, mem=(1500, 12000),
                threads=min(8, max(2, (os.cpu_count() or 2) // 2)), pass_n=0)


def jpeg_files(jpegs: str) -> list[str]:
    return sorted(os.path.join(r, f) for r, _, fs in os.walk(jpegs) for f in fs if f.endswith(".jpg"))


def fresh(a, name: str) -> str:
    """A path under --work with nothing there."""
    shutil.rmtree(os.path.join(a.work, name), ignore_errors=True)
    return os.path.join(a.work, name)


def ensure_store(a, dev: str, c: dict) -> str:
    """The latent store of the JPEGs: the convert section's, or converted here when that section did not run."""
    from latentstore.convert.pipeline import ConvertOptions, convert
    from latentstore.store import open_store
    dst = os.path.join(a.work, "conv-1.zarr")
    try:
        open_store(dst)  # complete, or a StoreError
    except Exception:
        convert(a.jpegs, fresh(a, "conv-1.zarr"), ConvertOptions(codec=CODEC, size=c["size"], shard_size=256,
                                                                 batch_size=c["batch"], progress=False, device=dev))
    return dst


# ------------------------------------------------------------------------------------------ sections
def sec_kernels(a, log, dev, c):
    import torch
    import benchmarks.kernels as kb
    copy = kb.copy_gbs(1 << 20 if a.dry_run else 1 << 30, dev, a.dry_run)
    log(f"device-to-device copy, 1 GiB: {copy:.0f} GB/s (read + write)")
    sizes = kb.SMOKE_SIZES if a.dry_run else kb.SIZES
    rows = kb.run_kernels(sizes, (6,), [torch.float32 if a.dry_run else torch.bfloat16], dev, a.dry_run, copy, log)
    return {"copy_gbs": copy, "rows": rows}


def sec_step(a, log, dev, c):
    import benchmarks.kernels as kb
    rows = kb.run_step((1,), 8, dev, True, log) if a.dry_run else kb.run_step((16, 64), 256, dev, False, log)
    return {"rows": rows}


def sec_convert(a, log, dev, c):
    from benchmarks.convert import dali_decode_only, memory_runs
    from latentstore.convert.pipeline import ConvertOptions, convert
    files, r = jpeg_files(a.jpegs), {}
    for src in ("reader", "memory"):
        r[f"dali_{src}_ips"] = dali_decode_only(files, c["size"], c["batch"], dev, src, c["threads"])
        log(f"DALI decode+resize+crop alone ({src}): {r[f'dali_{src}_ips']:,.0f} img/s")
    opts = dict(codec=CODEC, size=c["size"], shard_size=256, batch_size=c["batch"], progress=False, device=dev)
    # the dry run codes its measured run with the GPU path's coder (interpreted, slow), the others with numba
    tri = {"entropy": "triton" if a.dry_run else "auto"}
    conv = {name: convert(a.jpegs, fresh(a, name), ConvertOptions(**{**opts, **kw})) for name, kw in
            (("conv-0.zarr", {}), ("conv-1.zarr", tri), ("conv-s1024.zarr", {"shard_size": 1024}))}
    s, s4 = conv["conv-1.zarr"], conv["conv-s1024.zarr"]  # conv-0 warmed up cuDNN, Triton, numba and DALI
    stages = (lambda x: ", ".join(f"{k} {v:.2f}" for k, v in x.stage_s.items()))
    r.update(ips=s.stored / s.wall_s, wall_s=s.wall_s, stored=s.stored, stages=s.stage_s, ips_shard_1024=
             s4.stored / s4.wall_s, same_bytes=conv["conv-0.zarr"].schema.checksums == s.schema.checksums)
    log(f"latentstore convert ({dev}): {r['ips']:,.0f} img/s, {s.stored} images in {s.wall_s:.2f} s; stages (s) "
        f"{stages(s)}; two runs wrote the same bytes: {r['same_bytes']}")
    # a shard's write costs about the same for 256 images as for 1024: how much of the above is per shard
    log(f"the same with --shard-size 1024: {r['ips_shard_1024']:,.0f} img/s; stages (s) {stages(s4)}")
    dst, t = fresh(a, "conv-cli.zarr"), time.time()
    p = subprocess.run([sys.executable, "-m", "latentstore.cli", "convert", a.jpegs, dst, "--codec", CODEC, "--size",
                        str(c["size"]), "--device", dev, "--batch-size", str(c["batch"]), "--quiet"],
                       capture_output=True, text=True, cwd=ROOT)
    m = re.search(r"\(([\d,.]+) img/s[,)]", p.stdout)  # "(60.0 img/s, start-up ... included)"
    if p.returncode or not m:
        raise RuntimeError(f"the CLI failed: {(p.stderr or p.stdout).strip().splitlines()[-1:]}")
    from latentstore.store import open_store
    r.update(cli_ips=float(m.group(1).replace(",", "")), cli_process_s=time.time() - t,
             cli_same_bytes=open_store(dst).schema.checksums == s.schema.checksums)
    log(f"CLI: {r['cli_ips']:,.0f} img/s inside convert, {r['cli_process_s']:.1f} s for the whole process; "
        f"same bytes as the benchmark's: {r['cli_same_bytes']}")
    r["memory"] = memory_runs(a.jpegs, a.work, CODEC, c["size"], list(c["mem"]), dev)
    for mm in r["memory"]:
        log(f"peak host RSS converting {mm['inputs']:,} inputs: {mm['rss_mb']:.0f} MB ({mm['n'] / mm['s']:,.0f} img/s)")
    return r


def sec_encoder(a, log, dev, c):
    from benchmarks.convert import encoder_ceiling
    r = {}
    for mode in ("eager",) if a.dry_run else ("eager", "graph", "compile"):
        try:
            r[f"{mode}_ips"] = encoder_ceiling(CODEC, c["batch"], c["size"], dev, mode, 2 if a.dry_run else 20)
            log(f"encoder + symbols alone, {mode}, batch {c['batch']}: {r[f'{mode}_ips']:,.0f} img/s")
        except Exception as e:  # a compile or capture failure is a result, not a crash
            r[f"{mode}_ips"] = None
            log(f"encoder {mode}: failed ({type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''})")
    return r


def _sync(dev: str) -> float:
    """The time once the GPU's queued work has run."""
    if dev == "cuda":
        import torch
        torch.cuda.synchronize()
    return time.perf_counter()


def _loop(batches, n: int, dev: str, consume) -> float:
    """samples/s of one pass of `n` samples through consume(batch), after a warm-up pass."""
    for _ in range(2):  # the first pass warms up
        t, got = _sync(dev), 0
        for b in batches():
            got += consume(b)
            if got >= n:
                break
    return got / (_sync(dev) - t)


def latent_batches(store: str, dev: str, c: dict, gpu_decode: bool):
    """An endless iterator of (latents on dev, labels): workers decode (CPU path) or only read payloads (GPU path)."""
    import torch
    from latentstore.data.datasets import EpochSampler, LatentMapDataset, collate
    from latentstore.data.gpu_decode import DeviceDecoder
    ds = LatentMapDataset(store, train=True, crop=c["crop"], output="payload" if gpu_decode else "symbols")
    workers = 0 if dev != "cuda" else c["threads"]
    sampler = EpochSampler(len(ds), seed=0)
    dl = torch.utils.data.DataLoader(ds, batch_size=c["batch"], sampler=sampler, collate_fn=collate,
                                     num_workers=workers, persistent_workers=workers > 0, pin_memory=dev == "cuda")
    dec = DeviceDecoder(ds.store, dev) if gpu_decode else None
    centres = torch.as_tensor(ds.store.centres, device=dev)
    for epoch in range(10 ** 6):
        sampler.set_epoch(epoch)
        for b in dl:
            d = dec(b) if dec is not None else {"latent": centres[b["latent"].to(dev, non_blocking=True).long()],
                                                "label": b["label"].to(dev, non_blocking=True)}
            yield d["latent"], d["label"]


def sec_loader(a, log, dev, c):
    from benchmarks.convert import dali_rgb
    store, files, r = ensure_store(a, dev, c), jpeg_files(a.jpegs), {}
    n = c["pass_n"] or len(files)  # samples per timed pass: an epoch
    for key, make in (("latents_cpu_decode", lambda: latent_batches(store, dev, c, False)),
                      ("latents_gpu_decode", lambda: latent_batches(store, dev, c, True)),
                      ("jpeg_dali_gpu" if dev == "cuda" else "jpeg_dali_cpu",
                       lambda: dali_rgb(files, c["batch"], dev, c["rgb"], c["threads"]))):
        it = make()
        r[key] = _loop(lambda: it, n, dev, lambda b: len(b[1]))
        log(f"loader {key:22}: {r[key]:,.0f} samples/s")
    return r


def _train_rate(model, data, dev: str, c: dict) -> float:
    """Training images/s (SGD, bf16 autocast and channels_last on CUDA), the data loading included."""
    import torch
    import torch.nn.functional as F
    from latentstore.device import autocast_for
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    t, n = time.perf_counter(), 0
    for i in range(c["warm"] + c["steps"]):
        if i == c["warm"]:  # warmed up (cuDNN, the allocator, the loader's workers): the clock starts
            t, n = _sync(dev), 0
        x, y = next(data)
        x = x.contiguous(memory_format=torch.channels_last) if dev == "cuda" else x
        with autocast_for(dev):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += len(y)
    return n / (_sync(dev) - t)


def sec_train(a, log, dev, c):
    import torch
    from benchmarks.convert import dali_rgb
    from latentstore.models.resnet import build
    store, r = ensure_store(a, dev, c), {"width": c["width"], "steps": c["steps"], "batch": c["batch"]}
    # (the dry run feeds the cResNet from CPU workers: the interpreted GPU decoder is the loader section's)
    for key, name, cin, data in (("cresnet51_latents", "cresnet51", 32, latent_batches(store, dev, c, not a.dry_run)),
                                 ("resnet50_jpeg_dali", "resnet50", 3,
                                  dali_rgb(jpeg_files(a.jpegs), c["batch"], dev, c["rgb"], c["threads"]))):
        torch.manual_seed(0)
        model = build(name, in_channels=cin, num_classes=10, width=c["width"]).to(dev)
        r[key] = _train_rate(model.to(memory_format=torch.channels_last) if dev == "cuda" else model, data, dev, c)
        log(f"train {name} (width {c['width']}, batch {c['batch']}, {c['steps']} steps): {r[key]:,.0f} images/s")
    r["ratio"] = r["cresnet51_latents"] / r["resnet50_jpeg_dali"]
    return r


SECTIONS = {"kernels": sec_kernels, "step": sec_step, "convert": sec_convert, "encoder": sec_encoder,
            "loader": sec_loader, "train": sec_train}


# -------------------------------------------------------------------------------------------- driver
def targets(res: dict) -> list[str]:
    """Issue #11's numbers, checked against this run."""
    cv = res.get("convert", {})
    if "ips" not in cv:
        return ["conversion: not measured"]
    mem = cv.get("memory", [])
    out = [f"conversion {cv['ips']:,.0f} img/s: {'ok' if cv['ips'] >= 5000 else 'MISSED'} >= 5,000 (goal 15,000)",
           f"conversion / DALI decode+resize alone (readers.file) {cv['ips'] / cv['dali_reader_ips']:.2f}x: "
           f"{'ok' if cv['ips'] >= 0.3 * cv['dali_reader_ips'] else 'MISSED'} >= 0.3x (goal 0.6x)",
           f"CLI / benchmark {cv['cli_ips'] / cv['ips']:.2f}x: {'ok' if cv['cli_ips'] >= 0.9 * cv['ips'] else 'MISSED'}"
           " within 10%", "same inputs, same bytes (two runs and the CLI): "
           f"{cv['same_bytes'] and cv['cli_same_bytes']}"]
    if len(mem) == 2:
        g = mem[1]["rss_mb"] / mem[0]["rss_mb"]
        out.append(f"peak RSS {mem[0]['inputs']:,} -> {mem[1]['inputs']:,} inputs: {g:.2f}x "
                   f"({'ok' if g <= 1.15 else 'MISSED'}: flat means <= 1.15x)")
    return out


def report(a, res: dict, gpu: str, total_s: float, data_s: float) -> tuple[str, str]:
    date = datetime.date.today().isoformat()
    part = "" if set(a.sections.split(",")) >= set(SECTIONS) else "-" + a.sections.replace(",", "-")  # a partial run
    base = os.path.join(a.out, f"gpu-{date}{part}")
    from benchmarks.kernels import git_commit
    dirty = subprocess.call(["git", "diff", "--quiet", "HEAD"], cwd=ROOT, stderr=subprocess.DEVNULL) == 1
    doc = {"gpu": gpu, "date": date, "commit": git_commit() + ("+uncommitted" if dirty else ""), "dry_run": a.dry_run,
           "images": a.images,
           "command": "python benchmarks/gpu.py " + " ".join(a.argv), "total_s": total_s, "data_s": data_s,
           "sections": res, "targets": targets(res)}
    os.makedirs(a.out, exist_ok=True)
    with open(base + ".json", "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True, default=str)
    md = [f"# GPU benchmarks on {gpu}, {date} (commit {doc['commit']})", "",
          f"Command: `make bench-gpu` (`{doc['command']}`); {a.images} JPEGs made from the offline photos in "
          f"{data_s:.0f} s; every number below is from this one run of {total_s:.0f} s." +
          (" DRY RUN on the CPU: the numbers mean nothing." if a.dry_run else ""), "", "## Targets (issue #11)", ""]
    md += [f"- {t}" for t in doc["targets"]]
    for name, r in res.items():
        md += ["", f"## {name} ({r.get('seconds', 0):.0f} s)", ""]
        md += [f"FAILED: {r['error']}"] if "error" in r else ["```", *r.get("lines", []), "```"]
    with open(base + ".md", "w") as f:
        f.write("\n".join(md) + "\n")
    return base + ".md", base + ".json"


def run_section(a) -> int:
    import torch
    dev = "cuda" if torch.cuda.is_available() and not a.dry_run else "cpu"
    lines: list[str] = []

    def log(s=""):
        print(s, flush=True)
        lines.append(str(s))
    out = SECTIONS[a.section](a, log, dev, cfg(a.dry_run))
    with open(a.result, "w") as f:
        json.dump({**out, "lines": lines}, f, default=str)
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=6000)
    ap.add_argument("--work", default=os.path.join(ROOT, "runs", "bench-gpu"))
    ap.add_argument("--out", default=None, help="report folder (default benchmarks/results; dry run: --work)")
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--section", help=argparse.SUPPRESS)  # internal: one section, in a child process
    ap.add_argument("--jpegs", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.argv = argv
    if a.section:
        return run_section(a)
    unknown = [s for s in a.sections.split(",") if s not in SECTIONS]
    if unknown or a.images < 1:
        print(f"error: unknown section {unknown[0]!r} (known: {', '.join(SECTIONS)})" if unknown else
              "error: --images must be >= 1", file=sys.stderr)
        return 2
    import torch
    if not a.dry_run and not torch.cuda.is_available():
        print("error: no CUDA GPU here: make bench-gpu needs one (python benchmarks/gpu.py --dry-run checks the "
              "script on the CPU)", file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name() if not a.dry_run else "cpu (dry run)"
    a.images = min(a.images, 12) if a.dry_run else a.images
    a.out = a.out or (a.work if a.dry_run else os.path.join(HERE, "results"))
    t0 = time.time()
    from benchmarks.loader import make_jpegs
    jpegs = make_jpegs(os.path.join(a.work, f"jpeg-{a.images}"), a.images)
    data_s = time.time() - t0
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **({"TRITON_INTERPRET": "1"} if a.dry_run else {})}
    res = {}
    for name in a.sections.split(","):
        ts, path = time.time(), os.path.join(a.work, f"{name}.json")
        if os.path.exists(path):
            os.remove(path)
        limit = LIMITS[name] * (3 if a.dry_run else 1)
        print(f"\n== {name} (limit {limit} s)", flush=True)
        cmd = [sys.executable, os.path.abspath(__file__), "--section", name, "--work", a.work, "--jpegs", jpegs,
               "--images", str(a.images), "--result", path] + (["--dry-run"] if a.dry_run else [])
        # its own process group: on a timeout the section's children (the CLI, loader workers) end with it
        p = subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            err = (p.communicate(timeout=limit)[1] or "").strip().splitlines()
            if p.returncode or not os.path.exists(path):
                sys.stderr.write("\n".join(err[-20:]) + "\n")
                res[name] = {"error": f"exit {p.returncode}: {err[-1] if err else 'no message'}"}
            else:
                res[name] = json.load(open(path))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
            res[name] = {"error": f"timed out after {limit} s"}
        res[name]["seconds"] = time.time() - ts
    md, js = report(a, res, gpu, time.time() - t0, data_s)
    print("\n".join(["", *targets(res), f"wrote {md} and {js}"]))
    return 1 if any("error" in r for r in res.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
