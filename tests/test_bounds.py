"""Bounded work for any input (#26): thin images are refused from their header or fitted without a blow-up,
and every metadata read of a store is bounded, refusing special files (FIFOs, links to /dev/zero) in one line."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from latentstore.cli import main
from latentstore.data.imageio import (MAX_ASPECT, MAX_PIXELS, decode_image_bytes, fit_square, resized_size,
                                      size_problem)
from latentstore.errors import BadImageError, StoreError
from latentstore.store import open_store
from latentstore.store.verify import verify
from tests.store_fixtures import make_store, make_stores, make_tree


def _png(path, w, h):
    Image.new("L", (w, h), 128).save(path)  # a flat strip: a few hundred bytes on disk
    return path


# ------------------------------------------------------------------ pixel limits
def test_thin_images_are_refused_from_their_header(tmp_path):
    p = _png(str(tmp_path / "thin.png"), 8, 65535)
    assert os.path.getsize(p) < 2048
    with pytest.raises(BadImageError, match=f"{MAX_ASPECT}:1 aspect-ratio limit"):
        decode_image_bytes(open(p, "rb").read(), p)
    assert size_problem(8, 8 * MAX_ASPECT) is None and "aspect" in size_problem(8, 8 * MAX_ASPECT + 1)
    assert size_problem(65535, 8) is not None  # either way round
    # every resize is held to the pixel limit too: a 1:200 image fitted to a 4096 shorter side
    assert resized_size(100, 20000, 4096)[0] == 4096
    assert "over the" in size_problem(100, 20000, 4096) and size_problem(100, 20000, 256) is None
    assert size_problem(9000, 8000) == f"9000x8000 is over the {MAX_PIXELS:,}-pixel limit"


_RSS = """
import resource, sys, numpy as np
from PIL import Image
from latentstore.data.imageio import decode_image_bytes, fit_square
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = fit_square(decode_image_bytes(data, "thin"), 256)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(out.shape, (after - before) // 1024)
"""


def test_the_thinnest_allowed_image_fits_without_a_blow_up(tmp_path):
    """8 x 2040 (255:1) fitted to 256: a full resize would hold 256 x 65,280 x 3 = 50 MB; the crop window, 0.2 MB."""
    p = _png(str(tmp_path / "strip.png"), 8, 2040)
    res = subprocess.run([sys.executable, "-c", _RSS, p], capture_output=True, text=True, timeout=120)
    shape, grew_mb = res.stdout.rsplit(" ", 1)
    assert shape == "(256, 256, 3)", res.stderr
    assert int(grew_mb) < 20, f"peak RSS grew by {grew_mb} MB"


def test_fit_square_matches_resize_then_crop(photo):
    from PIL import Image as I
    rgb = np.ascontiguousarray(np.concatenate([photo[:60]] * 3, axis=1))  # wider than tall
    h, w = rgb.shape[:2]
    rw, rh = resized_size(w, h, 48)
    full = np.asarray(I.fromarray(rgb).resize((rw, rh), I.Resampling.BILINEAR, reducing_gap=None))
    left, top = (rw - 48) // 2, (rh - 48) // 2
    want = full[top: top + 48, left: left + 48].astype(int)
    got = fit_square(rgb, 48).astype(int)
    assert got.shape == (48, 48, 3) and np.abs(got - want).max() <= 2


def test_conversion_skips_a_thin_image_and_records_why(codec_path, tmp_path):
    src = str(tmp_path / "src")
    make_tree(src, with_bad=False)
    _png(os.path.join(src, "cats", "thin.png"), 8, 4000)  # 500:1; a fit to 32 would be 32 x 16,000
    r = make_store(src, str(tmp_path / "s.zarr"), codec_path, size=32)
    s = open_store(str(tmp_path / "s.zarr"))
    assert len(s) == 14  # nothing valid lost
    reasons = {os.path.basename(x["path"]): x["reason"] for x in s.schema.rejects}
    assert "aspect-ratio limit" in reasons.get("thin.png", ""), (reasons, r)


# ------------------------------------------------------------------ bounded metadata reads, special files
@pytest.fixture(scope="module")
def stores(codec_path, tmp_path_factory):
    made = make_stores(tmp_path_factory.mktemp("bounds"), codec_path,
                       {"zarr": ("z.zarr", dict(size=32)), "wds": ("w", dict(fmt="wds", size=32))})
    return {k: made[k] for k in ("zarr", "wds")}  # the stores only: test_reader_bounds reads every value


def _first(d, pred):
    return next(f for f in sorted(json.load(open(os.path.join(d, "_parts", "shard-000000.json")))["checksums"])
                if pred(f))


SPECIALS = {  # what is replaced -> by what
    "schema": lambda d, k: ("zarr.json" if k == "zarr" else "schema.json", "zero"),
    "codec": lambda d, k: ("codec.safetensors", "zero"),
    "shard": lambda d, k: (_first(d, lambda f: f.endswith(".tar") or f.startswith("latents/")), "zero"),
    "shard_fifo": lambda d, k: (_first(d, lambda f: f.endswith(".tar") or f.startswith("latents/")), "fifo"),
    "labels_chunk": lambda d, k: (_first(d, lambda f: f.startswith("labels/") or f.endswith(".tar")), "fifo"),
    "commit_record": lambda d, k: ("_parts/shard-000000.json", "zero"),
    "creation_record": lambda d, k: ("_parts/INIT.json", "fifo"),
}


def special_copy(store: str, d: str, kind: str, what) -> str:
    """A copy of `store` at d with one file replaced: what(d, kind) -> (its path in the store, "zero" for a link to
    /dev/zero or "fifo"). Returns that path."""
    shutil.copytree(store, d)
    rel, how = what(d, kind)
    p = os.path.join(d, rel)
    os.remove(p)
    os.symlink("/dev/zero", p) if how == "zero" else os.mkfifo(p)
    return rel


_VERIFY = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))  # an unbounded read of /dev/zero dies here, not the machine
from click.testing import CliRunner
from latentstore.cli import main
res = CliRunner().invoke(main, ["verify", sys.argv[1]])
print(res.exit_code, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
print(res.output)
"""


@pytest.mark.parametrize("kind", ["zarr", "wds"])
@pytest.mark.parametrize("what", sorted(SPECIALS))
def test_verify_refuses_special_files_in_one_line(stores, kind, what, tmp_path):
    d = str(tmp_path / kind)
    special_copy(stores[kind], d, kind, SPECIALS[what])
    res = subprocess.run([sys.executable, "-c", _VERIFY, d], capture_output=True, text=True, timeout=240)
    head, out = res.stdout.split("\n", 1)
    code, peak_mb = map(int, head.split())
    assert code == 1, res.stdout + res.stderr
    assert "not a regular file" in out and "Traceback" not in out and "internal error" not in out, out
    assert peak_mb < 2048, f"verify peaked at {peak_mb} MB"


def test_readers_refuse_a_schema_that_is_a_device(stores, tmp_path):
    for kind, name in (("zarr", "zarr.json"), ("wds", "schema.json")):
        d = str(tmp_path / kind)
        shutil.copytree(stores[kind], d)
        os.remove(os.path.join(d, name))
        os.symlink("/dev/zero", os.path.join(d, name))
        with pytest.raises(StoreError, match="is a device, not a regular file"):
            open_store(d)
        res = CliRunner().invoke(main, ["info", d])
        assert res.exit_code == 1 and "not a regular file" in res.output, res.output


def test_files_beyond_the_schema_are_named(stores, tmp_path):
    d = str(tmp_path / "w")
    shutil.copytree(stores["wds"], d)
    tars = sorted(f for f in os.listdir(d) if f.endswith(".tar"))
    shutil.copy(os.path.join(d, tars[-1]), os.path.join(d, tars[-1].replace(tars[-1][-10:-4], "000099")))
    r = verify(d)
    assert not r["ok"] and any("000099.tar: on disk but not in the schema" in e for e in r["errors"]), r["errors"]
    os.remove(os.path.join(d, "_parts", "shard-000001.json"))
    r = verify(d)
    assert any("have no commit record" in e for e in r["errors"]), r["errors"]


def test_a_special_file_among_the_writer_locks_is_one_line(stores, tmp_path):
    from latentstore.store.lock import LOCK_DIR, WriterLock
    d = str(tmp_path / "z")
    shutil.copytree(stores["zarr"], d)
    os.makedirs(os.path.join(d, LOCK_DIR), exist_ok=True)
    os.mkfifo(os.path.join(d, LOCK_DIR, "rank-00001.json"))  # a FIFO would hang a plain open()
    with pytest.raises(StoreError, match="is a FIFO, not a regular file; remove it"):
        WriterLock.for_merge(d).others()


def test_a_special_file_among_source_tars_is_noted_not_read(tmp_path):
    import io
    import tarfile

    from latentstore.convert.sources import list_inputs
    src = tmp_path / "shards"
    src.mkdir()
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, format="PNG")
    with tarfile.open(src / "a.tar", "w") as tf:
        ti = tarfile.TarInfo("k0.png")
        ti.size = len(buf.getvalue())
        tf.addfile(ti, io.BytesIO(buf.getvalue()))
    os.mkfifo(src / "b.tar")  # tarfile.open would wait on it forever
    listing = list_inputs(str(src))
    assert [i.ref.rsplit("/", 1)[-1] for i in listing.items] == ["a.tar::k0.png"]
    assert "is a FIFO, not a regular file" in listing.notes[0]["reason"], listing.notes
