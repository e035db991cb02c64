"""Stores with unlabelled samples (uploads sent without a label): training skips them with a count; a store with
no label at all is refused in one line (issue #30; it used to end in an internal IndexError)."""
import os

import numpy as np
import pytest
from click.testing import CliRunner

from latentstore.cli import main
from latentstore.store import open_store
from tests.store_fixtures import make_store, make_tree

ARGS = ["--model", "cresnet39", "--width", "8", "--depth-scale", "0.3", "--batch-size", "4", "--epochs", "1",
        "--num-workers", "0", "--crop", "6", "--quiet"]


@pytest.fixture(scope="module")
def stores(codec_path, tmp_path_factory):
    d = tmp_path_factory.mktemp("unl")
    src = make_tree(str(d / "src"), with_bad=False)
    files = sorted(os.path.join(r, f) for r, _, fs in os.walk(src) for f in fs)
    # half with a label, half without: what a service store holds after mixed uploads
    with open(d / "mixed.txt", "w") as f:
        f.writelines(f"{p} {i % 2}\n" if i % 2 == 0 else f"{p}\n" for i, p in enumerate(files))
    with open(d / "none.txt", "w") as f:
        f.writelines(f"{p}\n" for p in files)
    out = {}
    for name in ("mixed", "none"):
        make_store(str(d / f"{name}.txt"), str(d / f"{name}.zarr"), codec_path, size=64)
        out[name] = str(d / f"{name}.zarr")
    return out


def test_unlabelled_samples_are_skipped_with_a_count(stores, tmp_path):
    labels = np.asarray(open_store(stores["mixed"]).labels)
    assert (labels == -1).any() and (labels >= 0).any()  # the fixture is what it says
    res = CliRunner().invoke(main, ["train", "classify", "--out", str(tmp_path / "r"), "--train", stores["mixed"],
                                    "--val", stores["mixed"], *ARGS])
    assert res.exit_code == 0, res.output
    n = int((labels == -1).sum())
    assert f"{n} of {len(labels)} samples have no label and are skipped" in res.output
    import json
    cfg = json.load(open(tmp_path / "r" / "config.json"))
    assert cfg["train_unlabelled"] == n


def test_a_store_without_labels_is_refused_in_one_line(stores, tmp_path):
    res = CliRunner().invoke(main, ["train", "classify", "--out", str(tmp_path / "r"), "--train", stores["none"],
                                    "--val", stores["none"], *ARGS])
    assert res.exit_code == 2 and "no labelled samples" in res.output, res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
