"""The Python API's data side: `convert` (a folder of images -> a store) and `LatentDataset` (a store as a
torchvision-style Dataset). Thin wrappers: the work is done by convert.pipeline and data.datasets.

    import latentstore as ls
    ls.convert("photos/", "photos.zarr", codec="ls-c16", size=256)
    ds = ls.LatentDataset("photos.zarr", transform=None)
    latent, label = ds[0]          # (C, S/8, S/8) float32 tensor, int
"""
from __future__ import annotations

import dataclasses

import numpy as np
from torch.utils.data import Dataset

from ..errors import UsageError
from .datasets import LatentMapDataset


def convert(src: str, dst: str, **options):
    """Convert an image dataset SRC (class folders, a flat folder, a list file or WebDataset tars) into a
    latent store DST, as `latentstore convert` does; returns the ConvertSummary (`.describe()` prints it).

    Options are ConvertOptions' fields (latentstore/convert/pipeline.py), with the CLI's spellings also
    accepted: codec="ls-c16", format="zarr" | "wds", size=256 (a multiple of 8) or native=True (every
    image at its own size), device="auto", batch_size=32, shard_size=256, resume=False,
    num_shards=1, shard_id=0, coder_threads=4, progress=True, max_shards=0."""
    from ..convert.pipeline import ConvertOptions, convert as _convert
    fields = {f.name for f in dataclasses.fields(ConvertOptions)}
    opts = dict(options)
    if "format" in opts:
        opts["fmt"] = opts.pop("format")
    if opts.pop("native", False):
        opts["size"] = None
    unknown = sorted(set(opts) - fields)
    if unknown:
        names = ", ".join(sorted((fields - {"fmt"}) | {"format", "native"}))
        raise UsageError(f"convert() got unknown option(s) {', '.join(unknown)} (known: {names})")
    return _convert(str(src), str(dst), ConvertOptions(**opts))


class LatentDataset(Dataset):
    """A latent store as a map-style Dataset: `ds[i] -> (latent, label)`, like torchvision's datasets.

    store:            path of a store (Zarr or WebDataset, any codec)
    output:           'float' (the dequantized latent, (C, h, w) float32) or 'symbols' ((C, h, w) uint8
                      symbol indices: 4x fewer bytes through the DataLoader; `ds.centres[symbols]`, or
                      latentstore.data.datasets.dequantize_on on the GPU, turns them into floats)
    train, crop, flip: the latent-space augmentation of LatentMapDataset: with train=True a random
                      `crop` x `crop` window and a random horizontal flip, seeded by (seed, epoch, index)
                      so runs repeat; with train=False a centre crop (crop=None: the whole latent)
    transform:        applied to the latent tensor (after the crop/flip); target_transform: to the label

    A native-size store has one shape per image: batch it with a crop, or batch_size=1.
    Index with an int, or with (index, epoch) from data.datasets.EpochSampler (new augmentation per epoch).
    Every read is checked: a sample whose bytes fail their checksum, or whose rANS lanes do not decode exactly,
    raises latentstore.store.backends.CorruptSampleError (a StoreError), one line naming the store, shard and
    sample; it is never returned as data.
    """

    def __init__(self, store: str, output: str = "float", train: bool = False, crop: int | None = None,
                 flip: bool = True, transform=None, target_transform=None, seed: int = 0):
        if output not in ("float", "symbols"):
            raise UsageError(f"output must be 'float' or 'symbols' (got {output!r})")
        if crop is not None and crop < 1:
            raise UsageError(f"crop must be a positive number of latent cells, or None (got {crop})")
        self.path = str(store)
        self.output = output
        self.transform, self.target_transform = transform, target_transform
        self._ds = LatentMapDataset(self.path, train=train, crop=crop, output=output, seed=seed, flip=flip)

    @property
    def store(self):
        """The underlying LatentStore (schema, codec, decode_rgb, ...)."""
        return self._ds.store

    @property
    def classes(self) -> list[str]:
        """Label names, index = label (torchvision's `classes`)."""
        return list(self.store.schema.label_names)

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        """C, the latent channels: a cResNet's input width."""
        return int(self.store.schema.codec["C"])

    @property
    def centres(self) -> np.ndarray:
        """(L,) float32: symbol j means centres[j]."""
        return self.store.centres

    @property
    def targets(self) -> list[int]:
        return [int(v) for v in self.store.labels]

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, key):
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        n = len(self)
        i = int(i)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for a store of {n} samples")
        s = self._ds.sample(i % n, int(epoch))
        latent, label = s["latent"], s["label"]
        if self.transform is not None:
            latent = self.transform(latent)
        if self.target_transform is not None:
            label = self.target_transform(label)
        return latent, label

    def __repr__(self) -> str:
        return (f"LatentDataset({self.path!r}, {len(self)} samples, {self.num_classes} classes, "
                f"C={self.in_channels}, output={self.output!r})")

