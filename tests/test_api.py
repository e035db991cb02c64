"""The Python API: `import latentstore as ls`, light to import; codecs on arrays, PIL images and tensors;
convert; LatentDataset; and the README's Python API snippets, run as they are written."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import latentstore as ls
from latentstore.codec.zoo import available_codecs
from latentstore.errors import UsageError
from tests.store_fixtures import make_tree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_import_is_light_and_names_resolve():
    code = "import sys, latentstore as ls; print(sorted(m for m in ('torch', 'zarr', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"  # nothing heavy until a name is used
    assert {"load_codec", "open_store", "convert", "LatentDataset", "available_codecs", "__version__"} <= set(dir(ls))
    for name in ls.__all__:
        assert getattr(ls, name) is not None
    with pytest.raises(AttributeError):
        ls.no_such_name  # noqa: B018


def test_convert_is_a_function_and_still_the_subpackage():
    import latentstore.convert.pipeline as pipeline  # binds the subpackage on the parent, as imports do
    assert callable(ls.convert) and ls.convert.pipeline is pipeline
    assert ls.convert.pipeline.ConvertOptions is pipeline.ConvertOptions
    with pytest.raises(UsageError, match="unknown option.*colour.*known:.*format"):
        ls.convert("a", "b", colour="red")


def test_codec_compress_takes_arrays_pil_images_and_tensors(codec):
    from latentstore.codec.api import compress, decompress
    from latentstore.data.imageio import load_image
    from latentstore.data.photos import skimage_photo_path
    rgb = np.ascontiguousarray(load_image(skimage_photo_path("coffee"))[:61, :77])
    data = codec.compress(rgb)
    assert isinstance(data, bytes) and data == compress(rgb, codec)
    assert codec.compress(Image.fromarray(rgb)) == data
    back = codec.decompress(data)
    assert back.shape == rgb.shape and back.dtype == np.uint8 and np.array_equal(back, decompress(data, codec))
    grey = rgb[..., 1]
    assert codec.compress(grey) == codec.compress(np.repeat(grey[..., None], 3, axis=2))
    batch = torch.from_numpy(np.stack([rgb, rgb[::-1]])).permute(0, 3, 1, 2).float() / 255  # CompressAI convention
    out = codec.compress(batch)
    assert out["shape"] == rgb.shape[:2] and out["strings"][0] == data
    assert codec.decompress(out["strings"])["x_hat"].shape == (2, 3, *rgb.shape[:2])
    for bad, msg in [(rgb.astype(np.float32), "uint8"), (rgb[..., :2], r"\(H, W, 3\)"), ("photo.jpg", "numpy array")]:
        with pytest.raises(UsageError, match=msg):
            codec.compress(bad)


@pytest.fixture(scope="module")
def store(codec_path, tmp_path_factory):
    d = tmp_path_factory.mktemp("api")
    src = make_tree(str(d / "src"), with_bad=False)
    s = ls.convert(src, str(d / "s.zarr"), codec=codec_path, format="zarr", size=64, shard_size=4, progress=False)
    assert s.stored == 14
    return str(d / "s.zarr")


def test_latent_dataset_is_torchvision_style(store):
    ds = ls.LatentDataset(store)
    assert len(ds) == 14 and ds.classes == ["cats", "nothing_here", "space"] and ds.num_classes == 3
    assert ds.in_channels == 8 and ds.class_to_idx["space"] == 2
    latent, label = ds[0]
    assert latent.dtype == torch.float32 and latent.shape == (8, 8, 8) and isinstance(label, int)
    assert set(np.unique(latent.numpy())) <= set(ds.centres.tolist())  # dequantized: centre values only
    sym, same_label = ls.LatentDataset(store, output="symbols")[0]
    assert sym.dtype == torch.uint8 and same_label == label
    assert torch.equal(torch.from_numpy(ds.centres[sym.numpy()]), latent)
    assert [ds[i][1] for i in range(len(ds))] == ds.targets
    assert torch.equal(ds[-1][0], ds[13][0])
    with pytest.raises(IndexError):
        ds[14]
    assert len(list(iter(ds))) == 14  # the sequence protocol stops at IndexError
    tds = ls.LatentDataset(store, train=True, crop=6, transform=lambda x: x * 2, target_transform=lambda y: y + 10)
    x, y = tds[3]
    assert x.shape == (8, 6, 6) and y == ds[3][1] + 10
    assert torch.equal(tds[3][0], x) and not all(torch.equal(tds[(3, e)][0], x) for e in range(1, 6))  # per-epoch crops
    xb, yb = next(iter(torch.utils.data.DataLoader(ds, batch_size=5)))
    assert xb.shape == (5, 8, 8, 8) and yb.dtype == torch.int64
    with pytest.raises(UsageError):
        ls.LatentDataset(store, output="pixels")


def _readme_python_blocks() -> list[str]:
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text[text.index("## Python API"):]
    section = section[: section.index("\n## ", 5)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_training_loop_is_ten_lines():
    blocks = _readme_python_blocks()
    assert len(blocks) == 2
    loop = [line for line in blocks[1].splitlines() if line.strip()]
    assert len(loop) <= 11 and any("LatentDataset" in line for line in loop) and any("backward" in line for line in loop)


@pytest.mark.skipif("ls-c16" not in available_codecs(), reason="the README uses the shipped ls-c16")
def test_readme_python_api_snippets_run(tmp_path, monkeypatch):
    """Both snippets, verbatim, in a folder holding what they name: photo.jpg and a photos/ class tree."""
    from latentstore.data.imageio import load_image
    from latentstore.data.photos import resize_shorter, skimage_photo_path
    make_tree(str(tmp_path / "photos"), with_bad=False)
    Image.fromarray(resize_shorter(load_image(skimage_photo_path("coffee")), 120)).save(tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    for block in _readme_python_blocks():
        exec(compile(block, "README.md", "exec"), ns)  # noqa: S102 - the point is to run the documentation
    assert ns["rgb"].shape == (120, 180, 3) and isinstance(ns["data"], bytes)
    assert ns["summary"].stored == 14 and len(ns["store"]) == 14
    assert np.isfinite(ns["loss"].item()) and ns["epoch"] == 4
