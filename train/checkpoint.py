"""Checkpoints with exact resume, without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is a tensors file (model, optimizer tensors, RNG state) and `ckpt.json` (step, optimizer
hyper-parameters, the resolved config, the caller's small state, the sha256 of its tensors file). ckpt.json is
the commit point. With `addressed=True` (codec runs) the tensors go under a new, content-addressed name,
`ckpt-<sha12>.safetensors`, written and fsynced (file and folder) BEFORE ckpt.json names it; only then is the
previous tensors file deleted. A kill, OOM or power loss at any moment leaves a ckpt.json whose tensors file
exists: the run resumes from the last checkpoint or the one before, exactly (issue #29). Classify, seg and joint
runs are addressed too, and keep `ckpt.safetensors` as a hard link of the committed file for the readers that
open it by that name (`reader_link`). The old layout (a fixed `ckpt.safetensors` replaced in place, a ckpt.json
naming no file) is still read; such a pair caught between its two writes is refused on resume in one line,
never silently mixed. The per-step log does not belong here (it grows without bound): callers append it to a CSV.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import threading

import torch
from safetensors.torch import load, save

from latentstore.atomic import write_bytes_atomic, write_json_atomic
from latentstore.errors import LatentstoreError

TENSORS, META = "ckpt.safetensors", "ckpt.json"
ADDRESSED = re.compile(r"ckpt-[0-9a-f]{12}\.safetensors")  # content-addressed tensors files (ckpt.json names one)


def fsync_dir(path: str) -> None:
    """Make the renames done in `path` durable: without it a power loss may keep one rename and lose another."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        raise LatentstoreError(f"{path}: cannot sync the folder ({e.strerror or e})") from None
    finally:
        os.close(fd)


def tensors_files(run_dir: str) -> list[str]:
    """Every tensors file in run_dir, either layout (the current one and any a crash left behind)."""
    try:
        names = os.listdir(run_dir)
    except OSError:
        return []
    return sorted(n for n in names if n == TENSORS or ADDRESSED.fullmatch(n))


def tensors_name(meta: dict) -> str:
    """The tensors file a ckpt.json goes with: the one it names, else (older checkpoints) ckpt.safetensors."""
    name = meta.get("tensors_file", TENSORS)
    if not isinstance(name, str) or not (name == TENSORS or ADDRESSED.fullmatch(name)):
        raise LatentstoreError(f"{META}: tensors_file {name!r} is not a checkpoint tensors file name")
    return name


def tensors_path(run_dir: str) -> str:
    """The tensors file of run_dir's checkpoint, either layout: for readers of the file itself (sizes, weights)."""
    try:
        with open(os.path.join(run_dir, META)) as f:
            return os.path.join(run_dir, tensors_name(json.load(f)))
    except (OSError, ValueError, AttributeError) as e:
        raise LatentstoreError(f"{run_dir}: unreadable checkpoint ({e})") from None


def save_checkpoint(run_dir: str, step: int, model: torch.nn.Module, opt: torch.optim.Optimizer,
                    gen: torch.Generator, config: dict, extra: dict | None = None, addressed: bool = False,
                    reader_link: bool = False, extra_tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Write the checkpoint; with `addressed`, crash-safe at every moment (module docstring), else the old layout.
    `reader_link` (classify, seg, joint runs: addressed too): once committed, ckpt.safetensors is made a hard link
    of the named file, for the readers that open the run's weights by that name (predict, serve, a backbone)."""
    addressed = addressed or reader_link
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    sd = opt.state_dict()
    scalars = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt/{pid}/{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}/{k}"] = v
    tensors["rng/generator"] = gen.get_state()
    tensors["rng/torch"] = torch.get_rng_state()
    tensors.update(extra_tensors or {})  # e.g. a weights EMA's "ema/..."
    data = save(tensors)
    sha = hashlib.sha256(data).hexdigest()
    name = f"ckpt-{sha[:12]}.safetensors" if addressed else TENSORS
    write_bytes_atomic(os.path.join(run_dir, name), data)
    fsync_dir(run_dir)  # the tensors file is durable before any ckpt.json names it
    meta = {"step": step, "param_groups": sd["param_groups"], "opt_scalars": scalars, "config": config,
            "tensors_sha256": sha, **(extra or {})}
    if addressed:
        meta["tensors_file"] = name
    write_json_atomic(meta, os.path.join(run_dir, META))
    # the resolved config beside every checkpoint, readable on its own
    write_json_atomic(config, os.path.join(run_dir, "config.json"))
    fsync_dir(run_dir)
    if reader_link:
        _link_for_readers(run_dir, name, data)
    if addressed:  # ckpt.json no longer names them: the previous checkpoint's, a crashed save's, the old layout's
        for old in tensors_files(run_dir):
            if old != name and not (reader_link and old == TENSORS):
                try:
                    os.remove(os.path.join(run_dir, old))
                except OSError:  # the checkpoint is committed; the next save retries the clean-up
                    pass
        fsync_dir(run_dir)


def _link_for_readers(run_dir: str, name: str, data: bytes) -> None:
    """ckpt.safetensors := the committed tensors file, replaced atomically: a reader by that name gets the last
    checkpoint's weights or, after a crash just before this, the one before's; whole either way (resume reads the
    file ckpt.json names). A hard link costs no space; where links are refused, a copy."""
    link, tmp = os.path.join(run_dir, TENSORS), os.path.join(run_dir, TENSORS + ".link.tmp")
    try:
        os.remove(tmp)  # a crashed save's
    except FileNotFoundError:
        pass
    try:
        os.link(os.path.join(run_dir, name), tmp)
        os.replace(tmp, link)
    except OSError:
        write_bytes_atomic(link, data)


def read_checkpoint(run_dir: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(the JSON side, the tensors), after checking that the two files belong together."""
    try:
        with open(os.path.join(run_dir, META)) as f:
            meta = json.load(f)
        name = tensors_name(meta)
        with open(os.path.join(run_dir, name), "rb") as f:
            data = f.read()
    except (OSError, ValueError, AttributeError) as e:
        raise LatentstoreError(f"{run_dir}: unreadable checkpoint ({e})") from None
    want = meta.get("tensors_sha256")
    if want is not None and hashlib.sha256(data).hexdigest() != want:  # older checkpoints recorded no hash
        raise LatentstoreError(f"{run_dir}: {name} does not match {META} (sha256 differs: a checkpoint copied "
                               "or committed mid-write); restore both files from the same checkpoint")
    try:
        return meta, load(data)
    except Exception as e:  # safetensors raises its own types for damaged files
        raise LatentstoreError(f"{run_dir}: {name} is not readable ({str(e).splitlines()[0]})") from None


def read_model_weights(run_dir: str) -> dict[str, torch.Tensor]:
    """A run's model tensors (names without "model/"), for readers of a finished or running run (predict, serve,
    joint finetuning): with a ckpt.json, the file it names, checked against its sha256 (not ckpt.safetensors,
    which a crash may leave one checkpoint behind); without one (a classifier folder a joint run exported),
    ckpt.safetensors, checked against the sha256 its config.json records."""
    if os.path.exists(os.path.join(run_dir, META)):
        tensors = read_checkpoint(run_dir)[1]
    else:
        try:
            with open(os.path.join(run_dir, TENSORS), "rb") as f:
                data = f.read()
            with open(os.path.join(run_dir, "config.json")) as f:
                want = json.load(f).get("tensors_sha256")
        except (OSError, ValueError, AttributeError) as e:
            raise LatentstoreError(f"{run_dir}: unreadable weights ({e})") from None
        if want is not None and hashlib.sha256(data).hexdigest() != want:  # older exports recorded none
            raise LatentstoreError(f"{run_dir}: {TENSORS} fails the sha256 its config.json records (damaged)")
        try:
            tensors = load(data)
        except Exception as e:  # safetensors raises its own types for damaged files
            raise LatentstoreError(f"{run_dir}: {TENSORS} is not readable ({str(e).splitlines()[0]})") from None
    return {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}


def load_checkpoint(run_dir: str, model: torch.nn.Module, opt: torch.optim.Optimizer,
                    gen: torch.Generator, extra_tensors: dict | None = None) -> dict:
    """Restores everything in place; returns the JSON side (step, the caller's extra state, ...). The tensors
    save_checkpoint took as `extra_tensors` go into the dict given as `extra_tensors`."""
    meta, tensors = read_checkpoint(run_dir)
    if extra_tensors is not None:
        extra_tensors.update({k: v for k, v in tensors.items() if not k.startswith(("model/", "opt/", "rng/"))})
    model.load_state_dict({k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")})
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt/"):
            _, pid, name = k.split("/", 2)
            state.setdefault(int(pid), {})[name] = v
    for k, v in meta["opt_scalars"].items():
        pid, name = k.split("/", 1)
        state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    gen.set_state(tensors["rng/generator"])
    torch.set_rng_state(tensors["rng/torch"])
    return meta


def has_checkpoint(run_dir: str) -> bool:
    """A ckpt.json with its tensors file. An unreadable ckpt.json counts (resuming then fails in one line):
    starting over would overwrite the run."""
    try:
        with open(os.path.join(run_dir, META)) as f:
            meta = json.load(f)
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return True
    name = meta.get("tensors_file", TENSORS) if isinstance(meta, dict) else TENSORS
    return not isinstance(name, str) or os.path.exists(os.path.join(run_dir, name))


class StopSignals:
    """Within `with`: SIGTERM and SIGINT set `signum` (the loop checkpoints and stops after its step) instead of
    killing the process mid-write; the previous handlers come back after. Only in the main thread."""

    def __init__(self):
        self.signum, self._old = 0, {}

    def _handle(self, signum, frame):
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        return False
