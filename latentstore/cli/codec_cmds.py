"""Commands on single images and codecs: compress, decompress, codecs, eval rd, flops."""
from __future__ import annotations

import json

import click

from ..errors import UsageError
from . import main
from .common import friendly


@main.command()
@click.argument("image", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--codec", default=None, help="operating point name (see `latentstore codecs`) or a .safetensors path")
@friendly
def compress(image, out, codec):
    """Compress IMAGE into a latentstore bitstream OUT."""
    from ..atomic import write_bytes_atomic
    from ..codec.api import compress as _compress
    from ..codec.zoo import DEFAULT_CODEC, load_codec
    from ..data.imageio import load_image
    from ..eval.metrics import bpp
    c = load_codec(codec or DEFAULT_CODEC)
    rgb = load_image(image)
    data = _compress(rgb, c)
    write_bytes_atomic(out, data)
    click.echo(f"{image}: {rgb.shape[1]}x{rgb.shape[0]} -> {len(data):,} bytes, {bpp(len(data), rgb.shape):.4f} bpp ({c.name})")


@main.command()
@click.argument("bitstream", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--codec", default=None, help="codec name or .safetensors path (default: the one named in the bitstream)")
@friendly
def decompress(bitstream, out, codec):
    """Decode BITSTREAM into an image OUT (PNG), the original's size."""
    from ..codec.api import decompress as _decompress
    from ..data.imageio import save_png
    try:
        with open(bitstream, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UsageError(f"{bitstream}: cannot read ({e.strerror or e})") from None
    rgb = _decompress(data, codec)
    save_png(rgb, out)
    click.echo(f"{bitstream} -> {out} ({rgb.shape[1]}x{rgb.shape[0]})")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--max-side", default=512, show_default=True, help="validation photos are downscaled to this shorter side")
@friendly
def codecs(as_json, max_side):
    """List the available codecs, measured on the validation photos with real bytes."""
    from ..codec.zoo import available_codecs
    from ..eval.validation import measure_codec
    rows = [measure_codec(n, max_side) for n in available_codecs()]
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    click.echo(f"{'name':8} {'C':>3} {'L':>3} {'target':>7} {'bpp':>7} {'PSNR':>7} {'MS-SSIM':>8}  photos")
    for r in rows:
        click.echo(f"{r['name']:8} {r['C']:>3} {r['L']:>3} {r['target_bpp']:>7.3f} {r['bpp']:>7.4f} "
                   f"{r['psnr']:>7.2f} {r['msssim']:>8.4f}  {r['n_photos']}")


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

    from ..codec.zoo import available_codecs, load_codec
    from ..eval import rd
    from ..eval.validation import load_photos
    names = list(codec_names) or available_codecs()
    for n in names:
        load_codec(n)  # unknown names fail here, before any work
    items = load_photos(photos, max_side)
    bar = tqdm(total=len(items), desc="rd", unit="photo")
    summary = rd.run(items, names, out_dir, progress=lambda _: bar.update(1))
    bar.close()
    click.echo(rd.format_summary(summary))
    click.echo(f"wrote {out_dir}/rd_points.csv, rd_summary.csv, rd_curves.png")


@main.command()
@click.option("--size", default=224, show_default=True, help="RGB input side (latents are size/8)")
@click.option("--codec-width", default=None, type=int, help="codec trunk width N [default: the shipped codecs']")
@click.option("--json", "as_json", is_flag=True)
@friendly
def flops(size, codec_width, as_json):
    """GFLOPs of the encoder/decoder, ResNet-50/71 and cResNet-39/51/72, and the paper's comparison."""
    from ..codec.model import CodecConfig
    from ..models.flops import flop_table, format_flop_table
    t = flop_table(size, codec_width or CodecConfig.N)
    click.echo(json.dumps(t, indent=1) if as_json else format_flop_table(t))
