"""`latentstore demo` (`make demo`): the main jobs on data that installs with the project.

1. Compress a handful of scikit-image photos at the three operating points, decompress them,
   and print bpp, PSNR, MS-SSIM and the originals' bytes.
2. Convert foolbox's 20 ImageNet samples, laid out as an ImageNet-style class tree, into a
   Zarr latent store, verify it, and print the conversion summary.
"""
from __future__ import annotations

import os
import shutil

import click

from .codec.api import compress, decompress
from .codec.zoo import DEFAULT_CODEC, OPERATING_POINTS, available_codecs, load_codec
from .data.imageio import load_image, save_png
from .data.photos import skimage_photo_path
from .errors import LatentstoreError
from .eval.metrics import bpp, msssim, psnr

DEMO_PHOTOS = ["astronaut", "chelsea", "coffee", "rocket"]


def imagenet_samples_tree(out: str) -> str | None:
    """foolbox's data/imagenet_NN_CLASS.jpg -> out/<CLASS>/imagenet_NN.jpg; None when foolbox is absent."""
    try:
        import importlib.util
        spec = importlib.util.find_spec("foolbox")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None
    data = os.path.join(list(spec.submodule_search_locations)[0], "data")
    files = sorted(f for f in os.listdir(data) if f.startswith("imagenet_") and f.endswith(".jpg"))
    if os.path.exists(out):
        shutil.rmtree(out)
    for f in files:
        _, idx, cls = f[:-4].split("_")
        os.makedirs(os.path.join(out, f"n{int(cls):04d}"), exist_ok=True)
        shutil.copyfile(os.path.join(data, f), os.path.join(out, f"n{int(cls):04d}", f"imagenet_{idx}.jpg"))
    return out


def run_demo(out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    codecs = [c for c in OPERATING_POINTS if c in available_codecs()]
    if not codecs:
        raise LatentstoreError("no shipped codecs found in latentstore/weights/ (reinstall the package)")
    click.echo("== 1. single images: compress -> bytes -> decompress, at the three operating points ==")
    click.echo(f"{'photo':11} {'size':>9} {'original':>10} {'codec':7} {'bytes':>7} {'bpp':>7} {'PSNR':>6} {'MS-SSIM':>8}")
    for name in DEMO_PHOTOS:
        path = skimage_photo_path(name)
        rgb = load_image(path)
        for c in codecs:
            codec = load_codec(c)
            data = compress(rgb, codec)
            rec = decompress(data)  # finds the codec from the bitstream's header
            save_png(rec, os.path.join(out_dir, f"{name}-{c}.png"))
            click.echo(f"{name:11} {rgb.shape[1]:>4}x{rgb.shape[0]:<4} {os.path.getsize(path):>10,} {c:7} {len(data):>7,} "
                       f"{bpp(len(data), rgb.shape):>7.4f} {psnr(rgb, rec):>6.2f} {msssim(rgb, rec):>8.4f}")
    click.echo(f"(reconstructions in {out_dir}/; originals' bytes are the PNG/JPEG files scikit-image ships)")

    click.echo("\n== 2. one-shot conversion of an ImageNet-style folder into a latent store ==")
    from .convert.pipeline import ConvertOptions, convert
    from .store.verify import verify
    src = imagenet_samples_tree(os.path.join(out_dir, "imagenet-samples"))
    if src is None:
        click.echo("foolbox is not installed (make demo installs it); using the scikit-image photos as a flat folder")
        src = os.path.join(out_dir, "photos")
        os.makedirs(src, exist_ok=True)
        for n in DEMO_PHOTOS:
            shutil.copyfile(skimage_photo_path(n), os.path.join(src, os.path.basename(skimage_photo_path(n))))
    dst = os.path.join(out_dir, "imagenet-samples.zarr")
    if os.path.exists(dst):
        shutil.rmtree(dst)
    click.echo(f"latentstore convert {src} {dst} --codec {DEFAULT_CODEC} --size 256")
    s = convert(src, dst, ConvertOptions(codec=DEFAULT_CODEC, size=256, shard_size=8, batch_size=8))
    click.echo(s.describe())
    r = verify(dst)
    click.echo(f"verify: {'ok' if r['ok'] else 'FAILED'} ({r['samples']} samples, {r['files']} files)")
