"""Checkpoints with exact resume, without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is two files written atomically: `ckpt.safetensors` (model, optimizer tensors, RNG
state) and `ckpt.json` (step, optimizer hyper-parameters, the resolved config, the log so far).
"""
from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file, save_file


def _atomic_json(obj, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


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
    tmp = os.path.join(run_dir, "ckpt.safetensors.tmp")
    save_file(tensors, tmp)
    os.replace(tmp, os.path.join(run_dir, "ckpt.safetensors"))
    _atomic_json({"step": step, "param_groups": sd["param_groups"], "opt_scalars": scalars,
                  "config": config, **(extra or {})}, os.path.join(run_dir, "ckpt.json"))
    # the resolved config beside every checkpoint, readable on its own
    _atomic_json(config, os.path.join(run_dir, "config.json"))


def load_checkpoint(run_dir: str, model: torch.nn.Module, opt: torch.optim.Optimizer,
                    gen: torch.Generator) -> dict:
    """Restores everything in place; returns the JSON side (step, log, ...)."""
    with open(os.path.join(run_dir, "ckpt.json")) as f:
        meta = json.load(f)
    tensors = load_file(os.path.join(run_dir, "ckpt.safetensors"))
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
    return os.path.exists(os.path.join(run_dir, "ckpt.json")) and os.path.exists(os.path.join(run_dir, "ckpt.safetensors"))
