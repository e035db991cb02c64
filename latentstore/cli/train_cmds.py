"""`latentstore train codec|classify`: a thin click layer over latentstore_train (one option per config field).

The same commands run under torchrun for DDP: `torchrun --nproc_per_node 8 -m latentstore.cli train classify ...`.
"""
from __future__ import annotations

import json
import os

import click

from ..errors import UsageError
from . import main
from .common import dataclass_options, friendly


@main.group()
def train():
    """Training jobs: codecs, and classifiers from latents or pixels."""


def _classify_config_cls():
    from latentstore_train.classify import ClassifyConfig
    return ClassifyConfig


def _codec_config_cls():
    from latentstore_train.codec import CodecTrainConfig
    return CodecTrainConfig


def _model_names() -> list[str]:
    from ..models.resnet import ARCHS
    return list(ARCHS)


@train.command("classify")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="run directory: checkpoints, config.json, log.csv, epochs.csv, curves.png")
@dataclass_options(_classify_config_cls(), choices={"input": ["latent", "recon", "rgb"], "model": _model_names(),
                                                     "device": ["auto", "cpu", "cuda"]})
@click.option("--quiet", is_flag=True, help="no progress bar")
@friendly
def classify(out_dir, quiet, **fields):
    """Train a classifier: cResNet on a latent store, or ResNet on reconstructions or RGB images."""
    import torch.distributed as dist

    from latentstore_train.classify import ClassifyConfig, train as _train
    if not fields["train"] or not fields["val"]:
        raise UsageError("--train and --val are required (a latent store, or an image folder / .npz for --input rgb)")
    r = _train(ClassifyConfig(**fields), out_dir, progress=not quiet)
    if not dist.is_initialized() or dist.get_rank() == 0:
        click.echo(json.dumps(r["epochs"], indent=1))
    if dist.is_initialized():
        dist.destroy_process_group()


@train.command("codec")
@click.option("--name", default="ls-c16", show_default=True, help="operating point to train (sets C and target bpp)")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="run directory: checkpoints, config.json, log.csv, curves.png")
@click.option("--beta", type=float, default=None, help="entropy hinge weight [default: the codec config's]")
@click.option("--N", "N", type=int, default=None, help="trunk width [default: the codec config's]")
@click.option("--install", is_flag=True, help="write the finished codec into latentstore/weights/")
@dataclass_options(_codec_config_cls(), skip=("codec",), choices={"device": ["auto", "cpu", "cuda"]})
@click.option("--quiet", is_flag=True, help="no progress bar")
@friendly
def codec(name, out_dir, beta, N, install, quiet, **fields):
    """Train one codec operating point on the offline photos."""
    from latentstore_train.codec import CodecTrainConfig, codec_config_for, train as _train

    from ..codec.zoo import WEIGHTS_DIR
    cfg = CodecTrainConfig(codec=codec_config_for(name, beta=beta, N=N), **fields)
    dest = os.path.join(WEIGHTS_DIR, f"{name}.safetensors") if install else None
    click.echo(json.dumps(_train(cfg, out_dir, dest, progress=not quiet), indent=1))
