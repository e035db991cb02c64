"""Commands on datasets and stores: convert, merge, info, verify, decode."""
from __future__ import annotations

import json
import os

import click

from ..errors import LatentstoreError, UsageError
from . import main
from .codec_cmds import _PRECISION_HELP
from .common import friendly

_KEY_FILE_HELP = ("seal the schema with an HMAC-SHA256 under the key in this private file (0600, >= 16 bytes); "
                  "default: $LATENTSTORE_SEAL_KEY, if set")


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
@click.option("--max-file-mb", type=int, default=256, show_default=True,
              help="an input file (or tar member) larger than this is recorded as a reject")
@click.option("--split", default=None,
              help="SRC is a PASCAL VOC-layout root: convert this split (train, val, trainval, train_aug, or a .txt "
                   "in ImageSets/Segmentation/), its masks stored beside the latents")
@click.option("--bitstream", type=click.Choice(["v1", "v2", "v3"]), default="v2", show_default=True,
              help="v2: interleaved rANS with context tables fitted to this store; v3: the same with a three-neighbour "
                   "context (latentstore.rans3: fewer bytes; codecs with L <= 6); v1: per-channel ANS")
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]), default=None,
              help=_PRECISION_HELP + "; a resumed store keeps the arithmetic it records")
@click.option("--key-file", type=click.Path(), default=None, help=_KEY_FILE_HELP)
@click.option("--quiet", is_flag=True, help="no progress bar")
@friendly
def convert(src, dst, codec, fmt, size, native, device, batch_size, shard_size, resume, num_shards, shard_id,
            max_file_mb, split, bitstream, precision, key_file, quiet):
    """Convert an image dataset SRC into a latent store DST."""
    from ..codec.zoo import DEFAULT_CODEC
    from ..convert.pipeline import ConvertOptions, convert as _convert
    if split is not None:
        if native:  # masks are stored at the fixed size only (a masks array of S x S, or S x S .mask.npy)
            raise UsageError("--native stores no masks: convert a VOC split at a fixed --size")
        from ..convert.sources import voc_split_source
        src = voc_split_source(src, split)  # the listing reads ROOT/ImageSets/Segmentation/<split>.txt
    if batch_size < 1 or shard_size < 1 or max_file_mb < 1:
        raise UsageError("--batch-size, --shard-size and --max-file-mb must be >= 1")
    from ..store.validate import MAX_SHARD_SIZE
    if shard_size > MAX_SHARD_SIZE:
        raise UsageError(f"--shard-size must be <= {MAX_SHARD_SIZE}")
    opts = ConvertOptions(codec=codec or DEFAULT_CODEC, fmt=fmt, size=None if native else size, device=device,
                          batch_size=batch_size, shard_size=shard_size, resume=resume, num_shards=num_shards,
                          shard_id=shard_id, max_file_mb=max_file_mb, bitstream=bitstream, precision=precision,
                          progress=not quiet)
    from ..store.sealkey import sealing_with
    with sealing_with(key_file):
        click.echo(_convert(src, dst, opts).describe())


@main.command()
@click.argument("dst", type=click.Path())
@click.option("--key-file", type=click.Path(), default=None, help=_KEY_FILE_HELP)
@friendly
def merge(dst, key_file):
    """Commit a rank-sharded conversion: check every shard is written, then write the complete schema."""
    from ..convert.pipeline import merge as _merge
    from ..store.info import format_info, info
    from ..store.sealkey import sealing_with
    with sealing_with(key_file):
        _merge(dst)
    click.echo(format_info(info(dst)))


@main.command("info")
@click.argument("store", type=click.Path())
@click.option("--json", "as_json", is_flag=True)
@friendly
def info_cmd(store, as_json):
    """Describe a latent store: format, codec, samples, bytes, bpp, ratio, ImageNet projection."""
    from ..store.info import format_info, info
    d = info(store)
    if as_json:
        from ..store import open_store
        d["rejects"] = open_store(store, allow_incomplete=True).schema.rejects
        click.echo(json.dumps(d, indent=1))
    else:
        click.echo(format_info(d))


@main.command(epilog="Threat model: the plain seal (sha256) catches accidents; the keyed seal (--key-file or "
                     "$LATENTSTORE_SEAL_KEY, an HMAC-SHA256) catches an editor, who cannot reseal an edit without "
                     "the key.")
@click.argument("store", type=click.Path())
@click.option("--strict", is_flag=True,
              help="also fail what could not be verified: an old schema (v1), missing checksums, an unlisted store")
@click.option("--key-file", type=click.Path(), default=None,
              help="check the schema's keyed seal with the key in this private file (default: "
                   "$LATENTSTORE_SEAL_KEY, if set); a store without a keyed seal fails")
@friendly
def verify(store, strict, key_file):
    """Re-read every byte, check every checksum and the schema against the disk, decode every sample."""
    from tqdm import tqdm

    from ..store.schema import read_schema
    from ..store.sealkey import sealing_with
    from ..store.verify import verify as _verify
    with sealing_with(key_file) as key:
        n = read_schema(store).num_samples
        with tqdm(total=n, unit="sample", desc="verify", disable=n < 1000) as bar:
            r = _verify(store, progress=bar.update, strict=strict, key=key)
    for note in r["notes"]:
        click.echo(f"note: {note}", err=True)
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

    from ..data.imageio import save_png
    from ..store import open_store
    s = open_store(store)
    idx = list(indices) or list(range(len(s)))
    bad = [i for i in idx if not 0 <= i < len(s)]
    if bad:
        raise UsageError(f"--index {bad[0]} is out of range (the store has {len(s)} samples)")
    os.makedirs(out_dir, exist_ok=True)
    for i in tqdm(idx, unit="img", desc="decode", disable=len(idx) < 20):
        save_png(s.decode_rgb(i), os.path.join(out_dir, decoded_name(i, s.meta(i).get("source", ""))))
    click.echo(f"wrote {len(idx)} PNGs to {out_dir}")


def decoded_name(slot: int, source: str) -> str:
    """'0000012-cat_01.png': the slot (unique, sorts like the store) and the source's stem (what a user knows)."""
    import re
    stem = os.path.splitext(os.path.basename(str(source or "")))[0]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")[:80]
    return f"{slot:07d}-{stem}.png" if stem else f"{slot:07d}.png"


@main.command()
@click.argument("src", type=click.Path())
@click.argument("dst", type=click.Path())
@click.option("--bitstream", type=click.Choice(["v1", "v2", "v3"]), default="v2", show_default=True,
              help="DST's entropy coder, as convert's --bitstream; v2 and v3 tables are refitted to SRC's symbols")
@click.option("--format", "fmt", type=click.Choice(["zarr", "wds"]), default=None, help="[default: SRC's]")
@click.option("--key-file", type=click.Path(), default=None, help=_KEY_FILE_HELP)
@click.option("--quiet", is_flag=True, help="no progress bar")
@friendly
def recode(src, dst, bitstream, fmt, key_file, quiet):
    """Re-entropy-code store SRC into DST from its symbols alone (no image is re-encoded)."""
    from ..convert.recode import recode as _recode
    from ..store.info import format_info, info
    from ..store.sealkey import sealing_with
    with sealing_with(key_file):
        _recode(src, dst, bitstream, fmt, progress=not quiet)
    click.echo(format_info(info(dst)))
