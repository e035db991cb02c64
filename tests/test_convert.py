"""Conversion of a real tree of JPEGs and PNGs through the real DALI pipeline: labels, rejects, resume, ranks."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from latentstore.cli import main
from latentstore.errors import StoreError
from latentstore.store import open_store
from latentstore.store.verify import verify
from tests.store_fixtures import make_store, make_tree


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = make_tree(str(tmp_path_factory.mktemp("tree") / "src"))
    locked = os.path.join(root, "cats", "zz_locked.jpg")
    with open(os.path.join(root, "cats", "chelsea_a.jpg"), "rb") as f:
        open(locked, "wb").write(f.read())
    os.chmod(locked, 0)  # unreadable for a normal user; root reads it anyway, so add a dangling link too
    os.symlink(os.path.join(root, "gone.jpg"), os.path.join(root, "cats", "zz_dangling.jpg"))
    return root


@pytest.fixture(scope="module")
def zstore(tree, codec_path, tmp_path_factory):
    dst = str(tmp_path_factory.mktemp("z") / "st.zarr")
    make_store(tree, dst, codec_path)
    return dst


def test_labels_rejects_and_summary(zstore, tree):
    s = open_store(zstore)
    sch = s.schema
    assert sch.label_names == ["cats", "nothing_here", "space"]
    assert sch.notes == [{"path": os.path.join(tree, "nothing_here"), "reason": "class folder has no images"}]
    reasons = {os.path.basename(r["path"]): r["reason"] for r in sch.rejects}
    expected_bad = {"x_truncated.jpg", "x_not_an_image.jpg", "x_empty.png", "x_tiny_3x3.png", "x_huge.png",
                    "zz_dangling.jpg"}
    if os.geteuid() != 0:
        expected_bad.add("zz_locked.jpg")
    assert set(reasons) == expected_bad, reasons
    assert "truncated" in reasons["x_truncated.jpg"] and "pixel limit" in reasons["x_huge.png"]
    n_inputs = 14 + 11 + 2
    assert sch.num_slots == n_inputs and sch.num_samples == n_inputs - len(expected_bad)
    # the awkward-but-valid ones are all there, with the label of their folder
    sources = {os.path.basename(s.meta(i)["source"]): s.label(i) for i in range(len(s))}
    for ok in ("x_cmyk.jpg", "x_rgba.png", "x_sixteen_bit.png", "x_exif_rotated.jpg", "x_palette.png", "x_grey.jpg"):
        assert sources[ok] == 2
    assert sources["chelsea_a.jpg"] == 0
    assert verify(zstore)["ok"]


def test_plain_zarr_reads_the_store(zstore):
    g = zarr.open_group(zstore, mode="r")
    s = open_store(zstore)
    lat = g["latents"]
    assert lat.shape == (s.schema.num_slots, s.schema.codec["C"], 4, 4) and lat.dtype == np.uint8
    valid = g["valid"][:]
    assert valid.sum() == len(s)
    for i in (0, len(s) - 1):
        assert np.array_equal(lat[int(s.slots[i])], s.symbols(i))
    assert (g["labels"][:][~valid] == -1).all()


def test_formats_agree_and_native_keeps_sizes(tree, zstore, codec_path, tmp_path):
    w = make_store(tree, str(tmp_path / "w"), codec_path, fmt="wds")
    ws, zs = open_store(str(tmp_path / "w")), open_store(zstore)
    assert len(ws) == len(zs) and all(np.array_equal(ws.symbols(i), zs.symbols(i)) for i in range(len(zs)))
    assert w.schema.num_rejected == zs.schema.num_rejected
    make_store(tree, str(tmp_path / "n.zarr"), codec_path, size=None)
    ns = open_store(str(tmp_path / "n.zarr"))
    for i in range(len(ns)):
        H, W = ns.meta(i)["size"]
        assert ns.symbols(i).shape[1:] == (-(-H // 8), -(-W // 8))
    assert ns.decode_rgb(0).shape[:2] == tuple(ns.meta(0)["size"])
    assert verify(str(tmp_path / "n.zarr"))["ok"]


def test_same_inputs_same_bytes(tree, zstore, codec_path, tmp_path):
    make_store(tree, str(tmp_path / "again.zarr"), codec_path)
    a, b = open_store(zstore), open_store(str(tmp_path / "again.zarr"))
    assert a.schema.checksums == b.schema.checksums


def test_bad_arguments_exit_2(tree, codec_path, zstore, tmp_path):
    r = CliRunner()
    cases = [["convert", str(tmp_path / "nope"), str(tmp_path / "o"), "--codec", codec_path],
             ["convert", tree, zstore, "--codec", codec_path],
             ["convert", tree, str(tmp_path / "o2"), "--codec", "no-such-codec"],
             ["convert", tree, str(tmp_path / "o3"), "--codec", codec_path, "--num-shards", "2", "--shard-id", "2"]]
    for args in cases:
        res = r.invoke(main, args)
        assert res.exit_code == 2, (args, res.output)
        assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1, res.output


def _cli(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "latentstore.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)


def test_kill_9_then_resume_equals_uninterrupted(tree, zstore, codec_path, tmp_path):
    dst = str(tmp_path / "k.zarr")
    args = ["convert", tree, dst, "--codec", codec_path, "--size", "32", "--shard-size", "4", "--batch-size", "4", "--quiet"]
    p = _cli(*args)
    parts = os.path.join(dst, "_parts")
    t0 = time.time()
    while time.time() - t0 < 120:  # kill as soon as some but not all shards are committed
        if os.path.isdir(parts) and len([f for f in os.listdir(parts) if f.startswith("shard-")]) >= 2:
            break
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    n_done = len([f for f in os.listdir(parts) if f.startswith("shard-")])
    assert n_done < open_store(zstore).schema.num_shards, "the run finished before it could be killed"
    with pytest.raises(StoreError, match="incomplete"):
        open_store(dst)  # an interrupted store is refused, not half-read
    q = _cli(*args, "--resume")
    out, err = q.communicate(timeout=300)
    assert q.returncode == 0, err.decode()
    a, b = open_store(zstore), open_store(dst)
    assert len(a) == len(b)
    assert all(np.array_equal(a.symbols(i), b.symbols(i)) for i in range(len(a)))
    assert a.schema.checksums == b.schema.checksums
    assert verify(dst)["ok"]


def test_two_ranks_then_merge(tree, zstore, codec_path, tmp_path):
    dst = str(tmp_path / "r.zarr")
    base = ["convert", tree, dst, "--codec", codec_path, "--size", "32", "--shard-size", "4", "--quiet", "--num-shards", "2"]
    procs = [_cli(*base, "--shard-id", str(r)) for r in (1, 0)]  # rank 1 first: it must wait for rank 0's init
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    res = CliRunner().invoke(main, ["merge", dst])
    assert res.exit_code == 0, res.output
    a, b = open_store(zstore), open_store(dst)
    assert a.schema.checksums == b.schema.checksums and a.schema.num_samples == b.schema.num_samples
    assert verify(dst)["ok"]


def test_gpu_entropy_coder_gives_the_same_bytes(tree, zstore, codec_path, tmp_path):
    """The GPU path's entropy coding (Triton rANS lanes, assembled on the host; here through TRITON_INTERPRET)
    writes the same store as numba's, for direct shard files and WebDataset bitstreams alike."""
    for fmt, ref in (("zarr", zstore), ("wds", None)):
        dst = str(tmp_path / f"triton-{fmt}" / os.path.basename(zstore))  # WebDataset shards carry the name
        make_store(tree, dst, codec_path, fmt=fmt, entropy="triton")
        if ref is None:
            ref = str(tmp_path / "numba" / os.path.basename(zstore))
            make_store(tree, ref, codec_path, fmt=fmt, entropy="numba")
        a, b = open_store(ref), open_store(dst)
        assert a.schema.checksums == b.schema.checksums and a.schema.totals == b.schema.totals, fmt


def test_plain_zarr_reads_every_row(zstore):
    """The directly written shard files, read whole by zarr: valid rows are the store's symbols, the rest fill."""
    g = zarr.open_group(zstore, mode="r")
    s = open_store(zstore)
    lat, valid = g["latents"][:], g["valid"][:]
    assert np.array_equal(lat[valid], np.stack([s.symbols(i) for i in range(len(s))]))
    assert not lat[~valid].any()


def _bogus_huffman(jpeg: bytes) -> bytes:
    """A JPEG whose header screens fine but whose Huffman table no decoder accepts (DALI fails its batch)."""
    d = bytearray(jpeg)
    i = d.find(b"\xff\xc4")
    d[i + 5: i + 21] = b"\xff" * 16  # code counts summing far over 256
    return bytes(d)


def test_a_bad_file_is_isolated_from_its_batch(tmp_path, codec_path):
    import io
    from PIL import Image
    from latentstore.convert.decode import DaliImageStage, screen
    from tests.badfiles import base_photo
    rgb = base_photo(64)
    good = []
    for i in range(5):
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(rgb[:, i * 8: i * 8 + 56])).save(buf, format="JPEG", quality=90)
        good.append(buf.getvalue())
    bad = _bogus_huffman(good[0])
    assert screen(bad, "bad").route == "dali"  # only DALI finds out
    stage = DaliImageStage(32, 8)
    out = stage.decode([good[0], bad, good[1], good[2], bad, good[3], good[4]])
    assert [isinstance(o, Exception) for o in out] == [False, True, False, False, True, False, False]
    alone = stage.decode(good)
    assert all(np.array_equal(a, b) for a, b in zip([o for o in out if not isinstance(o, Exception)], alone))
    src = tmp_path / "src"
    src.mkdir()
    for i, g in enumerate(good):
        (src / f"g{i}.jpg").write_bytes(g)
    (src / "zz_bad.jpg").write_bytes(bad)
    s = make_store(str(src), str(tmp_path / "b.zarr"), codec_path, shard_size=8)  # batches of 4: [g0-g3], [g4, bad]
    assert s.stored == 5 and [r["path"] for r in s.rejects] == [str(src / "zz_bad.jpg")]
    assert s.rejects[0]["reason"].startswith("DALI could not decode it")
    assert verify(str(tmp_path / "b.zarr"))["ok"]


def test_header_shortcut_agrees_with_pillow(tree, tmp_path):
    """screen()'s marker walk for plain JPEGs must route every file exactly as Pillow's screen does."""
    import io
    from PIL import Image
    from latentstore.convert.decode import plain_jpeg_size, screen, screen_pil
    from tests.badfiles import base_photo
    rgb = base_photo(64)
    files = {os.path.relpath(os.path.join(r, f), tree): open(os.path.join(r, f), "rb").read()
             for r, _, fs in os.walk(tree) for f in fs if os.access(os.path.join(r, f), os.R_OK)
             and os.path.isfile(os.path.join(r, f))}
    for name, kw in {"progressive": {"progressive": True}, "comment": {"comment": b"hi"}, "444": {"subsampling": 0},
                     "optimized": {"optimize": True}, "icc": {"icc_profile": b"\0" * 200},
                     "exif_plain": {"exif": Image.Exif().tobytes()}}.items():
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="JPEG", quality=85, **kw)
        files[name] = buf.getvalue()
    plain = files["progressive"]
    i = plain.find(b"\xff\xc2")
    files["twelve_bit"] = plain[:i + 4] + b"\x0c" + plain[i + 5:]
    files["bogus_huffman"] = _bogus_huffman(files["comment"])
    j = plain.find(b"\xff\xdb")
    files["dqt_cut"] = plain[:j + 2] + b"\x00\x20" + plain[j + 4:]  # a table cut short: Pillow refuses it
    shortcut = 0
    for name, data in files.items():
        a, b = screen(data, name), screen_pil(data, name)
        assert (a.route, a.size, a.reason) == (b.route, b.size, b.reason), name
        shortcut += plain_jpeg_size(data) is not None
    assert shortcut >= 12  # the plain JPEGs of the tree and most variants took the shortcut
    assert plain_jpeg_size(files["twelve_bit"]) is None and plain_jpeg_size(files["icc"]) is None
