"""Segmentation masks beside the images: the image's own geometry, nearest-neighbour, class ids kept.

Fixed-size conversion resizes an image with DALI (`resize_shorter=S`, then a centre crop S x S). A
mask must land on exactly the pixels its image lands on, so the geometry here is DALI's, measured
against DALI 2.x on CPU (tests/test_seg_train.py checks it against the conversion stage itself):

- the longer side becomes round-half-up(L * S / shorter): 77 px at scale 0.5 is 39, where Python's
  round() gives 38 (banker's rounding; the mask used to come out one pixel off here);
- the scale stays exactly S / shorter on both axes and the source window is centred on the image
  (DALI's subpixel_scale), so output pixel o samples source coordinate (n - n_out / s) / 2 + (o + .5) / s;
- the centre crop starts at round-half-up((n_out - S) / 2) (floor was one pixel off for odd margins).

All three are computed in integers, so nothing depends on float rounding. Where an output pixel's centre
falls exactly on the boundary between two source pixels (a tie: no pixel is nearer), DALI's float32
arithmetic sometimes takes the lower one and this takes the upper one; the image itself is blended
from both there, so neither choice is wrong by more than the tie.
"""
from __future__ import annotations

import numpy as np

from ..data.imageio import read_bounded
from ..data.voc import IGNORE_LABEL, check_mask, decode_mask
from ..errors import BadImageError


def resized_shape(h: int, w: int, size: int) -> tuple[int, int]:
    """(H', W') of an (h, w) image after DALI's resize_shorter=size (before the crop)."""
    short = min(h, w)
    return tuple(size if n == short else (2 * n * size + short) // (2 * short) for n in (h, w))


def crop_start(n_out: int, size: int) -> int:
    """DALI's centre-crop anchor along one axis: (n_out - size) / 2 rounded half up."""
    return (n_out - size + 1) // 2


def source_indices(n_in: int, short: int, size: int) -> np.ndarray:
    """For one axis of n_in source pixels: the source pixel each of the `size` cropped output pixels samples."""
    n_out = size if n_in == short else (2 * n_in * size + short) // (2 * short)
    o = np.arange(crop_start(n_out, size), crop_start(n_out, size) + size, dtype=np.int64)
    # source coordinate (n_in - n_out*short/size)/2 + (o + 1/2)*short/size, times 2*size: all integers
    num = n_in * size - n_out * short + (2 * o + 1) * short
    return np.clip(num // (2 * size), 0, n_in - 1)


def fit_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """An (h, w) class mask -> (size, size) uint8 with the conversion's geometry, nearest neighbour."""
    h, w = mask.shape
    short = min(h, w)
    ys, xs = source_indices(h, short, size), source_indices(w, short, size)
    return np.ascontiguousarray(mask[ys[:, None], xs[None, :]], dtype=np.uint8)


def source_box(h: int, w: int, size: int) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) in source pixels of the window the size x size crop shows: Pillow's resize(box=...)
    with it reproduces the conversion's geometry for an RGB baseline that decodes the originals."""
    short = min(h, w)
    scale = short / size  # source pixels per output pixel
    (nh, nw) = resized_shape(h, w, size)
    y0 = (h - nh * scale) / 2 + crop_start(nh, size) * scale
    x0 = (w - nw * scale) / 2 + crop_start(nw, size) * scale
    return x0, y0, x0 + size * scale, y0 + size * scale


def load_mask(path: str, size: int | None, image_hw: tuple[int, int] | None = None,
              num_classes: int | None = None) -> np.ndarray:
    """A class-index mask file -> (size, size) uint8 (or its own size when size is None).

    Checked before it is resized, with latentstore.data.voc.check_mask's rules: its (H, W) must be the
    image's `image_hw` when given, and its labels < num_classes (or 255, ignore) when num_classes is given.
    BadImageError(path: reason) otherwise, which conversion records as a reject of the image."""
    mask = decode_mask(read_bounded(path), path)
    why = check_mask(mask, tuple(image_hw) if image_hw is not None else mask.shape,
                     num_classes if num_classes else IGNORE_LABEL + 1)
    if why:
        raise BadImageError(f"{path}: {why}")
    return fit_mask(mask, size) if size else mask
