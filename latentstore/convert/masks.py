"""Segmentation masks beside the images: same geometry as the pixels, nearest-neighbour, class ids kept."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ..data.imageio import clean_reason, read_bounded
from ..errors import BadImageError


def load_mask(path: str, size: int) -> np.ndarray:
    """A class-index mask (PNG, palette or L) -> (size, size) uint8: shorter side to `size`, centre crop."""
    data = read_bounded(path)
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except Exception as e:
        raise BadImageError(f"{path}: unreadable mask ({clean_reason(str(e))})") from None
    a = np.asarray(im if im.mode in ("P", "L") else im.convert("L"))
    h, w = a.shape
    s = size / min(h, w)
    nh, nw = max(size, round(h * s)), max(size, round(w * s))
    a = np.asarray(Image.fromarray(a).resize((nw, nh), Image.Resampling.NEAREST))
    y, x = (nh - size) // 2, (nw - size) // 2
    return np.ascontiguousarray(a[y: y + size, x: x + size])
