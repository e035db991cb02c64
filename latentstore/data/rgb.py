"""RGB inputs for the baselines: in-memory image arrays, and folders of files decoded with Pillow.

The folder dataset does what users do today (decode the file, RandomResizedCrop, flip) and is
what the loader benchmark compares the latent stores against. No torchvision on CPU here, so
RandomResizedCrop is written out (Inception-style: area 8%-100%, aspect 3/4-4/3).
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def random_resized_crop_box(w: int, h: int, rng: np.random.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    area = w * h
    for _ in range(10):
        a = area * rng.uniform(*scale)
        r = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = int(round(math.sqrt(a * r))), int(round(math.sqrt(a / r)))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            return x, y, x + cw, y + ch
    s = min(w, h)  # fall back to a centre crop
    return (w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s


def to_input(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float, ImageNet-normalised."""
    x = (rgb.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def to_unit(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float in [0, 1]: what a codec takes."""
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float() / 255.0


class ImageFolderDataset(Dataset):
    """SRC/<class>/<image> decoded with Pillow; train: RandomResizedCrop(size) + flip; eval: resize + centre crop."""

    def __init__(self, root: str, size: int = 224, train: bool = True, seed: int = 0, normalize: bool = True):
        from ..convert.sources import list_inputs
        listing = list_inputs(root)
        self.items, self.label_names = listing.items, listing.label_names
        self.size, self.train, self.seed = size, train, seed
        self.convert = to_input if normalize else to_unit

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key) -> dict:
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        it = self.items[i]
        im = Image.open(it.ref).convert("RGB")
        rng = np.random.default_rng([self.seed, epoch, i, 2])
        if self.train:
            box = random_resized_crop_box(im.width, im.height, rng)
            im = im.resize((self.size, self.size), Image.Resampling.BILINEAR, box=box)
            if rng.random() < 0.5:
                im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        else:
            s = self.size / min(im.size)
            im = im.resize((max(self.size, round(im.width * s)), max(self.size, round(im.height * s))), Image.Resampling.BILINEAR)
            x, y = (im.width - self.size) // 2, (im.height - self.size) // 2
            im = im.crop((x, y, x + self.size, y + self.size))
        return {"image": self.convert(np.asarray(im)), "label": it.label, "index": i}


class ArrayImageDataset(Dataset):
    """In-memory (N, H, W, 3) uint8 images with labels; train adds a horizontal flip.
    normalize=True gives ImageNet-normalised floats (a ResNet's input), False floats in [0, 1] (a codec's)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, train: bool = True, seed: int = 0,
                 normalize: bool = True):
        self.images, self.labels, self.train, self.seed = images, np.asarray(labels), train, seed
        self.convert = to_input if normalize else to_unit

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key) -> dict:
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        img = self.images[i]
        if self.train and np.random.default_rng([self.seed, epoch, i, 3]).random() < 0.5:
            img = img[:, ::-1]
        return {"image": self.convert(img), "label": int(self.labels[i]), "index": int(i)}
