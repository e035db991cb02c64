"""The resealed-edit zoo (#26): each edit of a store, resealed with the plain sha256, is refused by
`verify --strict` (the cross-checks of the schema against the disk and its commit records), and by
`verify --key-file` even when the editor also rewrote every record to match."""
import json
import os
import shutil

import pytest
from click.testing import CliRunner

from latentstore.cli import main
from latentstore.errors import UsageError
from latentstore.store.records import seal
from latentstore.store.schema import StoreSchema
from latentstore.store.sealkey import SEAL_KEY_ENV, sealing_with
from latentstore.store.verify import verify
from tests.store_fixtures import make_store, make_tree

KEY = b"0123456789abcdef-test-seal-key"
SHARD_SIZE = 5  # 14 photos -> 3 shards (5, 5, 4)


def _key_file(d, key=KEY, mode=0o600):
    p = os.path.join(d, f"key-{mode:o}")
    with open(p, "wb") as f:
        f.write(key + b"\n")
    os.chmod(p, mode)
    return p


@pytest.fixture(scope="module")
def stores(codec_path, tmp_path_factory):
    d = tmp_path_factory.mktemp("zoo")
    src = make_tree(str(d / "src"), with_bad=False)
    key_file = _key_file(str(d))
    out = {"key_file": key_file, "src": src}
    for kind in ("zarr", "wds"):
        make_store(src, str(d / f"{kind}-plain"), codec_path, fmt=kind, size=32, shard_size=SHARD_SIZE)
        with sealing_with(key_file):
            make_store(src, str(d / f"{kind}-keyed"), codec_path, fmt=kind, size=32, shard_size=SHARD_SIZE)
        out[kind, "plain"], out[kind, "keyed"] = str(d / f"{kind}-plain"), str(d / f"{kind}-keyed")
    return out


# ------------------------------------------------------------------ editing a store as an editor would
def _schema_path(d):
    return os.path.join(d, "zarr.json") if os.path.exists(os.path.join(d, "zarr.json")) else os.path.join(d, "schema.json")


def _load(path):
    with open(path) as f:
        return json.load(f)


def _dump(obj, path):
    with open(path, "w") as f:
        json.dump(obj, f)


def _reseal(sch: dict) -> None:
    """What anyone can do: recompute the plain sha256 (the keyed seal, if any, is left as it was)."""
    sch["schema_sha256"] = StoreSchema(**sch).content_sha256()


def _edit_schema(d, edit):
    path = _schema_path(d)
    meta = _load(path)
    sch = meta["attributes"]["latentstore"] if "attributes" in meta else meta
    edit(sch, d)
    _reseal(sch)
    _dump(meta, path)


def _edit_records(d, edit_init, edit_part=None):
    """The thorough editor: the creation record and the shard records rewritten to match, each resealed."""
    init_path = os.path.join(d, "_parts", "INIT.json")
    init = _load(init_path)
    edit_init(init, d)
    _reseal(init)
    _dump(init, init_path)
    for f in sorted(os.listdir(os.path.join(d, "_parts"))):
        if f.startswith("shard-") and edit_part is not None:
            p = os.path.join(d, "_parts", f)
            rec = edit_part(_load(p), d)
            if rec is None:
                os.remove(p)
            else:
                _dump(seal(rec), p)


def _cut(s, d):  # 14 -> 10 samples: the third shard dropped from the schema, its files left on disk
    last = s["checksums"]
    s["checksums"] = {n: h for n, h in last.items() if not (n.endswith("-000002.tar") or "/c/2" in n)}
    s["num_slots"] = 2 * SHARD_SIZE
    if "num_samples" in s and s.get("complete"):
        s["num_samples"] = 2 * SHARD_SIZE


def _is_payload(name):
    return name.endswith(".tar") or name.startswith("latents/")


def _first_shard_file(s):
    return next(n for n in sorted(s["checksums"]) if _is_payload(n))


EDITS = {  # name -> (schema edit, creation record edit, shard record edit)
    "cut_to_two_shards": (_cut, lambda i, d: i.update(num_slots=2 * SHARD_SIZE),
                          lambda r, d: None if r["shard"] == 2 else r),
    "labels_reversed": (lambda s, d: s.update(label_names=s["label_names"][::-1]),
                        lambda i, d: i.update(label_names=i["label_names"][::-1]), None),
    "labels_emptied": (lambda s, d: s.update(label_names=[]), lambda i, d: i.update(label_names=[]), None),
    "shard_size": (lambda s, d: s.update(shard_size=7), lambda i, d: i.update(shard_size=7), None),
    "codec_id": (lambda s, d: s["codec"].update(id="ls-c32"), lambda i, d: i["codec"].update(id="ls-c32"), None),
    "coder": (lambda s, d: s["codec"].update(coder="latentstore.ans"),
              lambda i, d: i["codec"].update(coder="latentstore.ans"), None),
    "checksum_removed": (lambda s, d: s["checksums"].pop(_first_shard_file(s)), lambda i, d: None,
                         lambda r, d: {**r, "checksums": {n: h for n, h in r["checksums"].items()
                                                          if r["shard"] != 0 or not _is_payload(n)}}),
    "downgrade_to_v1": (lambda s, d: s.update(schema_version=1, checksums={}),
                        lambda i, d: i.update(schema_version=1, checksums={}),
                        lambda r, d: {**r, "checksums": {}}),
}


def _copy(stores, kind, which, tmp_path, name):
    d = str(tmp_path / f"{kind}-{which}-{name}")
    shutil.copytree(stores[kind, which], d)
    return d


def _refused(args) -> str:
    res = CliRunner().invoke(main, ["verify"] + args)
    assert res.exit_code == 1, (args, res.output)
    assert "Traceback" not in res.output and "internal error" not in res.output, res.output
    return res.output


# ------------------------------------------------------------------ the zoo
def test_the_unedited_stores_pass_strict_and_keyed(stores):
    for kind in ("zarr", "wds"):
        r = verify(stores[kind, "plain"], strict=True)
        assert r["ok"] and not r["notes"], r
        keyed = stores[kind, "keyed"]
        res = CliRunner().invoke(main, ["verify", "--strict", "--key-file", stores["key_file"], keyed])
        assert res.exit_code == 0, res.output


@pytest.mark.parametrize("kind", ["zarr", "wds"])
@pytest.mark.parametrize("edit", sorted(EDITS))
def test_a_resealed_edit_fails_verify_strict(stores, kind, edit, tmp_path):
    d = _copy(stores, kind, "plain", tmp_path, edit)
    _edit_schema(d, EDITS[edit][0])
    out = _refused(["--strict", d])
    assert "FAIL" in out or "--strict" in out


@pytest.mark.parametrize("kind", ["zarr", "wds"])
@pytest.mark.parametrize("edit", sorted(EDITS))
def test_a_thorough_edit_resealed_without_the_key_fails_verify_key(stores, kind, edit, tmp_path):
    d = _copy(stores, kind, "keyed", tmp_path, edit)
    sch_edit, init_edit, part_edit = EDITS[edit]
    _edit_schema(d, sch_edit)
    _edit_records(d, init_edit, part_edit)
    out = _refused(["--key-file", stores["key_file"], d])
    assert "keyed seal does not match" in out
    _refused(["--strict", "--key-file", stores["key_file"], d])


@pytest.mark.parametrize("kind", ["zarr", "wds"])
@pytest.mark.parametrize("edit", ["cut_to_two_shards", "checksum_removed", "downgrade_to_v1", "labels_emptied",
                                  "codec_id", "shard_size"])
def test_what_the_cross_checks_catch_even_from_a_thorough_editor(stores, kind, edit, tmp_path):
    """Without a key: files beyond the schema, labels naming no class, a codec id that is not the embedded
    codec's, records beyond the shards, and an old schema are still refused. (Reversed label names, and a
    fixed-size Zarr store's coder field, which its array metadata overrides, need the key.)"""
    d = _copy(stores, kind, "plain", tmp_path, edit)
    sch_edit, init_edit, part_edit = EDITS[edit]
    _edit_schema(d, sch_edit)
    _edit_records(d, init_edit, part_edit)
    _refused(["--strict", d])


def test_a_removed_keyed_seal_fails_and_a_wrong_key_fails(stores, tmp_path):
    d = _copy(stores, "wds", "keyed", tmp_path, "unsealed")
    _edit_schema(d, lambda s, _: s.update(seal_hmac=""))
    assert "carries no keyed seal" in _refused(["--key-file", stores["key_file"], d])
    other = _key_file(str(tmp_path), b"another-key-of-32-bytes-00000000")
    assert "does not match" in _refused(["--key-file", other, stores["wds", "keyed"]])
    assert "carries no keyed seal" in _refused(["--key-file", stores["key_file"], stores["zarr", "plain"]])


def test_without_the_key_a_keyed_store_passes_with_a_note_and_strict_says_why(stores):
    res = CliRunner().invoke(main, ["verify", stores["zarr", "keyed"]])
    assert res.exit_code == 0 and "note: the schema carries a keyed seal" in res.output, res.output
    assert "no key was given" in _refused(["--strict", stores["zarr", "keyed"]])


def test_a_v1_store_passes_with_a_note_and_fails_strict():
    golden = os.path.join(os.path.dirname(__file__), "golden", "store.zarr")
    res = CliRunner().invoke(main, ["verify", golden])
    assert res.exit_code == 0 and "note: schema v1" in res.output, res.output
    assert "--strict: schema v1" in _refused(["--strict", golden])


def test_key_files_must_be_private_and_long(stores, tmp_path):
    r = CliRunner()
    for key_file, says in ((_key_file(str(tmp_path), mode=0o644), "chmod 600"),
                           (_key_file(str(tmp_path), key=b"short", mode=0o600), "at least 16 bytes")):
        res = r.invoke(main, ["verify", "--key-file", key_file, stores["wds", "keyed"]])
        assert res.exit_code == 2 and says in res.output and "Traceback" not in res.output, res.output
    from latentstore.store.sealkey import read_key_file
    shared, real_stat = _key_file(str(tmp_path), mode=0o644), os.stat
    with pytest.MonkeyPatch.context() as mp:  # the open file's mode (fstat) is checked, not the path's
        mp.setattr(os, "stat", lambda p, *a, **k: os.stat_result((0o100600,) + tuple(real_stat(p, *a, **k))[1:]))
        with pytest.raises(UsageError, match="chmod 600"):
            read_key_file(shared)
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    res = r.invoke(main, ["verify", "--key-file", fifo, stores["wds", "keyed"]])
    assert res.exit_code == 2 and "FIFO" in res.output, res.output


def test_the_environment_key_seals_a_conversion_and_checks_it(stores, codec_path, tmp_path, monkeypatch):
    monkeypatch.setenv(SEAL_KEY_ENV, KEY.decode())
    d = str(tmp_path / "env.zarr")
    res = CliRunner().invoke(main, ["convert", stores["src"], d, "--codec", codec_path, "--size", "32", "--quiet"])
    assert res.exit_code == 0, res.output
    assert verify(d, strict=True)["ok"]
    res = CliRunner().invoke(main, ["verify", "--strict", "--key-file", stores["key_file"], d])
    assert res.exit_code == 0, res.output  # the same key, from a file
    monkeypatch.delenv(SEAL_KEY_ENV)
    _edit_schema(d, lambda s, _: s.update(label_names=s["label_names"][::-1]))
    _edit_records(d, lambda i, _: i.update(label_names=i["label_names"][::-1]))
    assert verify(d)["ok"]  # the plain seal and the records cannot tell a thorough editor: the key can
    assert not verify(d, key=KEY)["ok"]
