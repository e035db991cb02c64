"""Rate-distortion evaluation: the shipped codecs against JPEG, JPEG 2000 and WebP (all through Pillow).

Every figure is measured on real bytes: bpp = bytes written x 8 / pixels. For each codec operating
point the summary also gives JPEG and JPEG 2000 interpolated to the same bpp on each photo
(linear in bpp between the two nearest qualities), which is the paper's Figure 8 comparison.
"""
from __future__ import annotations

import csv
import io
import os
import textwrap
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..codec.api import compress, decompress
from .metrics import bpp, msssim_batch, psnr
from ..codec.zoo import load_codec

JPEG_QUALITIES = [1, 3, 5, 8, 10, 15, 20, 30, 40, 50, 60, 75, 90]
WEBP_QUALITIES = [0, 2, 5, 10, 20, 35, 50, 75, 90]
JP2_RATIOS = [800, 600, 400, 250, 160, 100, 70, 48, 32, 20, 12, 8]  # compression ratios vs 24-bit RGB (800: ~0.03 bpp)


@dataclass
class RDPoint:
    photo: str
    method: str  # 'ls-c16', 'JPEG', 'JPEG2000', 'WebP'
    setting: str  # the quality / ratio / codec name
    bpp: float
    psnr: float
    msssim: float
    bytes: int


def _pillow_roundtrip(rgb: np.ndarray, fmt: str, **kw) -> tuple[bytes, np.ndarray]:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, **kw)
    data = buf.getvalue()
    return data, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def classical_runs() -> list[tuple[str, object, str, dict]]:
    """(method, setting, Pillow format, Pillow options) of every classical setting."""
    runs = [("JPEG", q, "JPEG", dict(quality=q)) for q in JPEG_QUALITIES]
    runs += [("WebP", q, "WEBP", dict(quality=q, method=6)) for q in WEBP_QUALITIES]
    runs += [("JPEG2000", r, "JPEG2000", dict(quality_mode="rates", quality_layers=[r], irreversible=True))
             for r in JP2_RATIOS]
    return runs


def photo_points(name: str, rgb: np.ndarray, codecs: list, device: str | None = None) -> list[RDPoint]:
    """Every setting on one photo: the codecs' (LatentCodec objects, reported under their `.name`, or
    names) and the classical codecs' real bytes, decoded back; then PSNR of each and MS-SSIM of all
    reconstructions in one batched call (metrics.msssim_batch)."""
    rows: list[tuple[str, str, int, np.ndarray]] = []  # (method, setting, bytes, reconstruction)
    for c in codecs:
        label, codec = (c, load_codec(c)) if isinstance(c, str) else c
        data = compress(rgb, codec)
        rows.append((label, label, len(data), decompress(data, codec)))  # decoded from the real bytes
    for method, setting, fmt, kw in classical_runs():
        data, rec = _pillow_roundtrip(rgb, fmt, **kw)
        rows.append((method, str(setting), len(data), rec))
    ms = msssim_batch(rgb, [r for *_, r in rows], device)
    return [RDPoint(name, method, setting, bpp(n, rgb.shape), psnr(rgb, rec), float(m), n)
            for (method, setting, n, rec), m in zip(rows, ms)]


def interpolate_at(points: list[RDPoint], target_bpp: float, key: str) -> float | None:
    """Metric of a classical curve at `target_bpp` on one photo; None if the curve does not reach that rate."""
    pts = sorted(points, key=lambda p: p.bpp)
    xs = [p.bpp for p in pts]
    if not pts or target_bpp < xs[0] or target_bpp > xs[-1]:
        return None
    return float(np.interp(target_bpp, xs, [getattr(p, key) for p in pts]))


def evaluate(photos: list[tuple[str, np.ndarray]], codec_names: list[str], progress=None,
             device: str | None = None) -> list[RDPoint]:
    """RD points of every photo; codecs and MS-SSIM run on `device` (None: CUDA when present)."""
    from ..device import resolve_device
    device = resolve_device(device or "auto")
    codecs = [(n, load_codec(n, device)) for n in codec_names]  # loaded once, not per photo
    pts: list[RDPoint] = []
    for name, rgb in photos:
        pts += photo_points(name, rgb, codecs, device)
        if progress:
            progress(name)
    return pts


def summarise(pts: list[RDPoint], codec_names: list[str]) -> list[dict]:
    """Per codec: mean bpp/PSNR/MS-SSIM, and JPEG / JPEG 2000 at the same bpp photo by photo."""
    rows = []
    photos = sorted({p.photo for p in pts})
    for c in codec_names:
        mine = {p.photo: p for p in pts if p.method == c}
        row = {"codec": c, "photos": len(mine),
               "bpp": np.mean([p.bpp for p in mine.values()]),
               "psnr": np.mean([p.psnr for p in mine.values()]),
               "msssim": np.mean([p.msssim for p in mine.values()])}
        for ref in ("JPEG", "JPEG2000", "WebP"):
            for key in ("psnr", "msssim"):
                vals, wins = [], 0
                for ph in photos:
                    if ph not in mine:
                        continue
                    v = interpolate_at([p for p in pts if p.photo == ph and p.method == ref], mine[ph].bpp, key)
                    if v is not None:
                        vals.append(v)
                        wins += getattr(mine[ph], key) > v
                row[f"{ref}_{key}_at_bpp"] = float(np.mean(vals)) if vals else float("nan")
                row[f"{ref}_{key}_reached"] = len(vals)  # photos where the classical codec reaches this bpp
                row[f"beats_{ref}_{key}"] = wins
        rows.append(row)
    return rows


def write_csv(pts: list[RDPoint], path: str) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["photo", "method", "setting", "bpp", "psnr", "msssim", "bytes"])
        for p in pts:
            w.writerow([p.photo, p.method, p.setting, f"{p.bpp:.5f}", f"{p.psnr:.4f}", f"{p.msssim:.5f}", p.bytes])


def _short(codec: str) -> str:
    """A codec's label on the plot: a codec file's name without folder and suffix (a path ran off the figure)."""
    return os.path.splitext(os.path.basename(codec))[0] if codec.endswith(".safetensors") else codec


def _series(codec_names: list[str]) -> dict[str, list[str]]:
    """The codecs drawn as one line each: codec files by their folder, shipped codecs by version (ls-c8 with
    ls-c16, ls-c8@1 with ls-c16@1): one line through old and new weights zigzagged between them."""
    groups: dict[str, list[str]] = {}
    for c in codec_names:
        if c.endswith(".safetensors"):
            key = os.path.basename(os.path.dirname(os.path.abspath(c)))
        else:
            key = "shipped" + (f" @{c.split('@', 1)[1]}" if "@" in c else "")
        groups.setdefault(key, []).append(c)
    return groups


def plot(pts: list[RDPoint], codec_names: list[str], path: str, title: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, label in zip(axes, ["msssim", "psnr"], ["MS-SSIM", "PSNR (dB)"]):
        for method, style in [("JPEG", "o-"), ("JPEG2000", "s-"), ("WebP", "^-")]:
            settings = sorted({p.setting for p in pts if p.method == method}, key=float)
            xs, ys = [], []
            for s in settings:
                sel = [p for p in pts if p.method == method and p.setting == s]
                xs.append(np.mean([p.bpp for p in sel]))
                ys.append(np.mean([getattr(p, key) for p in sel]))
            order = np.argsort(xs)
            ax.plot(np.array(xs)[order], np.array(ys)[order], style, ms=4, label=method, alpha=0.8)
        groups = _series(codec_names)
        top = 0.0
        for (group, names), colour in zip(groups.items(), ["crimson", "purple", "grey", "olive", "teal"] * 9):
            xs = [np.mean([p.bpp for p in pts if p.method == c]) for c in names]
            ys = [np.mean([getattr(p, key) for p in pts if p.method == c]) for c in names]
            order = np.argsort(xs)
            ax.plot(np.array(xs)[order], np.array(ys)[order], "*-", color=colour, ms=12,
                    label="latentstore (C=8/16/32)" if len(groups) == 1 else f"latentstore: {group}")
            for c, x, y in zip(names, xs, ys):
                ax.annotate(_short(c), (x, y), textcoords="offset points", xytext=(5, -12), fontsize=8)
            top = max(top, max(xs))
        ax.set_xlim(0, max(1.2, top * 1.5))
        ax.set_xlabel("bits per pixel (real bytes)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if key == "msssim":
            ax.set_ylim(0.75, 1.0)
        ax.legend(fontsize=8)
    fig.suptitle("\n".join(textwrap.fill(line, 110, break_on_hyphens=False) for line in (title or "Rate-distortion, mean over photos").splitlines()))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_summary(rows: list[dict]) -> str:
    """The summary rows as a text table (what `latentstore eval rd` prints)."""
    lines = [f"{'codec':8} {'bpp':>6} {'PSNR':>6} {'MS-SSIM':>8} | {'JPEG PSNR':>9} {'JPEG MS-SSIM':>12} | "
             f"{'J2K PSNR':>8} {'J2K MS-SSIM':>11}   (classical codecs interpolated to the codec's bpp, photo by photo)"]
    for r in rows:
        def f(key, w, p):
            v = r[key]
            return f"{v:>{w}.{p}f}" if v == v else f"{'n/a':>{w}}"
        lines.append(f"{r['codec']:8} {r['bpp']:>6.3f} {r['psnr']:>6.2f} {r['msssim']:>8.4f} | {f('JPEG_psnr_at_bpp', 9, 2)} "
                     f"{f('JPEG_msssim_at_bpp', 12, 4)} | {f('JPEG2000_psnr_at_bpp', 8, 2)} {f('JPEG2000_msssim_at_bpp', 11, 4)}"
                     f"   beats JPEG MS-SSIM on {r['beats_JPEG_msssim']}/{r['JPEG_msssim_reached']} photos JPEG reaches, "
                     f"J2K on {r['beats_JPEG2000_msssim']}/{r['JPEG2000_msssim_reached']}")
    lines.append("photos where the codec is above each classical codec at its own bpp (of the photos that codec reaches):")
    for r in rows:
        wins = " | ".join(f"{label}: " + ", ".join(f"{ref} {r[f'beats_{key}_{m}']}/{r[f'{key}_{m}_reached']}"
                                                   for ref, key in (("JPEG", "JPEG"), ("J2K", "JPEG2000"), ("WebP", "WebP")))
                          for m, label in (("msssim", "MS-SSIM"), ("psnr", "PSNR")))
        lines.append(f"  {r['codec']:8} {wins}")
    return "\n".join(lines)


def centre_crop(rgb: np.ndarray, side: int) -> np.ndarray:
    """The centre side x side square (each dimension kept whole where it is shorter than `side`)."""
    h, w = rgb.shape[:2]
    ch, cw = min(side, h), min(side, w)
    y, x = (h - ch) // 2, (w - cw) // 2
    return np.ascontiguousarray(rgb[y:y + ch, x:x + cw])


def scale_note(originals: list[tuple[str, np.ndarray]], scaled: list[tuple[str, np.ndarray]], max_side: int) -> str:
    """One line saying at what size the photos are measured: rates and quality depend on it."""
    def sizes(items):
        sides = sorted((a.shape[1], a.shape[0]) for _, a in items)
        lo, hi = min(sides, key=lambda s: s[0] * s[1]), max(sides, key=lambda s: s[0] * s[1])
        return f"{lo[0]}x{lo[1]}" if lo == hi else f"{lo[0]}x{lo[1]} to {hi[0]}x{hi[1]}"
    n, changed = len(originals), sum(a.shape != b.shape for (_, a), (_, b) in zip(originals, scaled))
    if not changed:
        why = "full size (--max-side 0)" if not max_side else f"full size (none has a shorter side over {max_side} px)"
        return f"scale: {n} photos at {why}, {sizes(scaled)}"
    return (f"scale: {changed} of {n} photos downscaled to a {max_side}-px shorter side ({sizes(originals)} -> "
            f"{sizes(scaled)}); --max-side 0 measures them at full size")


def run(photos: list[tuple[str, np.ndarray]], codec_names: list[str], out_dir: str, progress=None,
        device: str | None = None, scale: str = "") -> list[dict]:
    os.makedirs(out_dir, exist_ok=True)
    pts = evaluate(photos, codec_names, progress, device)
    write_csv(pts, os.path.join(out_dir, "rd_points.csv"))
    summary = summarise(pts, codec_names)
    with open(os.path.join(out_dir, "rd_summary.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(summary[0]))
        w.writeheader()
        w.writerows(summary)
    plot(pts, codec_names, os.path.join(out_dir, "rd_curves.png"),
         f"Rate-distortion on {len(photos)} photos the codecs never saw (mean per setting)"
         + (f"\n{scale}" if scale else ""))
    if scale:  # beside the CSVs: the figures mean nothing without the size they were measured at
        with open(os.path.join(out_dir, "rd_scale.txt"), "w") as f:
            f.write(scale + "\n")
    return summary
