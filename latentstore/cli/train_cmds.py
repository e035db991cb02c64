"""`latentstore train codec|classify`: a thin click layer over latentstore_train (one option per config field).

The same commands run under torchrun for DDP: `torchrun --nproc_per_node 8 -m latentstore.cli train classify ...`.
"""
from __future__ import annotations

import json
import os

import click

from ..errors import UsageError
from . import main, run_dir
from .run_dir import classify_summary, run_seconds
from .common import LazyOptionsCommand, dataclass_options, deferred_choice_option, friendly


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


def _recipe_names() -> list[str]:
    from latentstore_train.codec import RECIPES  # a recipe added there is accepted here, unchanged
    return list(RECIPES)


# --preset cpu: sized for a 2-core CPU (a narrow, shallow cResNet on 28x28 latent crops); explicit options win.
# Measured on the demo's store and on 600 photos (README "Your own photos"): see the README for the figures.
CPU_PRESET = {"model": "cresnet39", "width": 16, "depth_scale": 0.5, "batch_size": 32, "lr": 0.4,
              "warmup_epochs": 1.0, "crop": 28, "num_workers": 0}
CPU_PRESET_PIXELS = {"model": "resnet50", "crop": 64}  # --input rgb|recon: a ResNet on 64-px crops instead


def apply_preset(preset: str | None, fields: dict, given: set) -> dict:
    """The preset's values for every option the user did not type."""
    if not preset:
        return fields
    values = {**CPU_PRESET, **(CPU_PRESET_PIXELS if fields.get("input") != "latent" else {})}
    return {**fields, **{k: v for k, v in values.items() if k in fields and k not in given}}


def looks_like_image_folder(path: str, limit: int = 2000) -> bool:
    """A local folder that is no store (no zarr.json, schema.json) but holds images within two levels."""
    from ..data.imageio import IMAGE_EXTENSIONS
    if not os.path.isdir(path) or any(os.path.exists(os.path.join(path, f)) for f in ("zarr.json", "schema.json")):
        return False
    seen = 0
    for root, dirs, files in os.walk(path):
        if any(f.lower().endswith(IMAGE_EXTENSIONS) for f in files):
            return True
        seen += len(files) + len(dirs)
        if seen > limit or root.count(os.sep) - path.count(os.sep) >= 1:
            dirs[:] = []
    return False


def check_store_inputs(fields: dict) -> None:
    """--input latent|recon read stores: an image folder given instead gets the two ways forward, in one line."""
    if fields.get("input") == "rgb":
        return
    for opt in ("train", "val"):
        if looks_like_image_folder(fields.get(opt) or ""):
            raise UsageError(f"--{opt} {fields[opt]}: an image folder, not a latent store; convert it first "
                             f"(latentstore convert {fields[opt]} DST.zarr) or train on its pixels with --input rgb")


_RESUME_HELP = "continue the run in --out with the same options (a finished run says so; none there: start one)"
_FORCE_HELP = "start over: remove the run in --out (its checkpoints, logs and summary) first"


def run_options(fn):
    """--resume/--force, shared by train classify, seg and joint."""
    fn = click.option("--force", is_flag=True, help=_FORCE_HELP)(fn)
    return click.option("--resume", is_flag=True, help=_RESUME_HELP)(fn)


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
               "beta": _NON_NEGATIVE, "N": (lambda v: v >= 2 and v % 2 == 0, "an even number >= 2"),
               "max_cpu_seconds": _NON_NEGATIVE, "ckpt_minutes": _NON_NEGATIVE, "val_cpu_minutes": _NON_NEGATIVE,
               "log_every": _AT_LEAST_1, "rate_scale": _POSITIVE, "sigma_hold_from": _NON_NEGATIVE}


@train.command("classify", cls=LazyOptionsCommand)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="run directory: checkpoints, config.json, log.csv, epochs.csv, curves.png")
@click.option("--preset", type=click.Choice(["cpu"]), default=None,
              help="cpu: options sized for a 2-core CPU (cresnet39, width 16, depth x0.5, batch 32, crop 28, no "
                   "loader workers); options given explicitly win")
@dataclass_options(_classify_config_cls, choices={"input": ["latent", "recon", "rgb"], "model": _model_names,
                                                     "device": ["auto", "cpu", "cuda"]})
@run_options
@click.option("--json", "as_json", is_flag=True, help="also print the per-epoch results as JSON")
@click.option("--quiet", is_flag=True, help="no progress bar")
@click.pass_context
@friendly
def classify(ctx, out_dir, preset, resume, force, as_json, quiet, **fields):
    """Train a classifier: cResNet on a latent store, or ResNet on reconstructions or RGB images."""
    import torch.distributed as dist

    from latentstore_train.classify import ClassifyConfig, train as _train
    if not fields["train"] or not fields["val"]:
        raise UsageError("--train and --val are required (a latent store, or an image folder / .npz for --input rgb)")
    fields = apply_preset(preset, fields, typed(ctx, fields))
    check_fields(fields, CLASSIFY_RULES)
    check_store_inputs(fields)
    done = run_dir.prepare(out_dir, fields, resume, force)
    if done:
        click.echo(f"{out_dir}: this run has already finished; pass --force to start over. {done}")
        return
    r = _train(ClassifyConfig(**fields), out_dir, progress=not quiet)
    if not dist.is_initialized() or dist.get_rank() == 0:
        if as_json:
            click.echo(json.dumps(r["epochs"], indent=1))
        line = classify_summary(r, out_dir, run_seconds(r))
        run_dir.write_summary(out_dir, line, r["steps"], fields)
        click.echo(line)
    if dist.is_initialized():
        dist.destroy_process_group()


def typed(ctx, fields: dict) -> set:
    """The options the user typed (not left at their defaults)."""
    return {k for k in fields if ctx.get_parameter_source(k) is not click.core.ParameterSource.DEFAULT}


@train.command("codec", cls=LazyOptionsCommand)
@click.option("--name", default="ls-c16", show_default=True,
              help="operating point to train (sets C and target bpp; NAME-msssim trains it for MS-SSIM)")
@click.option("--all", "all_points", is_flag=True, help="train every operating point of --family, one after the other")
@click.option("--family", type=click.Choice(["mse", "msssim", "both"]), default="mse", show_default=True,
              help="with --all: the MSE points (the paper's), the MS-SSIM variants, or both")
@deferred_choice_option("--recipe", choices=_recipe_names, default="cpu", show_default=True,
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
    given = {k: fields[k] for k in typed(ctx, fields)}  # what the user typed overrides the recipe; defaults do not
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
@run_options
@click.option("--quiet", is_flag=True, help="no progress bar")
@friendly
def joint(out_dir, resume, force, quiet, **fields):
    """Finetune a codec and its cResNet together (or, with --freeze-codec, the classifier alone: the control)."""
    import torch.distributed as dist

    from latentstore_train.joint import JointConfig, train as _train
    check_fields(fields, {"batch_size": _AT_LEAST_1, "epochs": _NON_NEGATIVE, "lr_codec": _POSITIVE,
                          "lr_classifier": _POSITIVE, "num_workers": _NON_NEGATIVE, "max_steps": _NON_NEGATIVE})
    done = run_dir.prepare(out_dir, fields, resume, force)
    if done:
        click.echo(f"{out_dir}: this run has already finished; pass --force to start over. {done}")
        return
    r = _train(JointConfig(**fields), out_dir, progress=not quiet)
    if not dist.is_initialized() or dist.get_rank() == 0:
        result = {k: v for k, v in r.items() if k not in ("log", "config")}
        click.echo(json.dumps(result, indent=1))
        line = (f"done: {r['steps']} steps in {run_seconds(r):.0f} s; the new codec in "
                f"{os.path.join(out_dir, 'codec.safetensors')}, its classifier in {os.path.join(out_dir, 'classifier')}")
        run_dir.write_summary(out_dir, line, r["steps"], fields)
        click.echo(line)
    if dist.is_initialized():
        dist.destroy_process_group()
