"""`latentstore serve`: the ingest service, a thin layer over latentstore.serve (see docs/serving.md)."""
from __future__ import annotations

import sys

import click

from . import main
from .common import friendly


@main.command()
@click.argument("store", type=click.Path())
@click.option("--codec", required=True, help="operating point name or codec file (the store's codec)")
@click.option("--classifier", default=None, help="a classify run (--input latent): top-5 predictions per upload")
@click.option("--host", default="127.0.0.1", show_default=True, help="anything but loopback needs --token-file")
@click.option("--port", type=int, default=8000, show_default=True, help="0: any free port (printed when ready)")
@click.option("--token-file", default=None, type=click.Path(),
              help="lines 'TOKEN read|write'; the file mode 0600, each token >= 16 characters")
@click.option("--max-batch", type=int, default=16, show_default=True, help="uploads per encode batch; 1: no batching")
@click.option("--max-delay-ms", type=float, default=5.0, show_default=True,
              help="how long a batch waits to fill, only while the model is busy")
@click.option("--queue", type=int, default=64, show_default=True, help="uploads waiting at most; more get 503")
@click.option("--max-upload-mb", type=float, default=32.0, show_default=True, help="larger bodies get 413")
@click.option("--workers", type=int, default=1, show_default=True,
              help="uvicorn worker processes sharing the store (one seals)")
@click.option("--size", type=int, default=256, show_default=True, help="side S of a new store (S x S latents)")
@click.option("--native", is_flag=True, help="a new store keeps each photo at its own size (tiled coding; S: the "
              "classifier's view); default: S x S latents, a training set")
@click.option("--shard-size", type=int, default=256, show_default=True, help="samples per shard of a new store")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--header-timeout", type=float, default=10.0, show_default=True,
              help="seconds a request's headers may take to arrive; a slower connection is dropped")
@click.option("--body-timeout", type=float, default=60.0, show_default=True,
              help="seconds a request's body may take after its headers; a slower upload is dropped")
@friendly
def serve(store, codec, classifier, host, port, token_file, max_batch, max_delay_ms, queue, max_upload_mb, workers,
          size, native, shard_size, device, header_timeout, body_timeout):
    """Serve STORE over HTTP: uploads are compressed, stored durably and classified from their latents. A new
    STORE keeps S x S latents (--size), or each photo whole with --native; a client may send latents it
    coded itself (`latentstore upload --encode`).
    STORE is created when absent, reopened when present. Prints 'serving on http://HOST:PORT' when ready;
    SIGTERM drains, seals and exits 0. Every argument, the token file and the port are checked before the
    store is created: a bad one, or a port in use, is one line and exit 2."""
    from ..serve.config import ServeConfig
    from ..serve.server import run_server
    cfg = ServeConfig(store=store, codec=codec, classifier=classifier, host=host, port=port, token_file=token_file,
                      max_batch=max_batch, max_delay_ms=max_delay_ms, queue=queue, max_upload_mb=max_upload_mb,
                      workers=workers, size=size, native=native, shard_size=shard_size, device=device,
                      header_timeout_s=header_timeout, body_timeout_s=body_timeout)
    sys.exit(run_server(cfg.check()))
