"""`latentstore datasets ...`: datasets made offline, from packages on this machine (no downloads)."""
from __future__ import annotations

import click

from . import main
from .common import LazyOptionsCommand, dataclass_options, friendly


def _scenes_config_cls():
    from ..data.scenes import ScenesConfig
    return ScenesConfig


@main.group()
def datasets():
    """Datasets made offline: the segmentation scenes (Fashion-MNIST items pasted onto photos)."""


@datasets.command("scenes", cls=LazyOptionsCommand)
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--train", "n_train", type=int, default=10000, show_default=True, help="training scenes")
@click.option("--val", "n_val", type=int, default=1000, show_default=True, help="validation scenes")
@dataclass_options(_scenes_config_cls)
@click.option("--overwrite", is_flag=True, help="regenerate OUT if it holds an earlier scenes set")
@click.option("--quiet", is_flag=True, help="no progress bar")
@friendly
def scenes(out, n_train, n_val, overwrite, quiet, **fields):
    """Write a segmentation set with real pixel labels in PASCAL VOC layout under OUT, deterministic from --seed.

    Convert it with `latentstore convert OUT DST --split train|val`; train on it with `latentstore train seg`."""
    from ..data.scenes import ScenesConfig, make_scenes
    rec = make_scenes(out, n_train, n_val, cfg=ScenesConfig(**fields), overwrite=overwrite, progress=not quiet)
    c = rec["config"]
    click.echo(f"wrote {n_train:,} train and {n_val:,} val scenes of {c['size']}x{c['size']} px to {out} "
               f"(seed {c['seed']}; {rec['num_classes']} classes: {', '.join(rec['class_names'])}; "
               f"{sum(len(v) for v in rec['photos'].values())} background photos)")
