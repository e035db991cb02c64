"""`latentstore upload`: the service's client, a thin layer over latentstore.serve.client."""
from __future__ import annotations

import sys

import click

from . import main
from .common import friendly


@main.command()
@click.argument("src", type=click.Path())
@click.option("--url", required=True, help="the service, e.g. http://127.0.0.1:8000")
@click.option("--token", default=None, envvar="LATENTSTORE_TOKEN",
              help="bearer token with the `write` scope (or $LATENTSTORE_TOKEN)")
@click.option("--concurrency", type=int, default=8, show_default=True, help="uploads in flight at once")
@click.option("--retries", type=int, default=6, show_default=True,
              help="retries of one file after a 503 or a lost connection (exponential backoff, Retry-After)")
@click.option("--timeout", "timeout_s", type=float, default=120.0, show_default=True, help="seconds per request")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="also write every file's outcome (id, sha256, status, reason) to this JSON file")
@click.option("--quiet", is_flag=True, help="no progress bar")
@click.option("--encode", is_flag=True,
              help="compress each photo here with the store's codec (GET /v1/codec, cached) and send its bitstream")
@click.option("--tile", type=int, default=None, help="--encode: tile side in pixels for big photos (0: never tile)")
@friendly
def upload(src, url, token, concurrency, retries, timeout_s, json_out, quiet, encode, tile):
    """Upload the images of SRC to a running `latentstore serve`: a folder (SRC/<class>/<image>: the class
    folder's name is the label, as `convert` reads it; images directly in SRC go unlabelled) or a `path [label]`
    list file. Print what was uploaded, already stored, rejected and failed. Exit 1 if any failed."""
    from ..serve.client import UploadOptions, upload as _upload
    summary = _upload(src, UploadOptions(url=url, token=token, concurrency=concurrency, retries=retries,
                                         timeout_s=timeout_s, progress=not quiet, encode=encode, tile=tile))
    click.echo(summary.describe())
    if json_out:
        from ..atomic import write_json_atomic
        write_json_atomic([r.__dict__ for r in summary.results], json_out)
    if summary.failed:
        sys.exit(1)
