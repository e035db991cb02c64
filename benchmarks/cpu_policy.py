"""The CPU coding policy, measured side by side in one run (latentstore/device.py, issue #22).

    nice -n 10 python benchmarks/cpu_policy.py [--sections encoder,quality,tiles,big] [--head DIR] [--photo JPG]

encoder  the ls-c32 encoder + symbol kernel on 8-16 real 256^2 crops, best of interleaved rounds (the machine is
         shared): fp32, bf16 autocast (NCHW / channels_last), bf16 with the last layer in fp32, torch.jit.freeze
         (oneDNN fusion), torch.compile (inductor C++; its compile time is printed), batches of 8/16/32, 2
         intra-op threads vs one encoder per core; symbol agreement with fp32.
quality  bf16 vs fp32 on the validation photos (shorter side 512): symbol agreement, bpp and PSNR of the
         bitstreams each writes (decoded in fp32), and the PSNR of bf16 decoding against fp32 decoding.
tiles    tiled encode / decode of a 2048^2 region: fp32 / bf16, one tile at a time on all cores / one per core.
big      `latentstore compress` / `decompress` of a large photo: this tree (tiles on one thread per core;
         with LATENTSTORE_WORKERS=1, one tile at a time on all cores; with LATENTSTORE_PRECISION=fp32)
         against the CLI of an older tree (--head: a `git archive` of it, run through a small shim), each a
         fresh process timed from outside, interleaved.
Results: OUT/convert_cpu_policy.md.
"""
from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
BIG = "/usr/share/backgrounds/mate/abstract/Elephants_5640x3172.jpg"  # mate-backgrounds: 17.9 Mpx


def _crops(n: int):
    import torch
    from latentstore.data.photos import available_photos, resize_shorter
    photos = [resize_shorter(p.load(), 512) for p in available_photos()[:8]]
    c = [p[:256, :256] for p in photos]
    c = (c * (n // len(c) + 1))[:n]
    return torch.from_numpy(np.stack(c)).permute(0, 3, 1, 2).float().div(255).contiguous(memory_format=torch.channels_last)


def encoder_section(rounds: int = 4) -> list[str]:
    import torch
    import torch.nn.functional as F
    import latentstore_kernels as K
    from latentstore.codec.zoo import load_codec
    from latentstore.device import CodecPolicy
    codec = load_codec("ls-c32")
    for p in codec.parameters():
        p.requires_grad_(False)
    m = copy.deepcopy(codec).to(memory_format=torch.channels_last)
    X = {b: _crops(b) for b in (8, 16, 32)}
    xn = X[16].contiguous()
    fp32, bf16 = CodecPolicy("cpu", "fp32"), CodecPolicy("cpu", "bf16")
    nchw = CodecPolicy("cpu", "bf16", layout="contiguous")
    m_nchw = copy.deepcopy(codec)

    def last_fp32(x):
        e = m.encoder
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = e.res(F.leaky_relu(e.conv2(F.leaky_relu(e.conv1(m.normalise(x)), 0.2)), 0.2))
        z = F.conv2d(h.float(), e.conv3.weight, None, stride=2, padding=2)
        return K.symbols(z, m.quantizer.centres, e.conv3.bias)

    class Fwd(torch.nn.Module):
        def __init__(self, mm):
            super().__init__()
            self.mm = mm

        def forward(self, t):
            return self.mm.encoder.forward_unbiased(self.mm.normalise(t))[0]

    built = {}

    def jit_bf16(x):
        if "jit" not in built:
            t0 = time.perf_counter()
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                built["jit"] = torch.jit.freeze(torch.jit.trace(Fwd(copy.deepcopy(m)).eval(), x))
            built["jit_s"] = time.perf_counter() - t0
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z = built["jit"](x)
        return K.symbols(z, m.quantizer.centres, m.encoder.conv3.bias)

    def compiled_bf16(x):
        if "comp" not in built:
            enc, norm = m.encoder, m.normalise
            built["comp"] = torch.compile(lambda t: enc.forward_unbiased(norm(t)), dynamic=False)
            t0 = time.perf_counter()
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                built["comp"](x)
            built["comp_s"] = time.perf_counter() - t0
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z, b = built["comp"](x)
        return K.symbols(z, m.quantizer.centres, b)

    def per_core(pol, x):  # one encoder per core: two threads of one intra-op thread each, half the batch each
        out = [None, None]
        half = len(x) // 2

        def work(i):
            out[i] = m.symbols(x[i * half:(i + 1) * half], tile=0, policy=pol)["symbols"]
        th = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            [t.start() for t in th]
            [t.join() for t in th]
        finally:
            torch.set_num_threads(threads)
        return {"symbols": torch.cat(out)}

    variants = {
        "fp32, NCHW": lambda: m_nchw.symbols(xn, tile=0, policy=CodecPolicy("cpu", "fp32", layout="contiguous")),
        "fp32, channels_last": lambda: m.symbols(X[16], tile=0, policy=fp32),
        "bf16 autocast, NCHW": lambda: m_nchw.symbols(xn, tile=0, policy=nchw),
        "bf16 autocast, channels_last (the policy)": lambda: m.symbols(X[16], tile=0, policy=bf16),
        "bf16, last conv in fp32": lambda: last_fp32(X[16]),
        "bf16 + torch.jit.freeze (oneDNN fusion)": lambda: jit_bf16(X[16]),
        "bf16 + torch.compile (inductor C++)": lambda: compiled_bf16(X[16]),
        "bf16, batch 8 (x2)": lambda: {"symbols": torch.cat([m.symbols(X[8], tile=0, policy=bf16)["symbols"]] * 2)},
        "bf16, batch 32 (/2)": lambda: {"symbols": m.symbols(X[32], tile=0, policy=bf16)["symbols"][:16]},
        "bf16, one encoder per core (2 x 8)": lambda: per_core(bf16, X[16]),
        "fp32, one encoder per core (2 x 8)": lambda: per_core(fp32, X[16]),
    }
    with torch.no_grad():
        ref = m.symbols(X[16], tile=0, policy=fp32)["symbols"]
        first, times, agree = {}, {k: [] for k in variants}, {}
        for k, f in variants.items():
            t0 = time.perf_counter()
            s = f()["symbols"]
            first[k] = time.perf_counter() - t0
            agree[k] = (s == ref).float().mean().item()
        for _ in range(rounds):
            for k, f in variants.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
    base = min(times["fp32, NCHW"])
    lines = [f"## Encoder variants: ls-c32, 16 real crops of 256x256, {torch.get_num_threads()} threads, best of "
             f"{rounds} interleaved rounds", "",
             "| variant | ms / 16 images | images/s | vs fp32 NCHW | first call (ms) | symbols equal to fp32 |",
             "|---|---|---|---|---|---|"]
    for k in variants:
        b = min(times[k])
        lines.append(f"| {k} | {b * 1e3:.0f} | {16 / b:.1f} | {base / b:.2f}x | {first[k] * 1e3:.0f} | {agree[k]:.5f} |")
    lines += ["", f"torch.jit.freeze took {built.get('jit_s', 0):.1f} s to build; torch.compile "
              f"{built.get('comp_s', 0):.1f} s to compile (its first call; a warm inductor cache makes it shorter)."]
    return lines


def quality_section(max_side: int = 512) -> list[str]:
    from latentstore.codec.api import compress, decompress
    from latentstore.codec.zoo import load_codec
    from latentstore.eval.metrics import bpp, psnr
    from latentstore.eval.validation import load_photos
    lines = [f"## bf16 vs fp32 on the validation photos (shorter side {max_side})", "",
             "| codec | photos | symbols equal | bpp fp32 | bpp bf16 | PSNR fp32 enc | PSNR bf16 enc | "
             "bf16 decode vs fp32 decode | PSNR loss of bf16 decoding |", "|---|---|---|---|---|---|---|---|---|"]
    photos = load_photos([], max_side)
    for name in ("ls-c32", "ls-c8"):
        c = load_codec(name)
        r = {k: [] for k in ("agree", "b32", "b16", "p32", "p16", "dd", "loss")}
        for it in photos:
            rgb = it[1] if isinstance(it, tuple) else it.rgb
            d32, d16 = compress(rgb, c, precision="fp32"), compress(rgb, c, precision="bf16")
            s32, s16 = c.parse(d32)[1], c.parse(d16)[1]
            x32, x16 = decompress(d32, c, precision="fp32"), decompress(d16, c, precision="fp32")
            y16 = decompress(d32, c, precision="bf16")
            r["agree"].append((s32 == s16).mean())
            r["b32"].append(bpp(len(d32), rgb.shape))
            r["b16"].append(bpp(len(d16), rgb.shape))
            r["p32"].append(psnr(rgb, x32))
            r["p16"].append(psnr(rgb, x16))
            r["dd"].append(psnr(x32, y16))
            r["loss"].append(psnr(rgb, x32) - psnr(rgb, y16))
        mean = {k: float(np.mean(v)) for k, v in r.items()}
        lines.append(f"| {name} | {len(photos)} | {mean['agree']:.5f} (min {min(r['agree']):.5f}) | {mean['b32']:.4f} | "
                     f"{mean['b16']:.4f} | {mean['p32']:.3f} | {mean['p16']:.3f} | {mean['dd']:.1f} dB | "
                     f"{mean['loss']:.4f} dB (max {max(r['loss']):.4f}) |")
    return lines


def tiles_section(photo: str, rounds: int = 3) -> list[str]:
    """Tiled encode and decode of a 2048x2048 region (4 tiles of 1024): fp32 / bf16, one tile at a time on all
    cores / one tile per core; best of interleaved rounds, in-process (no start-up)."""
    import torch
    from latentstore.codec import tiling
    from latentstore.codec.zoo import load_codec
    from latentstore.data.imageio import load_image
    from latentstore.device import CodecPolicy
    c = load_codec("ls-c32")
    rgb = np.ascontiguousarray(load_image(photo)[:2048, :2048])
    sym = torch.from_numpy(tiling.rgb_symbols(c, rgb, 1024)).unsqueeze(0)
    cfg = [(p, w) for p in ("fp32", "bf16") for w in (1, torch.get_num_threads())]
    res = {k: ([], []) for k in cfg}
    for r in range(rounds):
        for p, w in (cfg if r % 2 == 0 else cfg[::-1]):
            pol = CodecPolicy("cpu", p)
            t = time.perf_counter()
            tiling.symbols_tiled(c, rgb, 1024, policy=pol, workers=w)
            res[(p, w)][0].append(time.perf_counter() - t)
            t = time.perf_counter()
            tiling.reconstruct_tiled(c, sym, (2048, 2048), 1024, as_uint8=True, policy=pol, workers=w)
            res[(p, w)][1].append(time.perf_counter() - t)
    e0, d0 = min(res[cfg[0]][0]), min(res[cfg[0]][1])
    lines = [f"## Tiles: a 2048x2048 region of {os.path.basename(photo)} in 4 tiles of 1024, ls-c32, best of {rounds} "
             "interleaved rounds, in-process", "",
             "| precision | tiles at once | encode s | vs fp32, one at a time | decode s | vs fp32, one at a time |",
             "|---|---|---|---|---|---|"]
    for (p, w), (enc, dec) in res.items():
        lines.append(f"| {p} | {w} ({'one per core, one thread each' if w > 1 else 'all cores on one tile'}) | "
                     f"{min(enc):.2f} | {e0 / min(enc):.2f}x | {min(dec):.2f} | {d0 / min(dec):.2f}x |")
    return lines


def _timed(cmd: list[str], env: dict) -> tuple[float, str]:
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **env})
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)}: {out.stdout[-1000:]}{out.stderr[-1000:]}")
    return time.perf_counter() - t, out.stdout.strip().splitlines()[-1]


def big_section(photo: str, head: str | None, work: str, codec: str = "ls-c32", rounds: int = 2) -> list[str]:
    from PIL import Image
    from latentstore.data.imageio import load_image
    from latentstore.eval.metrics import psnr
    os.makedirs(work, exist_ok=True)
    cli = [os.path.join(os.path.dirname(sys.executable), "latentstore")]
    rows = [("this tree (bf16 where native, tiles one per core)", cli, {}),
            ("this tree, LATENTSTORE_PRECISION=fp32", cli, {"LATENTSTORE_PRECISION": "fp32"})]
    if head:
        shim = os.path.join(work, "head_cli.py")
        with open(shim, "w") as f:
            f.write("import sys\nsys.meta_path = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
                    f"sys.path.insert(0, {head!r})\nfrom latentstore.cli import main\nmain()\n")
        rows.insert(0, ("before (the older tree's CLI, fp32)", [sys.executable, shim], {}))
    W, H = Image.open(photo).size
    orig = load_image(photo)
    lines = [f"## compress / decompress of a {W}x{H} photo ({os.path.basename(photo)}), {codec}", "",
             "| CLI | compress s | decompress s | bitstream bytes | PSNR | vs the first row's pixels |",
             "|---|---|---|---|---|---|"]
    times = {i: ([], []) for i in range(len(rows))}
    for r in range(rounds):  # interleaved, every other round in reverse: load drifts on a shared machine
        for i in (range(len(rows)) if r % 2 == 0 else reversed(range(len(rows)))):
            what, exe, env = rows[i]
            lsb, png = os.path.join(work, f"r{i}.lsb"), os.path.join(work, f"r{i}.png")
            times[i][0].append(_timed(exe + ["compress", photo, lsb, "--codec", codec, "--quiet", "--force"], env)[0])
            times[i][1].append(_timed(exe + ["decompress", lsb, png, "--quiet", "--force"], env)[0])
            print(what, times[i], flush=True)
    first = load_image(os.path.join(work, "r0.png"))
    for i, (what, _, _) in enumerate(rows):
        rec = load_image(os.path.join(work, f"r{i}.png"))
        tc, td = times[i]
        lines.append(f"| {what} | {min(tc):.1f} ({', '.join(f'{t:.1f}' for t in tc)}) | {min(td):.1f} "
                     f"({', '.join(f'{t:.1f}' for t in td)}) | {os.path.getsize(os.path.join(work, f'r{i}.lsb')):,} | "
                     f"{psnr(orig, rec):.3f} | {psnr(first, rec):.1f} dB |")
    lines += ["", f"Best of {rounds} rounds (all rounds in brackets); each a fresh process timed from outside, start-up "
              "included."]
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default="encoder,quality,tiles,big")
    ap.add_argument("--head", default=None, help="an older tree (git archive of latentstore/, kernels/ as "
                                                 "latentstore_kernels/, train/ as latentstore_train/) for 'before'")
    ap.add_argument("--photo", default=BIG)
    ap.add_argument("--work", default="runs/cpu-policy-bench")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    a = ap.parse_args(argv)
    from benchmarks.convert import commit, machine
    lines = ["# The CPU coding policy, measured (issue #22)", "",
             f"Command: `nice -n 10 python benchmarks/cpu_policy.py --sections {a.sections}"
             + (" --head DIR" if a.head else "") + f"`; machine: {machine()}; "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; commit {commit()}. Each section in one run; the "
             "machine was shared with other work.", ""]
    for s in a.sections.split(","):
        part = {"encoder": encoder_section, "quality": quality_section, "tiles": lambda: tiles_section(a.photo),
                "big": lambda: big_section(a.photo, a.head, a.work)}[s]()
        print("\n".join(part), flush=True)
        lines += part + [""]
    os.makedirs(a.out, exist_ok=True)
    open(os.path.join(a.out, "convert_cpu_policy.md"), "w").write("\n".join(lines))


if __name__ == "__main__":
    main()
