"""Issue #30: how the classifier should see a full-size latent upload, and what a latent upload costs on the wire.

For every validation photo (latentstore.data.photos, split "val") and foolbox's 20 ImageNet JPEGs (when installed),
with a classifier trained as `make demo` trains it (latentstore.demo.train_from_store on the demo's foolbox store):

    reference   the fixed-size path: the photo fitted to 256 px (shorter side, centre crop), encoded by the
                service's engine, classified from its symbols
    companion   (a) the client's own 256-px bitstream (upload --encode), checked and classified by the server
    view-area   (b) a view of the full-size latent: dequantized, area-resized so its shorter side is 32 cells,
                centre-cropped to 32 x 32
    view-whole  (b') the full-size latent as it is (the cResNet pools globally)
and prints top-1 agreement of each with the reference, and bytes per photo: the file, JPEG q90 of its pixels, the
full-size bitstream, the companion. Run: python benchmarks/serve_latent.py [--work DIR] [--out FILE.md]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SIDE = 256
CODEC = "ls-c16"


def demo_classifier(work: str) -> str:
    """The demo's classifier: foolbox's 20 images as a class tree -> ls-c16 store at 256 px -> DEMO_TRAIN cResNet."""
    from latentstore.convert.pipeline import ConvertOptions, convert
    from latentstore.demo import imagenet_samples_tree, train_from_store
    run = os.path.join(work, "cresnet-run")
    if os.path.exists(os.path.join(run, "config.json")):
        return run
    src = imagenet_samples_tree(os.path.join(work, "imagenet-samples"))
    if src is None:
        raise SystemExit("foolbox is not installed (pip install --no-deps foolbox==3.3.4): no demo classifier")
    dst = os.path.join(work, "imagenet-samples.zarr")
    if not os.path.exists(dst):
        convert(src, dst, ConvertOptions(codec=CODEC, size=SIDE, shard_size=8, batch_size=8, progress=False))
    train_from_store(dst, run)
    return run


def photos(work: str) -> list[tuple[str, str, np.ndarray, bytes]]:
    """(set, name, full-size RGB, the file's bytes) of the validation photos and the foolbox JPEGs."""
    from latentstore.data.imageio import load_image
    from latentstore.data.photos import all_photos
    from latentstore.demo import imagenet_samples_tree
    out = []
    for p in all_photos():
        if p.split == "val":
            data = open(p.path, "rb").read() if p.path else b""
            out.append(("val", p.name, p.load(), data))
    tree = imagenet_samples_tree(os.path.join(work, "imagenet-samples-eval"))
    for root, _, files in sorted(os.walk(tree)) if tree else []:
        for f in sorted(files):
            path = os.path.join(root, f)
            out.append(("foolbox", f"{os.path.basename(root)}/{f}", load_image(path), open(path, "rb").read()))
    return out


def jpeg_bytes(rgb: np.ndarray, quality: int = 90) -> int:
    import io

    from PIL import Image
    b = io.BytesIO()
    Image.fromarray(rgb).save(b, format="JPEG", quality=quality)
    return len(b.getvalue())


def view_area(x: torch.Tensor, cells: int) -> torch.Tensor:
    """(1, C, h, w) -> (1, C, cells, cells): shorter side to `cells` (area when shrinking, bilinear when growing),
    centre crop: the fixed path's geometry, on latents instead of pixels."""
    h, w = x.shape[-2:]
    s = cells / min(h, w)
    nh, nw = max(cells, round(h * s)), max(cells, round(w * s))
    mode = "area" if s < 1 else "bilinear"
    y = F.interpolate(x, size=(nh, nw), mode=mode, **({} if mode == "area" else {"align_corners": False}))
    t, left = (nh - cells) // 2, (nw - cells) // 2
    return y[..., t:t + cells, left:left + cells]


def engine_costs(eng, items, rounds: int = 3) -> list[str]:
    """What the server's work per upload costs in the engine alone (no HTTP), one image at a time, median of
    `rounds`: (b) JPEG bytes -> decode -> fit to 256 -> encoder -> rANS; (c) a client's 256-px bitstream -> every
    check, lane decode (no encoder, no pixels); each without and with the classifier."""
    import io

    from PIL import Image

    from latentstore.codec.api import compress
    from latentstore.serve.engine import fit_to
    from latentstore.serve.uploads import screen_and_decode
    jpegs, bits = [], []
    for _, _, rgb, _ in items:
        b = io.BytesIO()
        Image.fromarray(fit_to(rgb, SIDE)).save(b, "JPEG", quality=90)
        jpegs.append(b.getvalue())
        bits.append(compress(fit_to(rgb, SIDE), eng.model, "latentstore.rans", precision=eng.precision))
    cls = eng.classifier
    out = {}
    for with_cls in (False, True):
        eng.classifier = cls if with_cls else None
        for kind, work in (("jpeg-256", lambda d: eng.run([eng.prepare(screen_and_decode(d, 10**8))])),
                           ("latent", lambda d: eng.run([eng.check_latent(d, 10**8)]))):
            data = jpegs if kind == "jpeg-256" else bits
            work(data[0])
            ts = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                for d in data:
                    work(d)
                ts.append((time.perf_counter() - t0) / len(data) * 1e3)
            out[(kind, with_cls)] = float(np.median(ts))
    eng.classifier = cls
    lines = ["", f"engine alone, one upload at a time ({len(jpegs)} foolbox photos at 256 px, median of {rounds} "
             "rounds, ms per upload):", "", "| | jpeg-256 (decode + encode + rANS) | latent (checks + lane decode) | ratio |",
             "|---|---|---|---|"]
    for with_cls in (False, True):
        j, lt = out[("jpeg-256", with_cls)], out[("latent", with_cls)]
        lines.append(f"| {'with' if with_cls else 'without'} classifier | {j:.2f} | {lt:.2f} | {j / lt:.1f}x |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/serve_latent_work")
    ap.add_argument("--out", default=None, help="also write the tables to this markdown file")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    from latentstore.codec.api import compress
    from latentstore.serve.engine import IngestEngine, fit_to
    run = demo_classifier(args.work)
    eng = IngestEngine(CODEC, run, "cpu")
    eng.bind(eng.new_schema(SIDE, 64, "eval"))
    codec = eng.model
    rows, lines = [], []
    for kind, name, rgb, data in photos(args.work):
        (ref,) = eng.run([fit_to(rgb, SIDE)])
        small = compress(fit_to(rgb, SIDE), codec, "latentstore.rans", precision=eng.precision)
        (comp,) = eng.run([eng.check_latent(small, 10**9)])
        t0 = time.perf_counter()
        full = compress(rgb, codec, "latentstore.rans", precision=eng.precision)
        enc_s = time.perf_counter() - t0
        _, sym = codec.parse(full)
        x = eng.centres_t[torch.from_numpy(sym).long()][None]
        (area,) = eng.predict_latents(view_area(x, SIDE // 8))
        (whole,) = eng.predict_latents(x)
        top = lambda p: p[0]["label"]  # noqa: E731
        rows.append(dict(kind=kind, name=name, H=rgb.shape[0], W=rgb.shape[1], file=len(data), jpeg90=jpeg_bytes(rgb),
                         full=len(full), companion=len(small), enc_s=enc_s, ref=top(ref.predictions),
                         comp=top(comp.predictions) == top(ref.predictions),
                         same_symbols=bool(np.array_equal(comp.symbols, ref.symbols)),
                         area=top(area) == top(ref.predictions), whole=top(whole) == top(ref.predictions)))
        r = rows[-1]
        print(f"{kind:8} {name:28} {r['W']}x{r['H']} file {r['file']:>9,} jpeg90 {r['jpeg90']:>9,} latent {r['full']:>7,} "
              f"+ companion {r['companion']:>5,}  top-1 agree: companion {r['comp']} area {r['area']} whole {r['whole']} "
              f"(encode {enc_s:.1f} s)", flush=True)
    for kind in ("val", "foolbox"):
        rs = [r for r in rows if r["kind"] == kind]
        if not rs:
            continue
        n = len(rs)
        lines.append(f"\n{kind}: {n} photos; top-1 agreement with the fixed-size path (256-px centre crop encoded by "
                     f"the server): companion {sum(r['comp'] for r in rs)}/{n} (identical symbols "
                     f"{sum(r['same_symbols'] for r in rs)}/{n}), view-area {sum(r['area'] for r in rs)}/{n}, "
                     f"view-whole {sum(r['whole'] for r in rs)}/{n}")
    lines.append("\n| photo | size | file bytes | JPEG q90 of its pixels | latent (full size) | companion (256 px) | "
                 "latent + companion | file / (latent + companion) | JPEG q90 / (latent + companion) |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    v = [r for r in rows if r["kind"] == "val"]
    for r in v:
        tot = r["full"] + r["companion"]
        file = f"{r['file']:,}" if r["file"] else "(none: a bundled array)"
        ratio = f"{r['file'] / tot:.1f}x" if r["file"] else "-"
        lines.append(f"| {r['name']} | {r['W']}x{r['H']} | {file} | {r['jpeg90']:,} | {r['full']:,} | "
                     f"{r['companion']:,} | {tot:,} | {ratio} | {r['jpeg90'] / tot:.1f}x |")
    if v:
        f = sum(r["file"] for r in v)
        tf = sum(r["full"] + r["companion"] for r in v if r["file"])
        j, t, c = (sum(r[k] for r in v) for k in ("jpeg90", "full", "companion"))
        lines.append(f"| **all {len(v)}** | | {f:,} ({sum(bool(r['file']) for r in v)} files) | {j:,} | {t:,} | {c:,} | "
                     f"{t + c:,} | {f / tf:.1f}x | {j / (t + c):.1f}x |")
    lines += engine_costs(eng, [r for r in photos(args.work) if r[0] == "foolbox"])
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
