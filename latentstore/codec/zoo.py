"""Named operating points, saved as safetensors with their config and frozen entropy model.

A codec file holds every tensor of LatentCodec's state (network weights, input normalisation and
`entropy.freqs`, the C x L int64 symbol counts). The metadata holds the config JSON and the training
record. The weights hash (model.weights_hash) goes into every bitstream, so bytes are never decoded
by the wrong codec.
"""
from __future__ import annotations

import json
import os
from functools import lru_cache

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..errors import UsageError
from .model import CodecConfig, LatentCodec, context_free_tables, weights_hash

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "weights")
CODEC_FORMAT = "latentstore.codec/1"

# The paper's three operating points (Torfason et al. 2018, Sec. 3): name -> (C, target bpp)
OPERATING_POINTS = {"ls-c8": (8, 0.098), "ls-c16": (16, 0.330), "ls-c32": (32, 0.635)}
DEFAULT_CODEC = "ls-c16"


def save_codec(model: LatentCodec, path: str, meta: dict | None = None) -> str:
    """Write the codec (tables included: call `model.update(counts)` first) and return its weights hash."""
    state = model.state_for_saving()
    h = weights_hash(state)
    md = {"config": model.cfg.to_json(), "weights_hash": h, "format": CODEC_FORMAT,
          "meta": json.dumps(meta if meta is not None else model.meta, sort_keys=True)}
    tmp = f"{path}.tmp{os.getpid()}"
    save_file(state, tmp, metadata=md)
    os.replace(tmp, path)
    model._hash = h
    return h


def load_codec_file(path: str, device: str | torch.device = "cpu") -> LatentCodec:
    try:
        with safe_open(path, framework="pt") as f:
            md = f.metadata() or {}
        state = load_file(path)
    except Exception as e:  # safetensors raises its own types for damaged headers
        raise UsageError(f"{path}: not a readable codec file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if md.get("format") != CODEC_FORMAT:
        raise UsageError(f"{path}: not a latentstore codec file (format {md.get('format')!r})")
    h = weights_hash(state)
    if h != md.get("weights_hash"):
        raise UsageError(f"{path}: weights hash {h} does not match the recorded {md.get('weights_hash')} (corrupt file)")
    try:
        model = LatentCodec(CodecConfig.from_json(md["config"]))
        if "entropy.rans_tables" not in state:  # a codec file from before bitstream v2
            state["entropy.rans_tables"] = torch.from_numpy(context_free_tables(state["entropy.freqs"].numpy()))
        model.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise UsageError(f"{path}: codec file does not fit its config ({str(e).splitlines()[0]})") from None
    model.meta = json.loads(md.get("meta", "{}"))
    model._hash = h
    return model.eval().to(device)


def available_codecs() -> list[str]:
    """Zoo names, the paper's operating points first by rate, each followed by its -msssim variant, then
    earlier versions (NAME@1, ...), then anything else."""
    if not os.path.isdir(WEIGHTS_DIR):
        return []
    names = [f[: -len(".safetensors")] for f in os.listdir(WEIGHTS_DIR) if f.endswith(".safetensors")]
    order = list(OPERATING_POINTS)

    def key(n: str):
        base, _, version = n.partition("@")
        point = base[: -len("-msssim")] if base.endswith("-msssim") else base
        return (order.index(point) if point in order else len(order), point, base.endswith("-msssim"),
                int(version) if version.isdigit() else 0, n)
    return sorted(names, key=key)


def codec_file(name_or_path: str) -> str:
    """The file behind a zoo name or a path."""
    if os.path.exists(name_or_path):
        return name_or_path
    path = os.path.join(WEIGHTS_DIR, f"{name_or_path}.safetensors")
    if not os.path.exists(path):
        names = ", ".join(available_codecs()) or "none shipped"
        raise UsageError(f"unknown codec {name_or_path!r} (available: {names})")
    return path


@lru_cache(maxsize=16)
def _load_cached(path: str) -> LatentCodec:
    return load_codec_file(path)


def load_codec(name_or_path: str, device: str | torch.device = "cpu") -> LatentCodec:
    """A zoo name ('ls-c16') or a path to a codec .safetensors file. Zoo codecs on the CPU are cached:
    treat them as read-only (copy.deepcopy before changing one)."""
    path = codec_file(name_or_path)
    if path != name_or_path and str(device) == "cpu":
        return _load_cached(path)
    return load_codec_file(path, device)


def find_codec_by_hash(codec_id: str, h: str) -> LatentCodec | None:
    """The shipped codec whose weights hash matches a bitstream header's, among those of the header's name and
    its earlier versions (`ls-c32`, `ls-c32@1`, ...) when the header names one (v1), else among all."""
    names = [n for n in available_codecs() if not codec_id or n.split("@")[0] == codec_id]
    for name in names:
        c = load_codec(name)
        if c.hash == h:
            return c
    return None


def install_codec(model: LatentCodec, name: str, meta: dict | None = None) -> str:
    """Write `model` as the shipped codec `name`. A different codec of that name is kept as `name@K` (the
    next free K), so stores and bitstreams it made still find it; installing the same weights again is a no-op
    for the old file. Returns the weights hash."""
    path = os.path.join(WEIGHTS_DIR, f"{name}.safetensors")
    if os.path.exists(path):
        old = load_codec_file(path)
        if old.hash != model.update():
            k = 1
            while os.path.exists(os.path.join(WEIGHTS_DIR, f"{name}@{k}.safetensors")):
                k += 1
            os.replace(path, os.path.join(WEIGHTS_DIR, f"{name}@{k}.safetensors"))
    _load_cached.cache_clear()
    return save_codec(model, path, meta)
