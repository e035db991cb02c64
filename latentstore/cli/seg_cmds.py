"""`latentstore train seg`: segmentation from latents or pixels, a thin click layer over latentstore_train.seg.

Registered on the `train` group of train_cmds (one option per SegConfig field, help from its comments).
Under torchrun for DDP: `torchrun --nproc_per_node 8 -m latentstore.cli train seg ...`.
"""
from __future__ import annotations

import json

import click

import os

from ..errors import UsageError
from . import run_dir
from .common import LazyOptionsCommand, dataclass_options, friendly
from .run_dir import run_seconds, skipped_note
from .train_cmds import check_store_inputs, run_options, train


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
@run_options
@click.option("--json", "as_json", is_flag=True, help="also print the per-epoch results as JSON")
@click.option("--quiet", is_flag=True, help="no progress bar")
@friendly
def seg(out_dir, resume, force, as_json, quiet, **fields):
    """Train a segmentation network: cResNet-d on a latent store, or ResNet-d on reconstructions or RGB images."""
    import torch.distributed as dist

    from latentstore_train.seg import SegConfig, train as _train
    if not fields["train"] or not fields["val"]:
        raise UsageError("--train and --val are required (latent stores with masks, or a VOC-layout root for "
                         "--input rgb)")
    check_store_inputs(fields)
    done = run_dir.prepare(out_dir, fields, resume, force)
    if done:
        click.echo(f"{out_dir}: this run has already finished; pass --force to start over. {done}")
        return
    r = _train(SegConfig(**fields), out_dir, progress=not quiet)
    if not dist.is_initialized() or dist.get_rank() == 0:
        if as_json:
            click.echo(json.dumps(r["epochs"], indent=1))
        line = seg_summary(r, out_dir)
        run_dir.write_summary(out_dir, line, r["steps"], fields)
        click.echo(line)
    if dist.is_initialized():
        dist.destroy_process_group()


def seg_summary(r: dict, out_dir: str) -> str:
    """The one line a segmentation run ends with: best mIoU, epochs, time, where the weights and metrics are."""
    eps = [e for e in r["epochs"] if "miou" in e]
    where = f"weights in {os.path.join(out_dir, 'ckpt.safetensors')}, per-class IoU in seg_metrics.csv"
    if not eps:
        return f"stopped at step {r['steps']} (--max-steps) before an epoch ended, {run_seconds(r):.0f} s; {where}"
    best = max(eps, key=lambda e: e["miou"])
    return (f"done: best val mIoU {best['miou']:.2f} (epoch {best['epoch']}), pixel accuracy "
            f"{best['pixel_accuracy']:.1f}%; {len(r['epochs'])} epochs, {r['steps']} steps in {run_seconds(r):.0f} s; "
            f"{where}" + skipped_note(r))
