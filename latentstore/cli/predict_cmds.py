"""`latentstore predict SRC... --run R`: a classify run's top-k labels for a store, an image folder or files."""
from __future__ import annotations

import json
from dataclasses import asdict

import click

from ..errors import LatentstoreError
from . import main
from .common import friendly


@main.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path())
@click.option("--run", "run", required=True, type=click.Path(file_okay=False),
              help="a `train classify --input latent` run directory")
@click.option("--top-k", type=int, default=5, show_default=True, help="labels per image")
@click.option("--json", "as_json", is_flag=True, help="a JSON list of {source, predictions, label, error}")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--batch-size", type=int, default=16, show_default=True)
@friendly
def predict(sources, run, top_k, as_json, device, batch_size):
    """Classify SOURCES with a run's cResNet: one latent store, or image files and folders (encoded by the run's
    store codec at its size; classified from the latents, never decoded). Exit 1 if an image could not be read."""
    from ..predict import format_table, predict as _predict
    rows = _predict(list(sources), run, top_k, device, batch_size)
    if as_json:
        click.echo(json.dumps([asdict(r) for r in rows], indent=1))
    else:
        click.echo(format_table(rows))
        known = [r for r in rows if r.label is not None and r.predictions]
        if known:
            hits = sum(r.predictions[0]["label"] == r.label for r in known)
            click.echo(f"top-1 {100 * hits / len(known):.1f}% ({hits} of {len(known)} labelled samples)")
    bad = [r for r in rows if r.error]
    if bad:
        raise LatentstoreError(f"{len(bad)} of {len(rows)} images could not be read (first: {bad[0].source}: "
                               f"{bad[0].error})")
