"""The validation photos, and the figures `latentstore codecs` reports for each codec."""
from __future__ import annotations

import os

import numpy as np

from ..codec.api import compress, decompress
from .metrics import bpp, msssim, psnr
from ..codec.zoo import load_codec
from ..data.imageio import load_image
from ..data.photos import available_photos, resize_shorter


def load_photos(paths, max_side: int = 512) -> list[tuple[str, np.ndarray]]:
    """Files given on the command line, or the validation split when none are given."""
    if paths:
        items = [(os.path.basename(p), load_image(p)) for p in paths]
    else:
        items = [(p.name, p.load()) for p in available_photos("val")]
    return [(n, resize_shorter(a, max_side) if max_side else a) for n, a in items]


def measure_codec(name: str, max_side: int = 512) -> dict:
    codec = load_codec(name)
    photos = load_photos([], max_side)
    rates, ps, ms = [], [], []
    for _, rgb in photos:
        data = compress(rgb, codec)
        rec = decompress(data, codec)
        rates.append(bpp(len(data), rgb.shape))
        ps.append(psnr(rgb, rec))
        ms.append(msssim(rgb, rec))
    return {"name": name, "C": codec.cfg.C, "L": codec.cfg.L, "target_bpp": codec.cfg.target_bpp,
            "bpp": float(np.mean(rates)) if rates else float("nan"), "psnr": float(np.mean(ps)) if ps else float("nan"),
            "msssim": float(np.mean(ms)) if ms else float("nan"), "n_photos": len(photos),
            "weights_hash": codec.hash, "trained_on": codec.meta.get("device_name", "?"),
            "train_seconds": codec.meta.get("train_seconds")}
