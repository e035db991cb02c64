"""Run directories of `train classify|seg|joint --out DIR`: refuse to reuse one by accident, resume one only with
the options it was started with, start over only when asked (--force), and say when a run has finished.

A run directory is one holding `config.json` or `ckpt.json` (written by latentstore_train's checkpoints).
`summary.json` is written here, by the CLI, when a run ends: its presence is what "finished" means.
"""
from __future__ import annotations

import glob
import json
import os
import shutil

from ..atomic import remove_stale_temps
from ..errors import UsageError

SUMMARY_FILE = "summary.json"
# what a training run writes into its directory (train/*.py and this CLI): --force removes these and nothing else
RUN_FILES = ("ckpt.json", "ckpt.safetensors", "ckpt.safetensors.tmp", "ckpt.safetensors.link.tmp", "ckpt.json.tmp",
             "config.json", "config.json.tmp", "log.csv", "epochs.csv", "curves.png", SUMMARY_FILE, "seg_metrics.json",
             "seg_metrics.csv", "predictions.png", "result.json", "codec.safetensors", "val.csv", "val.png")
RUN_GLOBS = ("ckpt-*.safetensors",)  # content-addressed checkpoint tensors (latentstore_train.checkpoint)
RUN_FOLDERS = ("classifier", "tb")
# options that change how a run is executed or where it stops, not what it computes: a resume may change them
RESUMABLE_CHANGES = {"num_workers", "cache_dir", "ckpt_every", "max_steps", "device", "skip_corrupt",
                     "max_corrupt_fraction", "eval_images", "eval_batch_size", "grid", "threads"}


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def saved_config(out_dir: str) -> dict | None:
    """The options a run in out_dir was started with (its checkpoint's, else config.json), or None for no run."""
    ckpt = _read_json(os.path.join(out_dir, "ckpt.json"))
    if ckpt and isinstance(ckpt.get("config"), dict):
        return ckpt["config"]
    return _read_json(os.path.join(out_dir, "config.json"))


def _normal(v):
    return json.loads(json.dumps(v))  # tuples as lists, as the checkpoint's JSON holds them


def differing_options(saved: dict, fields: dict) -> list[str]:
    """`--name saved -> now` for every option that differs from the run's and matters to its result."""
    return [f"--{k.replace('_', '-')} {saved[k]!r} -> {v!r}" for k, v in fields.items()
            if k not in RESUMABLE_CHANGES and k in saved and _normal(v) != saved[k]]


def finished_summary(out_dir: str, fields: dict) -> str | None:
    """The summary line of a finished run in out_dir (None if it has not finished). A run stopped by --max-steps
    is not finished for a resume that asks for more steps."""
    s = _read_json(os.path.join(out_dir, SUMMARY_FILE))
    if not s:
        return None
    if fields.get("max_steps", 0) != s.get("max_steps", 0) and (not fields.get("max_steps")
                                                               or fields["max_steps"] > s.get("step", 0)):
        return None
    return s.get("summary", "finished")


def remove_run(out_dir: str) -> None:
    """--force: the files a run wrote, so the next one starts from step 0 (nothing else in the folder is touched).
    Every DDP rank calls this before its training starts; the first rank's checkpoint comes an epoch later."""
    paths = [os.path.join(out_dir, n) for n in RUN_FILES]
    paths += [p for pattern in RUN_GLOBS for p in sorted(glob.glob(os.path.join(glob.escape(out_dir), pattern)))]
    for path in paths:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
    for name in RUN_FOLDERS:
        shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)
    remove_stale_temps(out_dir)  # checkpoint temporaries (*.tmpPID) of a killed run


def prepare(out_dir: str, fields: dict, resume: bool, force: bool) -> str | None:
    """Before any training: None to go on (a new run, a resume, or --force's fresh start), or the summary line
    of a finished run, which the caller prints instead of training again. UsageError (exit 2) otherwise."""
    if resume and force:
        raise UsageError("--resume and --force contradict each other: continue the run, or start it over")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UsageError(f"--out {out_dir}: exists and is not a folder")
    saved = saved_config(out_dir) if os.path.isdir(out_dir) else None
    if saved is None:
        return None
    if force:
        remove_run(out_dir)
        return None
    done = finished_summary(out_dir, fields)
    if not resume:
        state = "a finished" if done else "an unfinished"
        raise UsageError(f"--out {out_dir} holds {state} training run; pass --resume to continue it"
                         f"{' (it will say so)' if done else ''} or --force to start over, or choose another --out")
    diff = differing_options(saved, fields)
    if diff:
        raise UsageError(f"--resume: {out_dir} was started with other options ({'; '.join(diff)}); resume with "
                         "the same options, or pass --force to start over")
    return done


def write_summary(out_dir: str, line: str, step: int, fields: dict) -> None:
    """Marks the run finished; `summary` is the line the CLI printed."""
    from ..atomic import write_bytes_atomic
    write_bytes_atomic(os.path.join(out_dir, SUMMARY_FILE),
                       json.dumps({"summary": line, "step": step, "max_steps": fields.get("max_steps", 0)},
                                  indent=1).encode())


def classify_summary(r: dict, out_dir: str, seconds: float) -> str:
    """The one line a classify run ends with: best validation accuracy, epochs, time, where the weights are."""
    eps = r["epochs"]
    where = f"weights in {os.path.join(out_dir, 'ckpt.safetensors')} (latentstore predict SRC --run {out_dir})"
    if not eps:
        return f"stopped at step {r['steps']} (--max-steps) before an epoch ended, {seconds:.0f} s; {where}"
    best = max(eps, key=lambda e: (e["top1"], e["top5"]))
    return (f"done: best val top-1 {best['top1']:.1f}%, top-5 {best['top5']:.1f}% (epoch {best['epoch']}, "
            f"{best['n']} val images); {len(eps)} epochs, {r['steps']} steps in {seconds:.0f} s; {where}"
            + skipped_note(r))


def skipped_note(r: dict) -> str:
    """What --skip-corrupt left out, said in the summary line itself (a run that skipped nothing says nothing)."""
    n = r.get("skipped_corrupt", 0) or 0
    return f"; skipped {n} corrupt samples (--skip-corrupt)" if n else ""


def run_seconds(r: dict) -> float:
    """Training time of the whole run, resumed parts included (the per-step log's clock)."""
    return r["log"][-1]["seconds"] if r.get("log") else 0.0
