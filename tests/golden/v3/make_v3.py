"""Makes the v3 (`latentstore.rans3`) golden payloads ONCE. Never rerun it to "fix" a failing golden test: a
failure means a format change, which needs a new coder id and a reader for the old one.

    python tests/golden/v3/make_v3.py   # writes into tests/golden/v3/

An irregular shape (35 rows over 3 lanes: lanes start mid-channel), correlated symbols at L = 6, tables fitted
on them; a second payload at L = 3 with the default lane count. And a complete v3 bitstream of the golden image
by the golden codec (golden-c4, made before v3: its v3 tables are v2's spread over the new contexts).
"""
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(HERE))))

from latentstore.codec.entropy import rans_v3  # noqa: E402
from latentstore.codec.entropy.rans3_reference import encode_reference  # noqa: E402


def correlated(rng, shape, L):
    s = rng.integers(0, L, shape)
    for axis in (1, 2):
        s = np.where(rng.random(shape) < 0.4, np.roll(s, 1, axis=axis), s)
    return s.astype(np.uint8)


def main():
    rng = np.random.default_rng(29)
    for name, shape, L, lanes in (("a", (5, 7, 9), 6, 3), ("b", (4, 6, 10), 3, None)):
        s = correlated(rng, shape, L)
        tables = rans_v3.fit_tables(s[None], L)
        np.save(os.path.join(HERE, f"{name}_symbols.npy"), s)
        np.save(os.path.join(HERE, f"{name}_tables.npy"), tables)
        open(os.path.join(HERE, f"{name}.rans3"), "wb").write(encode_reference(s, tables, lanes))
    from PIL import Image

    from latentstore.codec.api import compress, image_symbols
    from latentstore.codec.zoo import load_codec_file
    codec = load_codec_file(os.path.join(os.path.dirname(HERE), "golden-c4.safetensors"))
    img = np.asarray(Image.open(os.path.join(os.path.dirname(HERE), "image.png")).convert("RGB"))
    open(os.path.join(HERE, "image.lsb"), "wb").write(compress(img, codec, "latentstore.rans3"))
    np.save(os.path.join(HERE, "image_symbols.npy"), image_symbols(codec, img))


if __name__ == "__main__":
    main()
