"""Segmentation inputs in pixels (reconstructions, originals), with the latents' crop and flip policy.

Latent stores with masks need nothing new: `LatentMapDataset` yields `latent` + `mask`, and its
`LatentAugment` crops the mask at 8x the latent crop and flips both. The pixel inputs here run the
*same* `LatentAugment` with the same draws (seed, epoch, index): a crop of c latent
cells is a crop of 8c pixels at a multiple of 8, and sample i of epoch e gets the same crop and flip
whether a run reads its latents, its reconstruction or its original. So the three runs of a
comparison see the same views of the same scenes, and differ only in what they read.

- `ArrayPairs`: in-memory (N, S, S, 3) images and (N, S, S) masks (a store decoded to RGB, its masks).
- `VocPairs`: a VOC-layout root read from its files, brought to S x S with the conversion's geometry
  (shorter side to S, centre crop; the image antialiased bilinear, the mask nearest) so RGB runs see
  the pixels a conversion encodes. A pair whose mask does not fit its image is left out and recorded
  in `rejects`, as conversion records it.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..convert.masks import fit_mask, source_box
from ..errors import BadImageError
from .datasets import LatentAugment
from .imageio import load_image
from .rgb import to_input
from .voc import check_mask, list_voc, read_mask, voc_class_names


def fit_image(rgb: np.ndarray, size: int) -> np.ndarray:
    """(h, w, 3) uint8 -> (size, size, 3) uint8 with the conversion's geometry (antialiased bilinear)."""
    h, w = rgb.shape[:2]
    if (h, w) == (size, size):
        return rgb
    box = source_box(h, w, size)
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR, box=box))


class ArrayPairs:
    """Images and masks already at S x S, in memory."""

    def __init__(self, images: np.ndarray, masks: np.ndarray):
        if len(images) != len(masks) or images.shape[1:3] != masks.shape[1:3]:
            raise ValueError(f"images {images.shape} and masks {masks.shape} do not pair up")
        self.images, self.masks = images, masks

    def __len__(self) -> int:
        return len(self.images)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.images[i], self.masks[i]


class VocPairs:
    """A split of a VOC-layout root, each pair brought to size x size when read."""

    def __init__(self, root: str, split: str, size: int):
        if size < 8 or size % 8:
            raise ValueError(f"size {size}: needs a positive multiple of 8 (one latent cell)")
        self.size = size
        self.class_names = voc_class_names(root)
        self.pairs, self.rejects = [], []
        for img, msk in list_voc(root, split):  # one line for a missing root, split file or listed file
            try:
                with Image.open(img) as im:  # the header only: the size, not the pixels
                    w, h = im.size
                why = check_mask(read_mask(msk), (h, w), len(self.class_names))
            except (OSError, BadImageError) as e:
                why = str(e)
            if why:
                self.rejects.append({"path": img, "reason": f"bad mask ({msk}: {why})"})
            else:
                self.pairs.append((img, msk))
        if not self.pairs:
            raise BadImageError(f"{root} ({split}): no usable image/mask pair"
                                + (f", first reject {self.rejects[0]['reason']}" if self.rejects else ""))

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        img, msk = self.pairs[i]
        return fit_image(load_image(img), self.size), fit_mask(read_mask(msk), self.size)


class PixelSegDataset(Dataset):
    """{"image": (3, s, s) normalised float, "mask": (s, s) uint8, "label": -1, "index": i}; index with an int
    or (index, epoch) from EpochSampler. crop: in latent cells (8 px each), as for LatentMapDataset."""

    def __init__(self, pairs, train: bool = True, crop: int | None = None, seed: int = 0, flip: bool = True):
        self.pairs, self.seed = pairs, seed
        self.augment = LatentAugment(crop, train, flip)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key) -> dict:
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        i, epoch = int(i), int(epoch)
        rgb, mask = self.pairs.load(i)
        s = rgb.shape[0]
        # image and mask as one (S, S, 4) array through the latents' augmentation: one crop and flip for both,
        # drawn exactly as LatentMapDataset draws them for sample i (the empty (0, S/8, S/8) stands in for it)
        both = np.concatenate([rgb, mask[..., None]], axis=-1)
        p = self.augment.params(s // 8, s // 8, self.seed, epoch, [i])[0]
        _, both = self.augment.apply(np.empty((0, s // 8, s // 8), np.uint8), both, p)
        return {"image": to_input(both[..., :3]), "mask": torch.from_numpy(np.ascontiguousarray(both[..., 3])),
                "label": -1, "index": i}
