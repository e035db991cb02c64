"""Real bad and awkward image files, made with Pillow: shared by the CLI and conversion tests."""
import io
import os

import numpy as np
from PIL import Image

from latentstore.data.photos import resize_shorter, skimage_photo_path
from latentstore.data.imageio import load_image


def base_photo(side: int = 64) -> np.ndarray:
    return np.ascontiguousarray(resize_shorter(load_image(skimage_photo_path("chelsea")), side))


def make_bad_files(d: str) -> dict[str, tuple[str, bool]]:
    """name -> (path, should_work). Files that must be refused have should_work=False."""
    os.makedirs(d, exist_ok=True)
    rgb = base_photo()
    out = {}

    def save(name, im, ok, **kw):
        p = os.path.join(d, name)
        im.save(p, **kw)
        out[name] = (p, ok)

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    jpeg = buf.getvalue()
    p = os.path.join(d, "truncated.jpg")
    open(p, "wb").write(jpeg[: len(jpeg) // 2])
    out["truncated.jpg"] = (p, False)
    p = os.path.join(d, "not_an_image.jpg")
    open(p, "w").write("this is a text file with an image extension\n" * 20)
    out["not_an_image.jpg"] = (p, False)
    p = os.path.join(d, "empty.png")
    open(p, "wb").close()
    out["empty.png"] = (p, False)
    save("tiny_3x3.png", Image.fromarray(rgb[:3, :3]), False)
    save("cmyk.jpg", Image.fromarray(rgb).convert("CMYK"), True, format="JPEG")
    save("grey.jpg", Image.fromarray(rgb).convert("L"), True, format="JPEG")
    save("rgba.png", Image.fromarray(rgb).convert("RGBA"), True)
    save("palette.png", Image.fromarray(rgb).convert("P"), True)
    a16 = (rgb[..., 0].astype(np.uint16) * 257)
    save("sixteen_bit.png", Image.fromarray(a16), True)  # uint16 -> mode I;16, saved as a 16-bit PNG
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 CW on display
    save("exif_rotated.jpg", im, True, format="JPEG", exif=exif.tobytes())
    save("huge.png", Image.new("1", (9000, 8000)), False)  # 72 Mpx, over the 64 Mpx limit, tiny on disk
    return out
