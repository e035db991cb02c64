"""A small real dataset (class-folder JPEGs and PNGs from the photo packages, plus bad files) and stores made from it."""
import os
import shutil

import numpy as np
from PIL import Image

from latentstore.convert.pipeline import ConvertOptions, convert
from latentstore.data.imageio import load_image
from latentstore.data.photos import resize_shorter, skimage_photo_path
from tests.badfiles import make_bad_files

PHOTOS = {"cats": ["chelsea", "coffee", "rocket"], "space": ["astronaut", "hubble_deep_field", "retina", "immunohistochemistry"]}


def make_tree(root: str, with_bad: bool = True) -> str:
    """SRC/<class>/<image>: real photos, downscaled, as JPEG and PNG, two crops each."""
    for cls, names in PHOTOS.items():
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        for n in names:
            rgb = resize_shorter(load_image(skimage_photo_path(n)), 72)
            Image.fromarray(rgb[:64, :80]).save(os.path.join(root, cls, f"{n}_a.jpg"), quality=92)
            Image.fromarray(rgb[-48:, -56:]).save(os.path.join(root, cls, f"{n}_b.png"))
    os.makedirs(os.path.join(root, "nothing_here"), exist_ok=True)
    if with_bad:
        bad = make_bad_files(os.path.join(root, "_bad_tmp"))
        for name in ("truncated.jpg", "not_an_image.jpg", "empty.png", "tiny_3x3.png", "cmyk.jpg", "rgba.png",
                     "sixteen_bit.png", "exif_rotated.jpg", "huge.png", "palette.png", "grey.jpg"):
            shutil.copy(bad[name][0], os.path.join(root, "space", f"x_{name}"))
        shutil.rmtree(os.path.join(root, "_bad_tmp"))
    return root


def make_store(src: str, dst: str, codec: str, fmt: str = "zarr", size=32, shard_size: int = 4, **kw):
    return convert(src, dst, ConvertOptions(codec=codec, fmt=fmt, size=size, shard_size=shard_size, batch_size=4,
                                            progress=False, coder_threads=2, **kw))


def make_stores(root, codec: str, specs: dict) -> dict:
    """One tree of real photos (no bad files) at ROOT/src and a store per spec: {key: (folder, make_store kwargs)}
    -> {key: path, "src": the tree}; the module fixtures of the store tests share it."""
    src = make_tree(os.path.join(str(root), "src"), with_bad=False)
    out = {"src": src}
    for key, (folder, kw) in specs.items():
        out[key] = os.path.join(str(root), folder)
        make_store(src, out[key], codec, **kw)
    return out
