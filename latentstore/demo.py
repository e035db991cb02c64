"""`latentstore demo` (`make demo`): the main jobs on data that installs with the project.

1. Compress a handful of scikit-image photos at the three operating points, decompress them,
   and print bpp, PSNR, MS-SSIM and the originals' bytes.
2. Lay foolbox's 20 ImageNet samples out as ImageNet-style class trees, 15 for training and 5 held back
   for validation, convert both into Zarr latent stores, verify them, and print the conversion summaries.
3. Train a small cResNet (`--preset cpu`) straight from the training store's latents (no decoding to
   pixels) for a few seconds on the CPU, validate it on the held-back store, print its one-line summary.
4. Predict the held-back JPEGs with that run (`latentstore predict`): encoded, classified from latents.
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

    click.echo("\n== 2. one-shot conversion of ImageNet-style folders into latent stores ==")
    from .convert.pipeline import ConvertOptions, convert
    from .store.verify import verify
    src = imagenet_samples_tree(os.path.join(out_dir, "imagenet-samples"))
    if src is None:
        click.echo("foolbox is not installed (make demo installs it); using the scikit-image photos as a flat folder")
        src = os.path.join(out_dir, "photos")
        os.makedirs(src, exist_ok=True)
        for n in DEMO_PHOTOS:
            shutil.copyfile(skimage_photo_path(n), os.path.join(src, os.path.basename(skimage_photo_path(n))))
        convert_one(src, os.path.join(out_dir, "photos.zarr"), ConvertOptions, convert, verify)
        click.echo("\n(training skipped: a flat folder has no classes; install foolbox for the ImageNet samples)")
        return
    train_src, val_src = hold_back(src, HELD_BACK)
    stores = [convert_one(s, f"{s}.zarr", ConvertOptions, convert, verify) for s in (train_src, val_src)]

    click.echo("\n== 3. training from the store: a cResNet on the latents, no decoding to pixels ==")
    run = os.path.join(out_dir, "cresnet-run")
    train_from_store(stores[0], run, val_store=stores[1])

    click.echo("\n== 4. predictions for the held-back JPEGs: encoded by the store's codec, classified from latents ==")
    from .predict import format_table, predict
    click.echo(f"latentstore predict {val_src} --run {run} --top-k 3")
    click.echo(format_table(predict([val_src], run, k=3, device="cpu")))


HELD_BACK = 4  # every 4th image (of the sorted 20) is held back for validation: 5 images the network never sees


def hold_back(src: str, every: int) -> tuple[str, str]:
    """SRC/<class>/<image> -> SRC-train and SRC-val trees with every `every`-th image (in sorted order) in val.
    Both trees keep every class folder, empty ones too, so label i means the same class in both stores."""
    out = {part: f"{src}-{part}" for part in ("train", "val")}
    for d in out.values():
        shutil.rmtree(d, ignore_errors=True)
    files = sorted(os.path.join(c, f) for c in sorted(os.listdir(src)) for f in os.listdir(os.path.join(src, c)))
    for c in os.listdir(src):
        for d in out.values():
            os.makedirs(os.path.join(d, c), exist_ok=True)
    for i, rel in enumerate(files):
        shutil.copyfile(os.path.join(src, rel), os.path.join(out["val" if i % every == every - 1 else "train"], rel))
    return out["train"], out["val"]


def convert_one(src: str, dst: str, options, convert, verify) -> str:
    if os.path.exists(dst):
        shutil.rmtree(dst)
    click.echo(f"latentstore convert {src} {dst} --codec {DEFAULT_CODEC} --size 256 --shard-size 8")
    s = convert(src, dst, options(codec=DEFAULT_CODEC, size=256, shard_size=8, batch_size=8))
    click.echo(s.describe())
    r = verify(dst)
    click.echo(f"verify: {'ok' if r['ok'] else 'FAILED'} ({r['samples']} samples, {r['files']} files)\n")
    return dst


DEMO_EPOCHS = 20


def train_from_store(train_store: str, out: str, val_store: str | None = None) -> dict:
    """`train classify --preset cpu` on the demo's 15 training images, validated on the 5 held back (val_store;
    None validates on the training store itself, as benchmarks that only need a trained run do). Its accuracy
    is near chance by construction (19 classes, at most one training image each): the run shows the pipeline,
    latents in, a classifier out, not what latents can learn (the benchmarks measure that on real datasets)."""
    import torch
    from latentstore_train.classify import ClassifyConfig, train

    from .cli.run_dir import classify_summary, run_seconds
    from .cli.train_cmds import CPU_PRESET
    held_back = val_store is not None
    val_store = val_store or train_store
    if os.path.exists(out):
        shutil.rmtree(out)  # a fresh run, not a resume of the last demo's
    cfg = ClassifyConfig(input="latent", train=train_store, val=val_store, device="cpu", epochs=DEMO_EPOCHS,
                         **CPU_PRESET)
    click.echo(f"latentstore train classify --preset cpu --train {train_store} --val {val_store} --out {out} "
               f"--epochs {DEMO_EPOCHS} --device cpu")
    # One thread: the ops are tiny (batches of 15 x 16 x 28 x 28), so a second thread buys little, and on a
    # busy machine every op's thread barrier waits for a descheduled core.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        r = train(cfg, out, progress=False)
    finally:
        torch.set_num_threads(threads)
    seconds = run_seconds(r)
    n_train, n_val, classes = r["config"]["train_samples"], r["config"]["val_samples"], r["config"]["num_classes"]
    click.echo(classify_summary(r, out, seconds))
    click.echo(f"{n_train} training images x {DEMO_EPOCHS} epochs in {seconds:.1f} s: "
               f"{n_train * DEMO_EPOCHS / seconds:.0f} training images/s, validation and checkpoints included")
    if not held_back:
        click.echo(f"validated on the {n_val} training images themselves (no held-back set): not a measure of accuracy")
        return r
    click.echo(f"validated on {n_val} held-back images; chance is {100 / classes:.0f}% top-1 and "
               f"{100 * min(5, classes) / classes:.0f}% top-5 with {classes} classes: with at most one training image "
               "per class nothing can generalise here, so read this as the pipeline working, not as accuracy")
    return r
