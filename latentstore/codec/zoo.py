"""Named operating points, saved as safetensors with their config and frozen entropy model.

A codec file holds the network weights, the input normalisation (buffers), and `entropy.freqs`
(C x L int64 symbol counts, floored so no symbol has probability zero). The metadata holds the
config JSON and the training record. The weights hash (first 16 hex digits of a sha256 over the
tensors, in name order) goes into every bitstream, so bytes are never decoded by the wrong codec.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from ..errors import UsageError
from .model import CodecConfig, LatentCodec

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "weights")

# The paper's three operating points (Torfason et al. 2018, Sec. 3): name -> (C, target bpp)
OPERATING_POINTS = {"ls-c8": (8, 0.098), "ls-c16": (16, 0.330), "ls-c32": (32, 0.635)}
DEFAULT_CODEC = "ls-c16"


def weights_hash(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class LoadedCodec:
    model: LatentCodec  # eval mode
    freqs: np.ndarray  # (C, L) int64, > 0 everywhere
    hash: str  # weights hash carried by bitstreams
    meta: dict  # the training record (where, how long, measured figures)

    @property
    def name(self) -> str:
        return self.model.cfg.name

    @property
    def cfg(self) -> CodecConfig:
        return self.model.cfg

    def centres(self) -> np.ndarray:
        return self.model.quantizer.sorted_centres().cpu().numpy().astype(np.float32)


def floor_frequencies(hist: np.ndarray, floor_fraction: float = 1e-4) -> np.ndarray:
    """Symbol counts -> counts with a floor: every symbol gets at least `floor_fraction` of its channel's total."""
    hist = np.asarray(hist, dtype=np.int64)
    floor = np.maximum(1, np.ceil(hist.sum(1, keepdims=True) * floor_fraction)).astype(np.int64)
    return np.maximum(hist, floor)


def save_codec(model: LatentCodec, freqs: np.ndarray, path: str, meta: dict | None = None) -> str:
    state = {k: v.detach().cpu().float().contiguous() for k, v in model.state_dict().items()}
    state["entropy.freqs"] = torch.from_numpy(np.asarray(freqs, dtype=np.int64))
    h = weights_hash(state)
    md = {"config": model.cfg.to_json(), "weights_hash": h, "format": "latentstore.codec/1",
          "meta": json.dumps(meta or {}, sort_keys=True)}
    tmp = path + ".tmp"
    save_file(state, tmp, metadata=md)
    os.replace(tmp, path)
    return h


def load_codec_file(path: str, device: str | torch.device = "cpu") -> LoadedCodec:
    with safe_open(path, framework="pt") as f:
        md = f.metadata() or {}
    if md.get("format") != "latentstore.codec/1":
        raise UsageError(f"{path}: not a latentstore codec file (format {md.get('format')!r})")
    cfg = CodecConfig.from_json(md["config"])
    state = load_file(path)
    h = weights_hash(state)
    if h != md.get("weights_hash"):
        raise UsageError(f"{path}: weights hash {h} does not match the recorded {md.get('weights_hash')} (corrupt file)")
    freqs = state.pop("entropy.freqs").numpy()
    model = LatentCodec(cfg)
    model.load_state_dict(state)
    model.eval().to(device)
    return LoadedCodec(model, freqs, h, json.loads(md.get("meta", "{}")))


def available_codecs() -> list[str]:
    if not os.path.isdir(WEIGHTS_DIR):
        return []
    names = [f[: -len(".safetensors")] for f in os.listdir(WEIGHTS_DIR) if f.endswith(".safetensors")]
    order = list(OPERATING_POINTS)  # the paper's operating points first, by rate
    return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))


@lru_cache(maxsize=16)
def _load_cached(path: str) -> LoadedCodec:
    return load_codec_file(path)


def load_codec(name_or_path: str, device: str | torch.device = "cpu") -> LoadedCodec:
    """A zoo name ('ls-c16') or a path to a codec .safetensors file."""
    if os.path.exists(name_or_path):
        return load_codec_file(name_or_path, device)
    path = os.path.join(WEIGHTS_DIR, f"{name_or_path}.safetensors")
    if not os.path.exists(path):
        names = ", ".join(available_codecs()) or "none shipped"
        raise UsageError(f"unknown codec {name_or_path!r} (available: {names})")
    loaded = _load_cached(path)
    if str(device) != "cpu":
        return load_codec_file(path, device)
    return loaded


def find_codec_by_hash(codec_id: str, h: str) -> LoadedCodec | None:
    """The shipped codec whose name and weights hash match a bitstream header, if any."""
    if codec_id in available_codecs():
        c = load_codec(codec_id)
        if c.hash == h:
            return c
    return None
