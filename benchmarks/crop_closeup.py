"""A close look at one crop: the original beside a codec and JPEG / WebP given at least the codec's bytes.

    python -m benchmarks.crop_closeup --photo plasma:Kite --codec ls-c32 [--size 512] [--zoom 192]

The crop is the photo's centre at full resolution (what `eval rd --max-side 0 --crop 512` measures), so smooth
skies and bokeh show at their real scale. Each classical codec takes its lowest quality whose file is at least the
codec's bytes. The figure shows the whole crop and a zoomed square from its top-left quarter (sky in most
landscapes), each panel titled with bytes, bpp and PSNR.
Writes benchmarks/results/codec_training/closeup-<photo>-<codec>.png.
"""
from __future__ import annotations

import argparse
import os

import numpy as np

from latentstore.codec.api import compress, decompress
from latentstore.data.photos import available_photos
from latentstore.eval.metrics import psnr
from latentstore.eval.rd import _pillow_roundtrip, centre_crop

OUT = os.path.join(os.path.dirname(__file__), "results", "codec_training")


def classical_at_least(rgb: np.ndarray, fmt: str, min_bytes: int) -> tuple[int, int, np.ndarray]:
    """(quality, bytes, decoded) of the lowest quality whose file has at least `min_bytes` (the highest if none)."""
    for q in range(1, 101):
        data, decoded = _pillow_roundtrip(rgb, fmt, quality=q, **({"method": 6} if fmt == "WEBP" else {}))
        if len(data) >= min_bytes or q == 100:
            return q, len(data), decoded
    raise AssertionError("unreachable")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photo", default="plasma:Kite", help="a photo name from latentstore.data.photos")
    ap.add_argument("--codec", default="ls-c32")
    ap.add_argument("--size", type=int, default=512, help="side of the centre crop, full resolution")
    ap.add_argument("--zoom", type=int, default=192, help="side of the zoomed square")
    a = ap.parse_args(argv)
    photos = {p.name: p for p in available_photos()}
    if a.photo not in photos:
        raise SystemExit(f"error: unknown photo {a.photo!r} (known: {', '.join(sorted(photos))})")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rgb = centre_crop(photos[a.photo].load(), a.size)
    data = compress(rgb, a.codec)
    panels = [("original", rgb, ""), (a.codec, decompress(data), f"{len(data)} B")]
    for label, fmt in (("JPEG", "JPEG"), ("WebP", "WEBP")):
        q, n, dec = classical_at_least(rgb, fmt, len(data))
        panels.append((f"{label} q{q}", dec, f"{n} B"))
    px = rgb.shape[0] * rgb.shape[1]
    z = a.zoom
    fig, axes = plt.subplots(2, len(panels), figsize=(3.2 * len(panels), 6.6))
    for col, (label, img, size) in enumerate(panels):
        title = label if not size else f"{label}\n{size}, {8 * int(size.split()[0]) / px:.3f} bpp, {psnr(rgb, img):.2f} dB"
        axes[0, col].imshow(img)
        axes[0, col].set_title(title, fontsize=9)
        axes[1, col].imshow(img[:z, :z], interpolation="nearest")
        axes[1, col].set_title(f"top-left {z}x{z}, pixels", fontsize=8)
        for ax in axes[:, col]:
            ax.axis("off")
    fig.suptitle(f"{a.photo}: centre {rgb.shape[1]}x{rgb.shape[0]} crop at full resolution", fontsize=10)
    fig.tight_layout()
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, f"closeup-{a.photo.replace(':', '_')}-{a.codec}.png")
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
