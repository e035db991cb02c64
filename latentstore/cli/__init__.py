"""The `latentstore` command: a thin click layer over library functions, one file per verb family.

Every LatentstoreError becomes one line on stderr and a non-zero exit (see common.py for the codes).
"""
from __future__ import annotations

import click

from .common import friendly


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="latentstore")
def main():
    """latentstore: image datasets as learned, entropy-coded latents (Torfason et al., ICLR 2018)."""


@main.command()
@click.option("--out", "out_dir", default="out/demo", show_default=True, type=click.Path(file_okay=False))
@friendly
def demo(out_dir):
    """The main job on the embedded photos: compress at the three operating points, then convert to a store."""
    from ..demo import run_demo
    run_demo(out_dir)


# the verb families register their commands on `main` when imported
from . import (codec_cmds, data_cmds, predict_cmds, seg_cmds, serve_cmds, store_cmds, train_cmds,  # noqa: E402,F401
               upload_cmds)
