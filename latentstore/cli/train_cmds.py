"""`latentstore train codec|classify`: a thin click layer over latentstore_train (one option per config field).

The same commands run under torchrun for DDP: `torchrun --nproc_per_node 8 -m latentstore.cli train classify ...`.
"""
from __future__ import annotations

import json
import os

import click

from ..errors import UsageError
from . import main
from .common import LazyOptionsCommand, dataclass_options, friendly


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


def check_fields(fields: dict, rules: dict) -> None:
    """Refuse out-of-range numbers before any work (exit 2): rules maps a field to (test, what it must be)."""
    for name, (ok, must) in rules.items():
        if name in fields and fields[name] is not None and not ok(fields[name]):
            raise UsageError(f"--{name.replace('_', '-')} must be {must} (got {fields[name]})")


def check_out_dir(out_dir: str) -> None:
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UsageError(f"--out {out_dir}: exists and is not a folder")


_POSITIVE = (lambda v: v > 0, "> 0")
_AT_LEAST_1 = (lambda v: v >= 1, ">= 1")
_NON_NEGATIVE = (lambda v: v >= 0, ">= 0")
CLASSIFY_RULES = {"width": _AT_LEAST_1, "depth_scale": _POSITIVE, "epochs": _AT_LEAST_1, "batch_size": _AT_LEAST_1,
                  "lr": _POSITIVE, "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"), "weight_decay": _NON_NEGATIVE,
                  "warmup_epochs": _NON_NEGATIVE, "crop": _NON_NEGATIVE, "num_workers": _NON_NEGATIVE,
                  "ckpt_every": _NON_NEGATIVE, "max_steps": _NON_NEGATIVE}
CODEC_RULES = {"steps": _AT_LEAST_1, "batch_size": _AT_LEAST_1, "crop": (lambda v: v >= 16 and v % 8 == 0,
               "a multiple of 8, at least 16"), "lr": _POSITIVE, "sigma_final": _POSITIVE, "photo_side": _NON_NEGATIVE,
               "min_scale": (lambda v: 0 < v <= 1, "in (0, 1]"), "warmup": _NON_NEGATIVE, "msssim_weight": _POSITIVE,
               "ckpt_every": _AT_LEAST_1, "max_photos": _NON_NEGATIVE, "stop_at": _NON_NEGATIVE,
               "beta": _NON_NEGATIVE, "N": (lambda v: v >= 2 and v % 2 == 0, "an even number >= 2")}


@train.command("classify", cls=LazyOptionsCommand)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="run directory: checkpoints, config.json, log.csv, epochs.csv, curves.png")
@dataclass_options(_classify_config_cls, choices={"input": ["latent", "recon", "rgb"], "model": _model_names,
                                                     "device": ["auto", "cpu", "cuda"]})
@click.option("--quiet", is_flag=True, help="no progress bar")
@friendly
def classify(out_dir, quiet, **fields):
    """Train a classifier: cResNet on a latent store, or ResNet on reconstructions or RGB images."""
    import torch.distributed as dist

    from latentstore_train.classify import ClassifyConfig, train as _train
    if not fields["train"] or not fields["val"]:
        raise UsageError("--train and --val are required (a latent store, or an image folder / .npz for --input rgb)")
    check_fields(fields, CLASSIFY_RULES)
    check_out_dir(out_dir)
    r = _train(ClassifyConfig(**fields), out_dir, progress=not quiet)
    if not dist.is_initialized() or dist.get_rank() == 0:
        click.echo(json.dumps(r["epochs"], indent=1))
    if dist.is_initialized():
        dist.destroy_process_group()


@train.command("codec", cls=LazyOptionsCommand)
@click.option("--name", default="ls-c16", show_default=True,
              help="operating point to train (sets C and target bpp; NAME-msssim trains it for MS-SSIM)")
@click.option("--all", "all_points", is_flag=True, help="train every operating point of --family, one after the other")
@click.option("--family", type=click.Choice(["mse", "msssim", "both"]), default="mse", show_default=True,
              help="with --all: the MSE points (the paper's), the MS-SSIM variants, or both")
@click.option("--recipe", type=click.Choice(["cpu", "cpu-finetune", "gpu", "smoke"]), default="cpu", show_default=True,
              help="training defaults (latentstore_train.codec.RECIPES); options given explicitly win")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="run directory (with --all: one sub-folder per operating point): checkpoints, config.json, "
                   "log.csv, curves.png")
@click.option("--beta", type=float, default=None, help="entropy hinge weight [default: the codec config's]")
@click.option("--N", "N", type=int, default=None, help="trunk width [default: the recipe's]")
@click.option("--install", is_flag=True,
              help="install the finished codec into the zoo (a different codec of that name is kept as NAME@K)")
@dataclass_options(_codec_config_cls, skip=("codec",), choices={"device": ["auto", "cpu", "cuda"],
                                                                "lr_schedule": ["step", "cosine"],
                                                                "distortion": ["mse", "msssim"]})
@click.option("--quiet", is_flag=True, help="no progress bar")
@click.pass_context
@friendly
def codec(ctx, name, all_points, family, recipe, out_dir, beta, N, install, quiet, **fields):
    """Train a codec operating point (or --all of them) on the offline photos."""
    from latentstore_train.codec import recipe_config, train as _train, train_all

    check_fields({**fields, "beta": beta, "N": N}, CODEC_RULES)
    check_out_dir(out_dir)
    given = {k: v for k, v in fields.items()  # what the user typed overrides the recipe; defaults do not
             if ctx.get_parameter_source(k) is not click.core.ParameterSource.DEFAULT}
    if all_points:
        fams = ("mse", "msssim") if family == "both" else (family,)
        rows = train_all(out_dir, recipe, fams, install, progress=not quiet, N=N, **given)
        click.echo(json.dumps(rows, indent=1))
        return
    cfg = recipe_config(name, recipe, N=N, **given)
    if beta is not None:
        cfg.codec.beta = beta
    click.echo(json.dumps(_train(cfg, out_dir, progress=not quiet, install_as=name if install else None), indent=1))


def _joint_config_cls():
    from latentstore_train.joint import JointConfig
    return JointConfig


@train.command("joint", cls=LazyOptionsCommand)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="run directory: checkpoints, config.json, log.csv (+ tb/), codec.safetensors, classifier/")
@dataclass_options(_joint_config_cls, choices={"device": ["auto", "cpu", "cuda"]})
@click.option("--quiet", is_flag=True, help="no progress bar")
@friendly
def joint(out_dir, quiet, **fields):
    """Finetune a codec and its cResNet together (or, with --freeze-codec, the classifier alone: the control)."""
    import torch.distributed as dist

    from latentstore_train.joint import JointConfig, train as _train
    check_fields(fields, {"batch_size": _AT_LEAST_1, "epochs": _NON_NEGATIVE, "lr_codec": _POSITIVE,
                          "lr_classifier": _POSITIVE, "num_workers": _NON_NEGATIVE, "max_steps": _NON_NEGATIVE})
    check_out_dir(out_dir)
    r = _train(JointConfig(**fields), out_dir, progress=not quiet)
    if not dist.is_initialized() or dist.get_rank() == 0:
        click.echo(json.dumps({k: v for k, v in r.items() if k not in ("log", "config")}, indent=1))
    if dist.is_initialized():
        dist.destroy_process_group()
