"""The `latentstore` command: a thin click layer over library functions.

Every LatentstoreError becomes one line on stderr and a non-zero exit (2 for bad arguments).
"""
from __future__ import annotations

import functools
import json
import os
import sys

import click

from .errors import LatentstoreError, UsageError


def friendly(fn):
    """Turn our errors into `error: ...` and an exit code, never a traceback."""
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except LatentstoreError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except MemoryError:
            click.echo("error: out of memory", err=True)
            sys.exit(1)
    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="latentstore")
def main():
    """latentstore: image datasets as learned, entropy-coded latents (Torfason et al., ICLR 2018)."""


# ------------------------------------------------------------------------------ single images
@main.command()
@click.argument("image", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--codec", default=None, help="operating point name (see `latentstore codecs`) or a .safetensors path")
@friendly
def compress(image, out, codec):
    """Compress IMAGE into a latentstore bitstream OUT."""
    from .codec.api import compress as _compress
    from .codec.metrics import bpp
    from .codec.zoo import DEFAULT_CODEC, load_codec
    from .imageio import load_image
    c = load_codec(codec or DEFAULT_CODEC)
    rgb = load_image(image)
    data = _compress(rgb, c)
    _write_atomic(out, data)
    click.echo(f"{image}: {rgb.shape[1]}x{rgb.shape[0]} -> {len(data):,} bytes, {bpp(len(data), rgb.shape):.4f} bpp ({c.name})")


@main.command()
@click.argument("bitstream", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--codec", default=None, help="codec name or .safetensors path (default: the one named in the bitstream)")
@friendly
def decompress(bitstream, out, codec):
    """Decode BITSTREAM into an image OUT (PNG), the original's size."""
    from .codec.api import decompress as _decompress
    from .imageio import save_png
    try:
        with open(bitstream, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UsageError(f"{bitstream}: cannot read ({e.strerror or e})") from None
    rgb = _decompress(data, codec)
    save_png(rgb, out)
    click.echo(f"{bitstream} -> {out} ({rgb.shape[1]}x{rgb.shape[0]})")


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        raise LatentstoreError(f"{path}: cannot write ({e.strerror or e})") from None


# ------------------------------------------------------------------------------------- codecs
@main.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--max-side", default=512, show_default=True, help="validation photos are downscaled to this shorter side")
@friendly
def codecs(as_json, max_side):
    """List the available codecs, measured on the validation photos with real bytes."""
    from .codec.zoo import available_codecs
    from .eval.validation import measure_codec
    rows = [measure_codec(n, max_side) for n in available_codecs()]
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    click.echo(f"{'name':8} {'C':>3} {'L':>3} {'target':>7} {'bpp':>7} {'PSNR':>7} {'MS-SSIM':>8}  photos")
    for r in rows:
        click.echo(f"{r['name']:8} {r['C']:>3} {r['L']:>3} {r['target_bpp']:>7.3f} {r['bpp']:>7.4f} "
                   f"{r['psnr']:>7.2f} {r['msssim']:>8.4f}  {r['n_photos']}")


# --------------------------------------------------------------------------------------- eval
@main.group("eval")
def eval_group():
    """Evaluations."""


@eval_group.command("rd")
@click.argument("photos", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="where the CSVs and plot go")
@click.option("--codec", "codec_names", multiple=True, help="codecs to evaluate (default: all shipped)")
@click.option("--max-side", default=512, show_default=True, help="downscale photos to this shorter side (0: as they are)")
@friendly
def eval_rd(photos, out_dir, codec_names, max_side):
    """Rate-distortion of the codecs against JPEG, JPEG 2000 and WebP on PHOTOS (default: the validation photos)."""
    from tqdm import tqdm

    from .codec.zoo import available_codecs, load_codec
    from .eval import rd
    from .eval.validation import load_photos
    names = list(codec_names) or available_codecs()
    for n in names:
        load_codec(n)  # unknown names fail here, before any work
    items = load_photos(photos, max_side)
    bar = tqdm(total=len(items), desc="rd", unit="photo")
    summary = rd.run(items, names, out_dir, progress=lambda _: bar.update(1))
    bar.close()
    click.echo(format_rd_summary(summary))
    click.echo(f"wrote {out_dir}/rd_points.csv, rd_summary.csv, rd_curves.png")


def format_rd_summary(rows: list[dict]) -> str:
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
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- demo
@main.command()
@click.option("--out", "out_dir", default="out/demo", show_default=True, type=click.Path(file_okay=False))
@friendly
def demo(out_dir):
    """The main job on the embedded photos: compress at the three operating points, then convert to a store."""
    from .demo import run_demo
    run_demo(out_dir)


if __name__ == "__main__":
    main()
