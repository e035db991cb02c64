"""An offline segmentation set with real pixel labels, in VOC layout: Fashion-MNIST items pasted onto photos.

Each scene is a random square crop of an offline photo (data/photos.py) with 2-5 Fashion-MNIST items
pasted on it, each scaled, tinted and placed at random. Pixels of an item (its grey value above a
threshold) are labelled with its class, 1..10; everything else is background, 0. Later items occlude
earlier ones, label included. Train scenes use the photos' train split and Fashion-MNIST's train
items; val scenes the photos' validation split and Fashion-MNIST's test items, so no background or
item is shared across splits. (With only the Python packages' photos, as in CI, the val split has 4
photos: val backgrounds repeat a lot; the Debian photo packages raise that to 12.)

Deterministic from the seed: scene i of a split is drawn from its own generator, seeded by
(seed, split, i), so the same seed writes identical files whatever the order or the counts, given the
same installed photos (which photo packages are present changes the pool; scenes.json lists it).
"""
from __future__ import annotations

import colorsys
import json
import os
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from ..errors import UsageError
from .fashion_mnist import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, read_idx
from .voc import write_palette_png

SPLIT_IDS = {"train": 0, "val": 1}  # the split's word in each scene's seed


@dataclass
class ScenesConfig:
    size: int = 256  # scene side in pixels (square)
    seed: int = 0  # everything is drawn from this
    min_items: int = 2  # fewest items per scene
    max_items: int = 5  # most items per scene
    item_min_frac: float = 48 / 256  # smallest item side as a fraction of the scene side (48 px at 256)
    item_max_frac: float = 128 / 256  # largest item side as a fraction of the scene side (128 px at 256)
    threshold: int = 16  # item pixels (labelled, opaque) are those whose 0..255 grey value exceeds this
    # (low, so dark patches inside an item, patterned shirts or sandal straps, stay the item, not holes)
    crop_min_frac: float = 0.5  # the background crop's side as a fraction of the photo's shorter side (up to 1)
    jpeg_quality: int = 90  # JPEGImages/*.jpg, as VOC's photos are JPEGs


@dataclass
class ItemSet:
    """The items pasted into scenes: grey 0..255 images (object bright on black) and 0-based class labels."""
    images: np.ndarray  # (N, h, w) uint8
    labels: np.ndarray  # (N,) int, 0 .. len(class_names) - 1; the scene label is label + 1
    class_names: list  # one name per class, without background


def fashion_items(split: str, root: str = FASHION_MNIST_DIR) -> ItemSet:
    """Fashion-MNIST's train ("train") or test ("val") split as an ItemSet; UsageError with the apt hint if absent."""
    prefix = "train" if split == "train" else "t10k"
    files = [os.path.join(root, f"{prefix}-{k}-idx{n}-ubyte.gz") for k, n in (("images", 3), ("labels", 1))]
    if not all(os.path.exists(f) for f in files):
        raise UsageError(f"{files[0]} not found: Fashion-MNIST is needed for the scenes "
                         f"(apt-get update && apt-get install -y dataset-fashion-mnist)")
    return ItemSet(read_idx(files[0]), read_idx(files[1]).astype(np.int64), list(FASHION_MNIST_CLASSES))


class PhotoBackgrounds:
    """The offline photos of a split as a sequence of (name, rgb), each loaded on first use (a small run
    touches a few of them) and shrunk so its shorter side is at most max_side (a big run keeps them all)."""

    def __init__(self, split: str, max_side: int):
        from .photos import available_photos
        self.photos = available_photos(split)
        if not self.photos:
            raise UsageError(f"no offline photos in the {split} split (pip install scikit-image scikit-learn)")
        self.max_side = max_side
        self.cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.photos)

    def __getitem__(self, i: int) -> tuple[str, np.ndarray]:
        from .photos import resize_shorter
        if i not in self.cache:
            self.cache[i] = resize_shorter(self.photos[i].load(), self.max_side)
        return self.photos[i].name, self.cache[i]

    def names(self) -> list[str]:
        return [p.name for p in self.photos]


def _tint(rng: np.random.Generator) -> np.ndarray:
    """A saturated, fairly bright random colour, so items stand out from most backgrounds but not all."""
    return np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.5, 1.0), rng.uniform(0.6, 1.0)), np.float32)


def make_scene(rng: np.random.Generator, backgrounds: list, items: ItemSet,
               cfg: ScenesConfig) -> tuple[np.ndarray, np.ndarray, dict]:
    """One scene: (rgb (S, S, 3) uint8, label (S, S) uint8, a record of what went where)."""
    S = cfg.size
    name, photo = backgrounds[int(rng.integers(len(backgrounds)))]
    h, w = photo.shape[:2]
    side = int(rng.integers(max(8, round(cfg.crop_min_frac * min(h, w))), min(h, w) + 1))
    y0, x0 = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
    crop = Image.fromarray(photo[y0: y0 + side, x0: x0 + side]).resize((S, S), Image.Resampling.BILINEAR)
    rgb = np.asarray(crop, np.float32)
    if rng.random() < 0.5:
        rgb = rgb[:, ::-1]
    label = np.zeros((S, S), np.uint8)
    record = {"photo": name, "crop": [x0, y0, side], "items": []}
    lo, hi = max(4, round(cfg.item_min_frac * S)), max(4, round(cfg.item_max_frac * S))
    for _ in range(int(rng.integers(cfg.min_items, cfg.max_items + 1))):
        k = int(rng.integers(len(items.labels)))
        n = int(rng.integers(lo, hi + 1))
        grey = np.asarray(Image.fromarray(items.images[k]).resize((n, n), Image.Resampling.BILINEAR), np.float32)
        y, x = int(rng.integers(S - n + 1)), int(rng.integers(S - n + 1))
        tint = _tint(rng)
        # opaque where labelled (grey > threshold), fading out below it; the item's own shading is kept
        alpha = np.clip(grey / cfg.threshold, 0, 1)[..., None]
        colour = 255 * tint * (0.35 + 0.65 * grey[..., None] / 255)
        patch = rgb[y: y + n, x: x + n]
        rgb[y: y + n, x: x + n] = (1 - alpha) * patch + alpha * colour
        label[y: y + n, x: x + n][grey > cfg.threshold] = int(items.labels[k]) + 1
        record["items"].append({"index": k, "class": int(items.labels[k]) + 1, "box": [x, y, n]})
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8), label, record


def make_scenes(out: str, n_train: int, n_val: int, size: int = 256, seed: int = 0, *,
                cfg: ScenesConfig | None = None, items: dict | None = None, backgrounds: dict | None = None,
                overwrite: bool = False, progress: bool = True) -> dict:
    """Write the scenes in VOC layout under `out`; returns the scenes.json record.

    cfg: every knob (its size and seed then replace the arguments'). items / backgrounds: {"train": ...,
    "val": ...} to inject an ItemSet / [(name, rgb)] per split (tests, other item sets); default
    Fashion-MNIST and the offline photos."""
    cfg = cfg or ScenesConfig(size=size, seed=seed)
    if cfg.size < 32 or cfg.size % 8:
        raise UsageError(f"scene size {cfg.size}: needs a multiple of 8 (one latent cell), at least 32")
    if n_train < 0 or n_val < 0 or n_train + n_val == 0:
        raise UsageError(f"asked for {n_train} train and {n_val} val scenes")
    if not 1 <= cfg.min_items <= cfg.max_items:
        raise UsageError(f"items per scene {cfg.min_items}..{cfg.max_items}: not a range")
    if os.path.isdir(out) and os.listdir(out):
        if not (overwrite and os.path.exists(os.path.join(out, "scenes.json"))):
            raise UsageError(f"{out}: not empty (pass overwrite to regenerate a scenes directory)")
        import shutil
        for d in ("JPEGImages", "SegmentationClass", "ImageSets"):  # only what a previous run wrote
            shutil.rmtree(os.path.join(out, d), ignore_errors=True)
        os.remove(os.path.join(out, "scenes.json"))
    counts = {"train": n_train, "val": n_val}
    item_sets = {s: (items or {}).get(s) or fashion_items(s) for s in counts if counts[s]}
    # photos shrunk to 2x the scene side: crops keep real detail, and 50 wallpapers fit in ~100 MB
    bgs = {s: (backgrounds or {}).get(s) or PhotoBackgrounds(s, 2 * cfg.size) for s in counts if counts[s]}
    for d in ("JPEGImages", "SegmentationClass", os.path.join("ImageSets", "Segmentation")):
        os.makedirs(os.path.join(out, d), exist_ok=True)
    bar = None
    if progress and n_train + n_val >= 100:
        from tqdm import tqdm
        bar = tqdm(total=n_train + n_val, desc="scenes", unit="img")
    names = next(iter(item_sets.values())).class_names if item_sets else list(FASHION_MNIST_CLASSES)
    class_hist = {s: [0] * (1 + len(names)) for s in counts}
    ids = {}
    for split, n in counts.items():
        ids[split] = [f"{split}_{i:06d}" for i in range(n)]
        for i, sid in enumerate(ids[split]):
            rng = np.random.default_rng([cfg.seed, SPLIT_IDS[split], i])
            rgb, label, _ = make_scene(rng, bgs[split], item_sets[split], cfg)
            Image.fromarray(rgb).save(os.path.join(out, "JPEGImages", sid + ".jpg"), quality=cfg.jpeg_quality)
            write_palette_png(label, os.path.join(out, "SegmentationClass", sid + ".png"))
            for c in np.unique(label):
                class_hist[split][int(c)] += 1
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    sets = os.path.join(out, "ImageSets", "Segmentation")
    for name, lst in (("train", ids["train"]), ("val", ids["val"]), ("trainval", ids["train"] + ids["val"])):
        with open(os.path.join(sets, name + ".txt"), "w") as f:
            f.write("".join(i + "\n" for i in lst))
    record = {"generator": "latentstore scenes", "config": asdict(cfg), "counts": counts,
              "class_names": ["background"] + list(names), "num_classes": 1 + len(names), "ignore_label": 255,
              "photos": {s: b.names() if isinstance(b, PhotoBackgrounds) else [n for n, _ in b]
                         for s, b in bgs.items()},
              "images_with_class": class_hist}  # per split: how many scenes hold each class
    with open(os.path.join(out, "scenes.json.tmp"), "w") as f:
        json.dump(record, f, indent=1)
    os.replace(os.path.join(out, "scenes.json.tmp"), os.path.join(out, "scenes.json"))  # written last: done
    return record
