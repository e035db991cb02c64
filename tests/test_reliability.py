"""The reliability trial kept as tests: verify cannot be fooled, writers exclude each other, reads are bounded."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from latentstore.cli import main
from latentstore.errors import StoreError, UsageError
from latentstore.store import open_store
from latentstore.store.lock import WriterLock
from latentstore.store.schema import StoreSchema
from latentstore.store.verify import verify
from tests.store_fixtures import make_store, make_stores, make_tree


@pytest.fixture(scope="module")
def stores(codec_path, tmp_path_factory):
    return make_stores(tmp_path_factory.mktemp("rel"), codec_path,
                       {"zarr": ("z.zarr", dict(size=32)), "wds": ("w", dict(fmt="wds", size=32))})


def _files(root):
    for r, _, fs in os.walk(root):
        for f in fs:
            yield os.path.relpath(os.path.join(r, f), root)


def _flip(path, at=None, bit=0x04):
    with open(path, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        off = size // 2 if at is None else at
        f.seek(off)
        b = f.read(1)
        f.seek(off)
        f.write(bytes([b[0] ^ bit]))


def _verify_fails(d) -> str:
    """verify must fail, through the CLI: exit 1, FAIL or error lines, never a traceback."""
    res = CliRunner().invoke(main, ["verify", d])
    assert res.exit_code == 1, (d, res.output)
    assert "Traceback" not in res.output and "internal error" not in res.output, res.output
    return res.output


@pytest.mark.parametrize("kind", ["zarr", "wds"])
def test_a_bit_flip_in_every_file_fails_verify(stores, kind, tmp_path):
    assert verify(stores[kind])["ok"]
    files = sorted(_files(stores[kind]))
    kinds = {f.split("/")[0] if "/" in f else f for f in files}
    assert "codec.safetensors" in kinds and "_parts" in kinds
    for rel in files:
        d = str(tmp_path / rel.replace("/", "_"))
        shutil.copytree(stores[kind], d)
        _flip(os.path.join(d, rel))
        _verify_fails(d)
        shutil.rmtree(d)


def _edit_schema(d, kind, edit, reseal):
    path = os.path.join(d, "zarr.json" if kind == "zarr" else "schema.json")
    meta = json.load(open(path))
    sch = meta["attributes"]["latentstore"] if kind == "zarr" else meta
    edit(sch)
    if reseal:  # a writer bug or a deliberate edit that re-seals: the bounds and cross-checks must still catch it
        sch["schema_sha256"] = StoreSchema(**{k: v for k, v in sch.items()}).content_sha256()
    json.dump(meta, open(path, "w"))


EDITS = {
    "name": lambda s: s.update(name="other"),
    "huge_shard_size": lambda s: s.update(shard_size=10 ** 18),
    "negative_slots": lambda s: s.update(num_slots=-5),
    "negative_shard_size": lambda s: s.update(shard_size=-8),
    "zero_shard_size": lambda s: s.update(shard_size=0),
    "no_checksums": lambda s: s.update(checksums={}),
    "huge_slots": lambda s: s.update(num_slots=10 ** 18),
    "many_slots": lambda s: s.update(num_slots=2 ** 33),
    "freqs": lambda s: s["codec"]["freqs"][0].__setitem__(0, s["codec"]["freqs"][0][0] + 1),
    "freqs_zero": lambda s: s["codec"]["freqs"][0].__setitem__(0, 0),
    "inputs_sha256": lambda s: s.update(inputs_sha256="0" * 64),
    "more_samples": lambda s: s.update(num_samples=s["num_samples"] + 1),
}


@pytest.mark.parametrize("kind", ["zarr", "wds"])
@pytest.mark.parametrize("edit", sorted(EDITS))
@pytest.mark.parametrize("reseal", [False, True])
def test_every_schema_edit_fails_verify(stores, kind, edit, reseal, tmp_path):
    if reseal and (edit == "inputs_sha256" or (edit == "name" and kind == "zarr")):
        pytest.skip("re-sealed, this field changes nothing a reader does (name: WebDataset shard prefix only)")
    d = str(tmp_path / "s")
    shutil.copytree(stores[kind], d)
    _edit_schema(d, kind, EDITS[edit], reseal)
    out = _verify_fails(d)  # the CLI runner has no timeout: a hang would hang the suite, so it is tested too
    if not reseal:
        assert "checksum does not match" in out


def test_a_deleted_array_metadata_file_fails_verify_and_reads_say_so(stores, tmp_path):
    d = str(tmp_path / "s")
    shutil.copytree(stores["zarr"], d)
    os.remove(os.path.join(d, "labels", "zarr.json"))
    out = _verify_fails(d)
    assert "labels/zarr.json" in out
    with pytest.raises(StoreError, match="array labels/ is unreadable"):
        open_store(d).labels  # what a training loader reads first: a named error, not a KeyError


def test_merge_refuses_a_damaged_commit_record(stores, codec_path, tmp_path):
    d = str(tmp_path / "r.zarr")
    base = ["convert", stores["src"], d, "--codec", codec_path, "--size", "32", "--shard-size", "4", "--quiet",
            "--num-shards", "2"]
    r = CliRunner()
    for rank in ("0", "1"):
        assert r.invoke(main, base + ["--shard-id", rank]).exit_code == 0
    part = os.path.join(d, "_parts", "shard-000001.json")
    rec = json.load(open(part))
    rec["samples"] += 1  # a record that lies, without re-sealing it
    json.dump(rec, open(part, "w"))
    res = r.invoke(main, ["merge", d])
    assert res.exit_code == 1 and "shard-000001.json" in res.output and "checksum" in res.output


def test_two_writers_exclude_each_other(stores, codec_path, tmp_path):
    d = str(tmp_path / "two.zarr")
    args = ["convert", stores["src"], d, "--codec", codec_path, "--size", "32", "--quiet"]
    os.makedirs(d)
    held = WriterLock.for_rank(d, 0, 1).acquire()  # a live writer (this very process)
    try:
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 2 and "already being written" in res.output, res.output
        res = CliRunner().invoke(main, ["merge", d])
        assert res.exit_code == 2 and "being written" in res.output
        with pytest.raises(UsageError, match="job of 1 rank"):
            WriterLock.for_rank(d, 1, 2).acquire()  # a job with another world size
    finally:
        held.release()
    # a lock left by a process that is gone (kill -9) is stale: the next writer takes it over
    os.makedirs(os.path.join(d, "_locks"), exist_ok=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    json.dump({"host": os.uname().nodename, "pid": int(dead.stdout), "role": "rank-00000", "rank": 0, "world": 1},
              open(os.path.join(d, "_locks", "rank-00000.json"), "w"))
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert not os.path.exists(os.path.join(d, "_locks")) and verify(d)["ok"]


def test_special_files_become_rejects_in_bounded_time(codec_path, tmp_path):
    src = make_tree(str(tmp_path / "src"), with_bad=False)
    os.mkfifo(os.path.join(src, "cats", "fifo.jpg"))
    os.symlink("/dev/zero", os.path.join(src, "cats", "zero.jpg"))
    with open(os.path.join(src, "cats", "big.jpg"), "wb") as f:
        f.truncate(3 << 20)  # sparse: over a 2 MB limit without using the disk
    dst = str(tmp_path / "s.zarr")
    r = subprocess.run([sys.executable, "-m", "latentstore.cli", "convert", src, dst, "--codec", codec_path, "--size",
                        "32", "--quiet", "--max-file-mb", "2"], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    rejects = {os.path.basename(x["path"]): x["reason"] for x in open_store(dst).schema.rejects}
    assert "FIFO" in rejects["fifo.jpg"] and "device" in rejects["zero.jpg"], rejects
    assert "over the 2,097,152-byte file limit" in rejects["big.jpg"]


def test_reject_reasons_are_stable_text(codec_path, tmp_path):
    src = make_tree(str(tmp_path / "src"))
    runs = []
    for i in range(2):
        dst = str(tmp_path / f"s{i}.zarr")
        make_store(src, dst, codec_path, size=32)
        runs.append(open_store(dst).schema.rejects)
    assert runs[0] == runs[1] and runs[0]
    assert not any(re.search(r"0x[0-9a-fA-F]{6,}|object at", r["reason"]) for r in runs[0]), runs[0]


def test_stale_temp_files_are_cleaned_on_resume(stores, codec_path, tmp_path):
    d = str(tmp_path / "t.zarr")
    shutil.copytree(stores["zarr"], d)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = os.path.join(d, "_parts", f"shard-000001.json.tmp{int(dead.stdout)}")
    open(stale, "w").write("{")
    res = CliRunner().invoke(main, ["convert", stores["src"], d, "--codec", codec_path, "--size", "32", "--quiet",
                                    "--shard-size", "4", "--resume"])
    assert res.exit_code == 0, res.output
    assert not os.path.exists(stale) and verify(d)["ok"]


def test_damaged_containers_give_one_line_not_internal_errors(stores, tmp_path):
    r = CliRunner()
    d = str(tmp_path / "w")
    shutil.copytree(stores["wds"], d)
    tar = sorted(f for f in os.listdir(d) if f.endswith(".tar"))[0]
    with open(os.path.join(d, tar), "r+b") as f:
        f.truncate(700)  # inside the first member
    for cmd in (["info", d], ["verify", d], ["decode", d, "--out", str(tmp_path / "o")]):
        res = r.invoke(main, cmd)
        assert "internal error" not in res.output and "Traceback" not in res.output, (cmd, res.output)
    z = str(tmp_path / "z")
    shutil.copytree(stores["zarr"], z)
    _flip(os.path.join(z, "valid", "c", "0"), at=8, bit=0xFF)  # inside the blosc header
    for cmd in (["verify", z], ["decode", z, "--out", str(tmp_path / "o2")]):
        res = r.invoke(main, cmd)
        assert res.exit_code == 1 and "internal error" not in res.output, (cmd, res.output)


def test_disk_full_is_one_line(stores, codec_path, tmp_path, monkeypatch):
    import errno

    from latentstore.store import writer

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "f.zarr" / "latents"))
    monkeypatch.setattr(writer.StoreWriter, "write_shard", full)
    res = CliRunner().invoke(main, ["convert", stores["src"], str(tmp_path / "f.zarr"), "--codec", codec_path,
                                    "--size", "32", "--quiet"])
    assert res.exit_code == 1 and "No space left on device" in res.output and "internal" not in res.output


def test_an_interrupted_store_is_refused_by_name(stores):
    with pytest.raises(StoreError, match="schema version 99"):
        StoreSchema.from_dict({"format": "latentstore", "schema_version": 99, "kind": "zarr"}, "x")
