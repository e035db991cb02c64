"""Checkpoints with exact resume, without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is two files, each written atomically and fsynced: `ckpt.safetensors` (model, optimizer tensors,
RNG state) and `ckpt.json` (step, optimizer hyper-parameters, the resolved config, the caller's small state).
ckpt.json records the sha256 of the ckpt.safetensors it goes with, written after it: a pair caught between
the two writes (a copy taken mid-checkpoint, a commit of a running training) is refused on resume in one line,
never silently mixed. The per-step log does not belong here (it grows without bound): callers append it to a CSV.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import threading

import torch
from safetensors.torch import load, save

from latentstore.atomic import write_bytes_atomic, write_json_atomic
from latentstore.errors import LatentstoreError

TENSORS, META = "ckpt.safetensors", "ckpt.json"


def save_checkpoint(run_dir: str, step: int, model: torch.nn.Module, opt: torch.optim.Optimizer,
                    gen: torch.Generator, config: dict, extra: dict | None = None) -> None:
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
    data = save(tensors)
    write_bytes_atomic(os.path.join(run_dir, TENSORS), data)
    write_json_atomic({"step": step, "param_groups": sd["param_groups"], "opt_scalars": scalars, "config": config,
                       "tensors_sha256": hashlib.sha256(data).hexdigest(), **(extra or {})},
                      os.path.join(run_dir, META))
    # the resolved config beside every checkpoint, readable on its own
    write_json_atomic(config, os.path.join(run_dir, "config.json"))


def read_checkpoint(run_dir: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(the JSON side, the tensors), after checking that the two files belong together."""
    try:
        with open(os.path.join(run_dir, META)) as f:
            meta = json.load(f)
        with open(os.path.join(run_dir, TENSORS), "rb") as f:
            data = f.read()
    except (OSError, ValueError) as e:
        raise LatentstoreError(f"{run_dir}: unreadable checkpoint ({e})") from None
    want = meta.get("tensors_sha256")
    if want is not None and hashlib.sha256(data).hexdigest() != want:  # older checkpoints recorded no hash
        raise LatentstoreError(f"{run_dir}: {TENSORS} does not match {META} (sha256 differs: a checkpoint copied "
                               "or committed mid-write); restore both files from the same checkpoint")
    try:
        return meta, load(data)
    except Exception as e:  # safetensors raises its own types for damaged files
        raise LatentstoreError(f"{run_dir}: {TENSORS} is not readable ({str(e).splitlines()[0]})") from None


def load_checkpoint(run_dir: str, model: torch.nn.Module, opt: torch.optim.Optimizer,
                    gen: torch.Generator) -> dict:
    """Restores everything in place; returns the JSON side (step, the caller's extra state, ...)."""
    meta, tensors = read_checkpoint(run_dir)
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
    return os.path.exists(os.path.join(run_dir, META)) and os.path.exists(os.path.join(run_dir, TENSORS))


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
