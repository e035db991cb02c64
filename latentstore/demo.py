"""`latentstore demo` (`make demo`): the main jobs on data that installs with the project.

1. Compress a handful of scikit-image photos at the three operating points, decompress them,
   and print bpp, PSNR, MS-SSIM and the originals' bytes.
2. Convert foolbox's 20 ImageNet samples, laid out as an ImageNet-style class tree, into a
   Zarr latent store, verify it, and print the conversion summary.
3. Train a tiny cResNet straight from that store's latents (no decoding to pixels) for a few
   seconds on the CPU, and print its accuracy and throughput.
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

    click.echo("\n== 3. training from the store: a tiny cResNet on the latents, no decoding to pixels ==")
    from .store import open_store
    if len(open_store(dst).schema.label_names) < 2:
        click.echo("skipped: the store has fewer than 2 classes (install foolbox for the demo's ImageNet samples)")
        return
    train_from_store(dst, os.path.join(out_dir, "cresnet-run"))


DEMO_TRAIN = dict(model="cresnet39", width=16, depth_scale=0.5, batch_size=10, epochs=20, crop=28, warmup_epochs=1,
                  lr=1.28, num_workers=0)  # lr is per batch 256 (scaled by batch/256): a peak of 0.05 at batch 10


def train_from_store(store: str, out: str) -> dict:
    """A short, CPU-sized cResNet run on the demo store: 20 images of 19 classes, so it is validated on the
    same images (centre crops, without the training crops' and flips' augmentation). It shows the
    pipeline and that the latents carry the images' content, not generalisation (20 images cannot)."""
    import time

    import torch
    from latentstore_train.classify import ClassifyConfig, train
    if os.path.exists(out):
        shutil.rmtree(out)  # a fresh run, not a resume of the last demo's
    cfg = ClassifyConfig(input="latent", train=store, val=store, device="cpu", **DEMO_TRAIN)
    click.echo(f"latentstore train classify --train {store} --val {store} --out {out} --device cpu "
               + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in DEMO_TRAIN.items()))
    # One thread: the ops are tiny (batches of 10 x 16 x 28 x 28), so a second thread buys little, and on a
    # busy machine every op's thread barrier waits for a descheduled core (2 cores, 20 epochs: 23 s on one
    # thread, 17-71 s on two).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t = time.time()
    try:
        r = train(cfg, out, progress=False)
    finally:
        torch.set_num_threads(threads)
    dt = time.time() - t
    seen = r["config"]["train_samples"] * cfg.epochs
    last = r["epochs"][-1]
    first = r["epochs"][0]
    epochs_s = sum(e["epoch_seconds"] for e in r["epochs"])  # training and validation, not checkpoint writes
    click.echo(f"trained {r['steps']} steps ({cfg.epochs} epochs of {r['config']['train_samples']} images) in {dt:.1f} s "
               f"on the CPU: {seen / epochs_s:.0f} img/s through training and validation, {seen / dt:.0f} img/s "
               f"counting the per-epoch checkpoints and plots")
    click.echo(f"accuracy on the store's images (centre crops): top-1 {last['top1']:.0f}% (after epoch 1: "
               f"{first['top1']:.0f}%), top-5 {last['top5']:.0f}%; chance is {100 / r['config']['num_classes']:.0f}%. "
               f"Logs and curves in {out}/")
    return r
