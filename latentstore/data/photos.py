"""Real photographs that install offline, with the fixed train/validation split of the codecs.

Sources: scikit-image's bundled colour photos, scikit-learn's sample images, matplotlib's sample
photo, Debian's mate-backgrounds and plasma-workspace-wallpapers (photos only) and opencv-doc's
sample photos. Debian packages may be absent (CI installs none); missing sources are skipped and
`available_photos` says which were found.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

from .imageio import load_image

MATE = "/usr/share/backgrounds/mate/nature"
PLASMA = "/usr/share/wallpapers"
OPENCV = "/usr/share/doc/opencv-doc/examples/data"

PLASMA_PHOTOS = ["BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey",
                 "Kite", "OneStandsOut", "Path", "summer_1am"]
MATE_PHOTOS = ["Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops", "Storm",
               "TwoWings", "Wood", "YellowFlower"]
OPENCV_PHOTOS = ["aero1", "aero3", "apple", "baboon", "building", "butterfly", "fruits", "home", "messi5", "orange",
                 "HappyFish", "graf1", "leuvenA", "leuvenB", "aloeL", "starry_night", "squirrel_cls", "stuff"]
SKIMAGE_PHOTOS = ["astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry", "retina", "rocket"]

# The fixed validation split: never used for training, used by `codecs --json`, `eval rd` and the demo.
VALIDATION = {"skimage:coffee", "skimage:rocket", "sklearn:flower", "matplotlib:grace_hopper",
              "mate:Garden", "mate:Storm", "plasma:Kite", "plasma:Path",
              "opencv:fruits", "opencv:baboon", "opencv:home", "opencv:butterfly"}


@dataclass(frozen=True)
class Photo:
    name: str  # "source:id", e.g. "skimage:astronaut"
    load: Callable[[], np.ndarray]  # -> (H, W, 3) uint8
    path: str | None = None  # the file on disk, when there is one (JPEG comparisons use the pixels, not this)

    @property
    def split(self) -> str:
        return "val" if self.name in VALIDATION else "train"


SKIMAGE_FILES = {"astronaut": "astronaut.png", "chelsea": "chelsea.png", "coffee": "coffee.png",
                 "hubble_deep_field": "hubble_deep_field.jpg", "immunohistochemistry": "ihc.png",
                 "retina": "retina.jpg", "rocket": "rocket.jpg"}


def skimage_photo_path(n: str) -> str:
    import skimage.data
    return os.path.join(os.path.dirname(skimage.data.__file__), SKIMAGE_FILES[n])


def _sklearn(i):
    def load():
        from sklearn.datasets import load_sample_images
        return np.ascontiguousarray(load_sample_images().images[i])
    return load


def _plasma_file(n: str) -> str | None:
    d = os.path.join(PLASMA, n, "contents", "images")
    if not os.path.isdir(d):
        return None
    files = sorted(os.listdir(d), key=lambda f: int(f.split("x")[0]) if f.split("x")[0].isdigit() else 0)
    # 1920-wide where there is one: larger versions are upsampled-looking and slow to load
    pick = [f for f in files if f.startswith("1920x1080")] or files[-1:]
    return os.path.join(d, pick[0]) if pick else None


def all_photos() -> list[Photo]:
    photos: list[Photo] = []
    try:
        import skimage  # noqa: F401
        for n in SKIMAGE_PHOTOS:
            p = skimage_photo_path(n)
            if os.path.exists(p):
                photos.append(Photo(f"skimage:{n}", lambda p=p: load_image(p), p))
    except ImportError:
        pass
    try:
        import sklearn  # noqa: F401
        photos += [Photo("sklearn:china", _sklearn(0)), Photo("sklearn:flower", _sklearn(1))]
    except ImportError:
        pass
    import matplotlib
    mpl = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    if os.path.exists(mpl):
        photos.append(Photo("matplotlib:grace_hopper", lambda p=mpl: load_image(p), mpl))
    for n in MATE_PHOTOS:
        p = os.path.join(MATE, n + ".jpg")
        if os.path.exists(p):
            photos.append(Photo(f"mate:{n}", lambda p=p: load_image(p), p))
    for n in PLASMA_PHOTOS:
        p = _plasma_file(n)
        if p:
            photos.append(Photo(f"plasma:{n}", lambda p=p: load_image(p), p))
    for n in OPENCV_PHOTOS:
        p = os.path.join(OPENCV, n + ".jpg")
        if os.path.exists(p):
            photos.append(Photo(f"opencv:{n}", lambda p=p: load_image(p), p))
    return photos


def available_photos(split: str | None = None) -> list[Photo]:
    return [p for p in all_photos() if split is None or p.split == split]


def resize_shorter(rgb: np.ndarray, side: int) -> np.ndarray:
    """Downscale so the shorter side is at most `side` (never upscales)."""
    h, w = rgb.shape[:2]
    s = side / min(h, w)
    if s >= 1:
        return rgb
    size = (max(8, round(w * s)), max(8, round(h * s)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
