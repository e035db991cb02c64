"""`latentstore train seg`: segmentation from latents or pixels, a thin click layer over latentstore_train.seg.

Registered on the `train` group of train_cmds (one option per SegConfig field, help from its comments).
Under torchrun for DDP: `torchrun --nproc_per_node 8 -m latentstore.cli train seg ...`.
"""
from __future__ import annotations

import json

import click

from ..errors import UsageError
from .common import LazyOptionsCommand, dataclass_options, friendly
from .train_cmds import train


def _seg_config_cls():
    from latentstore_train.seg import SegConfig
    return SegConfig


def _seg_model_names() -> list[str]:
    from ..models.deeplab import SEG_ARCHS
    return list(SEG_ARCHS)


@train.command("seg", cls=LazyOptionsCommand)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="run directory: checkpoints, config.json, log.csv, epochs.csv, curves.png, seg_metrics.json/.csv, "
                   "predictions.png")
@dataclass_options(_seg_config_cls, choices={"input": ["latent", "recon", "rgb"], "model": _seg_model_names,
                                              "device": ["auto", "cpu", "cuda"]})
@click.option("--quiet", is_flag=True, help="no progress bar")
@friendly
def seg(out_dir, quiet, **fields):
    """Train a segmentation network: cResNet-d on a latent store, or ResNet-d on reconstructions or RGB images."""
    import torch.distributed as dist

    from latentstore_train.seg import SegConfig, train as _train
    if not fields["train"] or not fields["val"]:
        raise UsageError("--train and --val are required (latent stores with masks, or a VOC-layout root for "
                         "--input rgb)")
    r = _train(SegConfig(**fields), out_dir, progress=not quiet)
    if not dist.is_initialized() or dist.get_rank() == 0:
        click.echo(json.dumps(r["epochs"], indent=1))
    if dist.is_initialized():
        dist.destroy_process_group()
