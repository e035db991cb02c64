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
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as e:  # a bug of ours: still one line; LATENTSTORE_DEBUG=1 shows the traceback
            if os.environ.get("LATENTSTORE_DEBUG"):
                raise
            msg = str(e).splitlines()[0] if str(e) else ""
            click.echo(f"error: internal error: {type(e).__name__}: {msg} (set LATENTSTORE_DEBUG=1 for a traceback)",
                       err=True)
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


# ------------------------------------------------------------------------------- conversion
@main.command()
@click.argument("src", type=click.Path())
@click.argument("dst", type=click.Path())
@click.option("--codec", default=None, help="operating point name or codec file [default: ls-c16]")
@click.option("--format", "fmt", type=click.Choice(["zarr", "wds"]), default="zarr", show_default=True)
@click.option("--size", type=int, default=256, show_default=True, help="fixed-size mode: shorter side to S, centre crop")
@click.option("--native", is_flag=True, help="keep every image's own size (variable-shape store)")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--shard-size", type=int, default=256, show_default=True, help="inputs per shard (unit of commit/resume)")
@click.option("--resume", is_flag=True, help="continue an interrupted conversion into DST")
@click.option("--num-shards", type=int, default=1, show_default=True, help="world size (default: torchrun's WORLD_SIZE)")
@click.option("--shard-id", type=int, default=0, show_default=True, help="this rank (default: torchrun's RANK)")
@click.option("--quiet", is_flag=True, help="no progress bar")
@friendly
def convert(src, dst, codec, fmt, size, native, device, batch_size, shard_size, resume, num_shards, shard_id, quiet):
    """Convert an image dataset SRC into a latent store DST."""
    from .codec.zoo import DEFAULT_CODEC
    from .convert.pipeline import ConvertOptions, convert as _convert
    if batch_size < 1 or shard_size < 1:
        raise UsageError("--batch-size and --shard-size must be >= 1")
    opts = ConvertOptions(codec=codec or DEFAULT_CODEC, fmt=fmt, size=None if native else size, device=device,
                          batch_size=batch_size, shard_size=shard_size, resume=resume, num_shards=num_shards,
                          shard_id=shard_id, progress=not quiet)
    s = _convert(src, dst, opts)
    click.echo(format_summary(s))


def format_summary(s) -> str:
    from .store.verify import format_info, info
    lines = [f"converted      {s.stored:,} images stored, {s.rejected:,} rejected by this process in {s.wall_s:.1f} s "
             f"({s.images_per_s:.1f} img/s); {s.shards_written} shards written, {s.shards_skipped} already done"]
    if s.stage_s:
        lines.append("stages (s)     " + ", ".join(f"{k} {v:.1f}" for k, v in s.stage_s.items()))
    for r in s.rejects[:10]:
        lines.append(f"  rejected     {r['path']}: {r['reason']}")
    if len(s.rejects) > 10:
        lines.append(f"  ... and {len(s.rejects) - 10} more (see `latentstore info --json`)")
    if s.finalized:
        lines.append(format_info(info(s.dst)))
    else:
        lines.append("this rank is done; run `latentstore merge DST` once every rank has finished")
    return "\n".join(lines)


@main.command()
@click.argument("dst", type=click.Path())
@friendly
def merge(dst):
    """Commit a rank-sharded conversion: check every shard is written, then write the complete schema."""
    from .convert.pipeline import merge as _merge
    from .store.verify import format_info, info
    _merge(dst)
    click.echo(format_info(info(dst)))


# ------------------------------------------------------------------------------------ stores
@main.command("info")
@click.argument("store", type=click.Path())
@click.option("--json", "as_json", is_flag=True)
@friendly
def info_cmd(store, as_json):
    """Describe a latent store: format, codec, samples, bytes, bpp, ratio, ImageNet projection."""
    from .store.verify import format_info, info
    d = info(store)
    if as_json:
        from .store.reader import open_store
        d["rejects"] = open_store(store, allow_incomplete=True).schema.rejects
        click.echo(json.dumps(d, indent=1))
    else:
        click.echo(format_info(d))


@main.command()
@click.argument("store", type=click.Path())
@friendly
def verify(store):
    """Re-read every byte, check every checksum, decode every sample."""
    from tqdm import tqdm

    from .store.reader import open_store
    from .store.verify import verify as _verify
    n = len(open_store(store))
    with tqdm(total=n, unit="sample", desc="verify", disable=n < 1000) as bar:
        r = _verify(store, progress=bar.update)
    for e in r["errors"]:
        click.echo(f"FAIL {e}", err=True)
    if not r["ok"]:
        raise LatentstoreError(f"{store}: {len(r['errors'])} problem(s) found")
    click.echo(f"ok: {r['samples']:,} samples decode, {r['files']:,} files match their checksums")


@main.command()
@click.argument("store", type=click.Path())
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--index", "indices", type=int, multiple=True, help="sample index (repeatable); default: every sample")
@friendly
def decode(store, out_dir, indices):
    """Write reconstructed PNGs of a store's samples (from the codec embedded in the store)."""
    from tqdm import tqdm

    from .imageio import save_png
    from .store.reader import open_store
    s = open_store(store)
    idx = list(indices) or list(range(len(s)))
    bad = [i for i in idx if not 0 <= i < len(s)]
    if bad:
        raise UsageError(f"--index {bad[0]} is out of range (the store has {len(s)} samples)")
    os.makedirs(out_dir, exist_ok=True)
    for i in tqdm(idx, unit="img", desc="decode", disable=len(idx) < 20):
        save_png(s.decode_rgb(i), os.path.join(out_dir, f"{i:07d}.png"))
    click.echo(f"wrote {len(idx)} PNGs to {out_dir}")


# -------------------------------------------------------------------------------------- flops
@main.command()
@click.option("--size", default=224, show_default=True, help="RGB input side (latents are size/8)")
@click.option("--codec-width", default=None, type=int, help="codec trunk width N [default: the shipped codecs']")
@click.option("--json", "as_json", is_flag=True)
@friendly
def flops(size, codec_width, as_json):
    """GFLOPs of the encoder/decoder, ResNet-50/71 and cResNet-39/51/72, and the paper's comparison."""
    from .codec.model import CodecConfig
    from .models.flops import flop_table, format_flop_table
    t = flop_table(size, codec_width or CodecConfig.N)
    click.echo(json.dumps(t, indent=1) if as_json else format_flop_table(t))


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
