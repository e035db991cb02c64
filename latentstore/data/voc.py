"""PASCAL VOC 2012 segmentation, laid out as a user who downloaded it has it.

    VOC2012/JPEGImages/<id>.jpg
    VOC2012/SegmentationClass/<id>.png        palette PNGs: the pixel values are the class ids
    VOC2012/SegmentationClassAug/<id>.png     (optional) SBD's extra masks, greyscale
    VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt   one id per line
    VOC2012/ImageSets/Segmentation/train_aug.txt              (optional) the 10,582-image SBD list

Labels: 0 background, 1..20 the objects, 255 "void" (object borders, ignored by the loss and the metric).
Split files may also hold DeepLab's two-column form, "/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png".
"""
from __future__ import annotations

import io
import json
import os

import numpy as np
from PIL import Image

from ..errors import BadImageError, UsageError
from .imageio import clean_reason, load_image

IGNORE_LABEL = 255
VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor"]


def _voc_palette() -> np.ndarray:
    """The standard 256-colour PASCAL palette (VOCdevkit's labelcolormap): bits of the index spread over RGB."""
    pal = np.zeros((256, 3), np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


VOC_PALETTE = _voc_palette()  # (256, 3) uint8; 0 black, 1 (128, 0, 0), ..., 255 (224, 224, 192)

SPLIT_DIR = os.path.join("ImageSets", "Segmentation")
_MASK_DIRS = ("SegmentationClass", "SegmentationClassAug")  # the official masks first, SBD's as the fallback


def is_voc_root(path: str) -> bool:
    """A directory with VOC's JPEGImages/, ImageSets/Segmentation/ and a mask directory."""
    return (os.path.isdir(os.path.join(path, "JPEGImages")) and os.path.isdir(os.path.join(path, SPLIT_DIR))
            and any(os.path.isdir(os.path.join(path, d)) for d in _MASK_DIRS))


def resolve_voc_root(path: str) -> str:
    """The VOC root at or under `path`: VOC2012/ itself, or the VOCdevkit/ (or its parent) the tarball unpacks to."""
    for cand in (path, os.path.join(path, "VOC2012"), os.path.join(path, "VOCdevkit", "VOC2012")):
        if is_voc_root(cand):
            return cand
    if not os.path.isdir(path):
        raise UsageError(f"{path}: no such directory")
    raise UsageError(f"{path}: not a VOC root (needs JPEGImages/, SegmentationClass/ and ImageSets/Segmentation/)")


def voc_class_names(root: str) -> list[str]:
    """The class names of a VOC-layout root: the scenes generator's (scenes.json) when it wrote the root, else
    VOC's 21. Index = the label value in the masks."""
    rec = os.path.join(root, "scenes.json")
    if os.path.isfile(rec):
        try:
            with open(rec) as f:
                names = json.load(f)["class_names"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UsageError(f"{rec}: unreadable scenes record ({e})") from None
        if not (isinstance(names, list) and 1 < len(names) <= IGNORE_LABEL and all(isinstance(n, str) for n in names)):
            raise UsageError(f"{rec}: class_names must be a list of 2..255 names")
        return names
    return list(VOC_CLASSES)


def _split_file(root: str, split: str) -> str:
    if split.endswith(".txt") and os.path.isfile(split):  # a list file given by path
        return split
    f = os.path.join(root, SPLIT_DIR, split if split.endswith(".txt") else split + ".txt")
    if not os.path.isfile(f):
        d = os.path.join(root, SPLIT_DIR)
        have = sorted(n[:-4] for n in os.listdir(d) if n.endswith(".txt")) if os.path.isdir(d) else []
        raise UsageError(f"{f}: split file not found (splits here: {', '.join(have) or 'none'})")
    return f


def list_voc(root: str, split: str) -> list[tuple[str, str]]:
    """[(image_path, mask_path)] of a split: "train", "val", "trainval", "train_aug", or a .txt list's path.

    Raises UsageError (one line) for a missing root or split file, an empty split, or listed files missing."""
    root = resolve_voc_root(root)
    listing = _split_file(root, split)
    pairs, missing = [], []
    with open(listing) as f:
        for line in f:
            parts = line.split()
            if not parts:
                continue
            if len(parts) >= 2:  # DeepLab's form: paths relative to the root, with a leading slash
                img, mask = (os.path.join(root, p.lstrip("/")) for p in parts[:2])
            else:
                img = os.path.join(root, "JPEGImages", parts[0] + ".jpg")
                cands = [os.path.join(root, d, parts[0] + ".png") for d in _MASK_DIRS]
                mask = next((c for c in cands if os.path.isfile(c)), cands[0])
            for p in (img, mask):
                if not os.path.isfile(p):
                    missing.append(os.path.relpath(p, root))
            pairs.append((img, mask))
    if not pairs:
        raise UsageError(f"{listing}: empty split file")
    if missing:
        raise UsageError(f"{listing}: {len(missing)} listed file(s) missing under {root}, first {missing[0]}")
    return pairs


def read_mask(path: str) -> np.ndarray:
    """A class-index mask -> (H, W) uint8. Palette/greyscale PNGs are read as indices (never as colours);
    an RGB mask is mapped back through the VOC palette. BadImageError (one line) otherwise."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BadImageError(f"{path}: unreadable mask ({e.strerror or e})") from None
    return decode_mask(data, path)


def decode_mask(data: bytes, where: str) -> np.ndarray:
    """read_mask on bytes already read (conversion reads them bounded); `where` names the file in errors."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            mode = im.mode
            a = np.asarray(im)
    except Exception as e:
        raise BadImageError(f"{where}: unreadable mask ({clean_reason(str(e).splitlines()[0]) if str(e) else type(e).__name__})") from None
    if mode in ("P", "L"):
        return np.ascontiguousarray(a, dtype=np.uint8)
    if mode in ("I", "I;16", "I;16B", "I;16L"):
        if a.min(initial=0) < 0 or a.max(initial=0) > 255:
            raise BadImageError(f"{where}: 16-bit mask with labels beyond 0..255")
        return a.astype(np.uint8)
    if mode in ("RGB", "RGBA"):
        # a colour-coded mask: each colour must be a VOC palette entry
        code = VOC_PALETTE.astype(np.int32) @ np.array([1 << 16, 1 << 8, 1])
        lut = {int(c): i for i, c in enumerate(code)}
        px = a[..., :3].astype(np.int32) @ np.array([1 << 16, 1 << 8, 1])
        uniq, inv = np.unique(px, return_inverse=True)
        unknown = [int(u) for u in uniq if int(u) not in lut]
        if unknown:
            u = unknown[0]
            raise BadImageError(f"{where}: RGB mask colour ({u >> 16}, {(u >> 8) & 255}, {u & 255}) is not in the "
                                f"VOC palette")
        return np.array([lut[int(u)] for u in uniq], np.uint8)[inv].reshape(px.shape)
    raise BadImageError(f"{where}: mask mode {mode} (expected a palette or greyscale PNG of class ids)")


def check_mask(mask: np.ndarray, image_hw: tuple[int, int], num_classes: int,
               ignore_label: int = IGNORE_LABEL) -> str | None:
    """Why `mask` cannot label an image of `image_hw` = (H, W), or None when it can."""
    if mask.ndim != 2:
        return f"mask has shape {tuple(mask.shape)}; expected (H, W) class ids"
    if tuple(mask.shape) != tuple(image_hw):
        return (f"mask is {mask.shape[1]}x{mask.shape[0]} but its image is {image_hw[1]}x{image_hw[0]} "
                f"(W x H)")
    labels = np.unique(mask)
    bad = [int(v) for v in labels if v >= num_classes and v != ignore_label]
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        return f"label(s) {shown} out of range 0..{num_classes - 1} ({ignore_label} = ignore)"
    return None


def load_voc_sample(image_path: str, mask_path: str,
                    num_classes: int = len(VOC_CLASSES)) -> tuple[np.ndarray, np.ndarray]:
    """(rgb (H, W, 3) uint8, mask (H, W) uint8), checked; BadImageError with the reason (recorded as a reject)."""
    rgb = load_image(image_path)
    mask = read_mask(mask_path)
    why = check_mask(mask, rgb.shape[:2], num_classes)
    if why:
        raise BadImageError(f"{mask_path}: {why}")
    return rgb, mask


def write_palette_png(mask: np.ndarray, path: str) -> None:
    """(H, W) uint8 class ids -> a palette PNG as VOC ships them (values are ids; colours for viewing only)."""
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"expected an (H, W) uint8 mask, got {mask.dtype} {tuple(mask.shape)}")
    im = Image.frombytes("P", (mask.shape[1], mask.shape[0]), np.ascontiguousarray(mask).tobytes())
    im.putpalette(VOC_PALETTE.reshape(-1).tolist())
    im.save(path, optimize=False)
