"""Commands on single images and codecs: compress, decompress, codecs, eval rd, flops.

Exit codes (common.py): 2 for usage errors (bad arguments, unknown names, a missing input given on
the command line, an existing output without --force), 1 for data errors (an undecodable image, a
corrupt bitstream).
"""
from __future__ import annotations

import json
import os

import click

from ..errors import LatentstoreError, UsageError
from . import main
from .common import friendly

_PRECISION_HELP = ("the networks' arithmetic: auto (bf16 on CUDA and on CPUs with AVX512_BF16 or AMX, else fp32), "
                   "bf16 or fp32 [default: LATENTSTORE_PRECISION, else auto]")
_TILE_HELP = ("tile side in pixels for large images (0: never tile) [default: LATENTSTORE_TILE, else 1024 on the "
              "CPU, 2048 on CUDA; images up to 1 Mpx are coded whole]")


PNG_LEVEL = 1  # decompress's PNG: zlib's fastest level (the PNG is a lossless copy of what was decoded)
# decompress's output format follows OUT's suffix: Pillow's format name and its save options
OUTPUT_FORMATS = {".png": ("PNG", {"compress_level": PNG_LEVEL}), ".jpg": ("JPEG", {"quality": 95}),
                  ".jpeg": ("JPEG", {"quality": 95}), ".webp": ("WEBP", {"lossless": True}),
                  ".bmp": ("BMP", {}), ".tif": ("TIFF", {}), ".tiff": ("TIFF", {}), ".ppm": ("PPM", {})}


def output_format(path: str) -> tuple[str, dict]:
    """(Pillow format, save options) for OUT's suffix; an unknown or missing suffix is a usage error, so a .jpg
    never holds PNG bytes."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in OUTPUT_FORMATS:
        raise UsageError(f"{path}: unknown image suffix {ext or '(none)'!r}; use one of "
                         + ", ".join(OUTPUT_FORMATS))
    return OUTPUT_FORMATS[ext]


def check_input_file(path: str, what: str = "input") -> None:
    """A missing input named on the command line is a usage error (2); its unreadable contents are data errors (1)."""
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such {what} file")
    if os.path.isdir(path):
        raise UsageError(f"{path}: is a directory, expected a {what} file")


def check_output_file(path: str, force: bool) -> None:
    """Refuse to replace an existing output unless --force, and a destination whose folder does not exist."""
    if os.path.isdir(path):
        raise UsageError(f"{path}: is a directory, expected an output file")
    if os.path.exists(path) and not force:
        raise UsageError(f"{path} exists; pass --force to overwrite it")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"{path}: folder {parent} does not exist")


def check_tile(tile: int | None) -> None:
    if tile is not None and tile < 0:
        raise UsageError(f"--tile must be >= 0 pixels (got {tile})")


@main.command()
@click.argument("image", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--codec", default=None, help="operating point name (see `latentstore codecs`) or a .safetensors path "
                                            "[default: ls-c16]")
@click.option("--force", is_flag=True, help="overwrite OUT if it exists")
@click.option("--tile", type=int, default=None, help=_TILE_HELP)
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]), default=None, help=_PRECISION_HELP)
@click.option("--quiet", is_flag=True, help="no progress bar (shown for large images that take over a second)")
@click.option("--bitstream", type=click.Choice(["v3", "v2"]), default=None,
              help="v3: the three-neighbour context coder (latentstore.rans3), fewer bytes; v2: latentstore.rans, "
                   "what stores and the service keep [default: v3 where the codec's alphabet allows, else v2]")
@friendly
def compress(image, out, codec, force, tile, precision, quiet, bitstream):
    """Compress IMAGE into a latentstore bitstream OUT."""
    from ..atomic import write_bytes_atomic
    from ..codec.api import compress as _compress
    from ..codec.zoo import DEFAULT_CODEC, load_codec
    from ..data.imageio import load_image
    from ..eval.metrics import bpp
    check_input_file(image, "image")
    check_output_file(out, force)
    check_tile(tile)
    c = load_codec(codec or DEFAULT_CODEC)
    rgb = load_image(image)
    coder = {None: None, "v2": "latentstore.rans", "v3": "latentstore.rans3"}[bitstream]
    data = _compress(rgb, c, coder, tile=tile, progress=not quiet, precision=precision)
    write_bytes_atomic(out, data)
    click.echo(f"{image}: {rgb.shape[1]}x{rgb.shape[0]} -> {len(data):,} bytes, {bpp(len(data), rgb.shape):.4f} bpp "
               f"({c.name}, bitstream v{data[2] if data[:2] == b'LS' else 1})")


@main.command()
@click.argument("bitstream", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--codec", default=None, help="codec name or .safetensors path [default: the one named in the bitstream]")
@click.option("--force", is_flag=True, help="overwrite OUT if it exists")
@click.option("--tile", type=int, default=None, help=_TILE_HELP)
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]), default=None, help=_PRECISION_HELP)
@click.option("--quiet", is_flag=True, help="no progress bar (shown for large images that take over a second)")
@friendly
def decompress(bitstream, out, codec, force, tile, precision, quiet):
    """Decode BITSTREAM into an image OUT, the original's size; OUT's suffix picks the format (.png, .jpg at
    quality 95, lossless .webp, .bmp, .tif, .ppm)."""
    from ..atomic import TMP_MARK
    from PIL import Image
    from ..codec.api import decompress as _decompress
    check_input_file(bitstream, "bitstream")
    check_output_file(out, force)
    fmt, save_options = output_format(out)
    check_tile(tile)
    try:
        with open(bitstream, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UsageError(f"{bitstream}: cannot read ({e.strerror or e})") from None
    rgb = _decompress(data, codec, tile=tile, progress=not quiet, precision=precision)
    tmp = f"{out}{TMP_MARK}{os.getpid()}"  # written whole, then renamed: OUT is never half a PNG
    try:
        # PNG at zlib level 1, not Pillow's 6: 5.3 -> 2.9 s for an 18-Mpx decode, 11% more bytes, the same pixels
        Image.fromarray(rgb).save(tmp, format=fmt, **save_options)
        os.replace(tmp, out)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise LatentstoreError(f"{out}: cannot write ({e.strerror or e})") from None
    click.echo(f"{bitstream} -> {out} ({rgb.shape[1]}x{rgb.shape[0]})")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--max-side", default=512, show_default=True, help="validation photos are downscaled to this shorter side")
@click.option("--measure", is_flag=True, help="measure now on this machine's validation photos (and refresh the cache) "
                                              "instead of reading cached or shipped figures")
@friendly
def codecs(as_json, max_side, measure):
    """List the available codecs with their measured bpp, PSNR and MS-SSIM on the validation photos.

    Figures are cached by the codecs' weights hash (~/.cache/latentstore/, or $LATENTSTORE_CACHE) and shipped
    with the weights, so this answers at once; a codec with no figures yet is measured (a few seconds)."""
    from ..eval.validation import codec_rows, format_codec_rows
    if max_side < 0:
        raise UsageError(f"--max-side must be >= 0 (got {max_side})")
    rows = codec_rows(None, max_side, measure=measure)
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    for line in format_codec_rows(rows) if rows else []:
        click.echo(line)
    if not rows:
        click.echo("no codecs installed (latentstore/weights/ is empty)")


@main.group("eval")
def eval_group():
    """Evaluations."""


@eval_group.command("rd")
@click.argument("photos", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="where the CSVs and plot go")
@click.option("--codec", "codec_names", multiple=True, help="codecs to evaluate (default: all shipped)")
@click.option("--max-side", default=512, show_default=True,
              help="downscale photos whose shorter side is longer than this (0: full size); the scale is printed")
@click.option("--crop", default=0, show_default=True,
              help="then measure each photo's centre CROP x CROP square (0: the whole photo); with --max-side 0, "
                   "crops at full resolution")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="where the codecs and MS-SSIM run")
@friendly
def eval_rd(photos, out_dir, codec_names, max_side, crop, device):
    """Rate-distortion of the codecs against JPEG, JPEG 2000 and WebP on PHOTOS (default: the validation photos)."""
    from tqdm import tqdm

    from ..codec.zoo import available_codecs, load_codec
    from ..device import resolve_device
    from ..eval import rd
    from ..data.photos import resize_shorter
    from ..eval.validation import load_photos
    if max_side < 0:
        raise UsageError(f"--max-side must be >= 0 (got {max_side})")
    if crop < 0 or 0 < crop < 16:
        raise UsageError(f"--crop must be 0 or at least 16 px (got {crop})")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UsageError(f"--out {out_dir}: exists and is not a folder")
    device = resolve_device(device)
    for p in photos:
        check_input_file(p, "photo")
    names = list(codec_names) or available_codecs()
    if not names:
        raise UsageError("no codecs to evaluate (none shipped; pass --codec FILE)")
    for n in names:
        load_codec(n)  # unknown names fail here, before any work
    originals = load_photos(photos, 0)
    if not originals:
        raise UsageError("no photos: pass PHOTOS, or install the validation photo packages (see README)")
    items = [(n, resize_shorter(a, max_side) if max_side else a) for n, a in originals]
    scale = rd.scale_note(originals, items, max_side)
    if crop:
        items = [(n, rd.centre_crop(a, crop)) for n, a in items]
        scale += f"; then each photo's centre {crop}x{crop} crop (--crop)"
    del originals  # full-size photos are tens of MB each
    click.echo(scale)
    bar = tqdm(total=len(items), desc="rd", unit="photo")
    summary = rd.run(items, names, out_dir, progress=lambda _: bar.update(1), device=device, scale=scale)
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
    if size < 64 or size % 8:
        raise UsageError(f"--size must be a multiple of 8, at least 64 (got {size})")
    if codec_width is not None and (codec_width < 2 or codec_width % 2):
        raise UsageError(f"--codec-width must be an even number >= 2 (got {codec_width})")
    t = flop_table(size, codec_width or CodecConfig.N)
    click.echo(json.dumps(t, indent=1) if as_json else format_flop_table(t))
