"""Reads while and after the service seals (issue #26 review): a seal rewriting the open shard never leaves a
reader without its files; a shard file the schema records and that is missing is an error, not blank samples;
an upload the sealer skips as already stored does not stay pending for good."""
import os
import shutil

import numpy as np
import pytest
import zarr
from fastapi.testclient import TestClient

import latentstore as ls
from latentstore.serve import ServeConfig, create_app
from latentstore.serve.native import read_blobs
from latentstore.store.backends import schema_tables
from latentstore.store.backends.base import CorruptSampleError
from latentstore.store.backends.zarr_shards import ShardReader
from latentstore.store.schema import read_schema
from latentstore.store.verify import verify
from latentstore.store.remote import location_for
from tests.s3server import s3  # noqa: F401  (the session fixture)
from tests.store_fixtures import make_store, make_tree
from tests.test_serve import image_bytes, post, seal


def shard_files(backend, k: int) -> list[str]:
    g = zarr.open_group(backend.root, mode="r")
    return [backend.chunk_file(g[name], k) for name in backend.array_names() if name in g]


def what_a_reader_sees(store: str, native: bool, slot: int) -> tuple:
    """(symbols, valid, label, source) of `slot`, read as the service's readers read it, today's files only."""
    g = zarr.open_group(store, mode="r")
    if native:
        symbols = read_blobs(store, slot)[0]
    else:  # a reader knowing no recorded files: a missing shard file would read as zeros
        schema = read_schema(store)
        reader = ShardReader.for_store(store, lambda c: schema_tables(schema, c), recorded=frozenset())
        symbols = reader.read(slot)
    return symbols, bool(g["valid"][slot]), int(g["labels"][slot]), str(g["sources"][slot])


@pytest.mark.parametrize("native", [False, True], ids=["fixed", "native"])
def test_a_seal_rewriting_the_open_shard_never_leaves_readers_without_its_files(codec_path, tmp_path, native):
    store = str(tmp_path / "s.zarr")
    cfg = ServeConfig(store=store, codec=codec_path, size=32, shard_size=4, seal_interval_s=30, device="cpu",
                      native=native)
    app = create_app(cfg)
    with TestClient(app) as c:
        svc = app.state.service
        assert post(c, image_bytes(10), tok=None).status_code == 200
        seal(svc)  # shard 0 holds slot 0 and is open (not full)
        backend = svc.sealer.writer.backend
        files = shard_files(backend, 0)
        before = what_a_reader_sees(store, native, 0)
        assert before[1] and before[0].any() and before[3].startswith("sha256:")
        seen = []
        real = backend.write_payload

        def check():  # what any other reader of the store finds at this point of the rewrite
            seen.append([f for f in files if os.path.exists(f) and f not in missing_before])
            got = what_a_reader_sees(store, native, 0)
            assert np.array_equal(got[0], before[0]) and got[1:] == before[1:]

        def write_payload(*a, **kw):
            check()  # after whatever write_shard does before the payload
            real(*a, **kw)
            check()  # between the payload and the per-slot arrays

        missing_before = {f for f in files if not os.path.exists(f)}  # arrays with nothing stored yet (masks)
        backend.write_payload = write_payload
        assert post(c, image_bytes(11), tok=None).status_code == 200
        seal(svc)  # shard 0 rewritten whole with slots 0 and 1
        assert len(seen) == 2 and all(len(s) == len(files) - len(missing_before) for s in seen)
        check()
        assert what_a_reader_sees(store, native, 1)[1]
    assert verify(store)["ok"]


@pytest.fixture(scope="module")
def converted(codec_path, tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("converted")
    make_store(make_tree(str(d / "src"), with_bad=False), str(d / "s.zarr"), codec_path, size=32, shard_size=4)
    return str(d / "s.zarr")


def test_a_missing_shard_file_the_schema_records_is_an_error_naming_store_shard_sample(converted, tmp_path):
    store = str(tmp_path / "s.zarr")
    shutil.copytree(converted, store)
    s = ls.open_store(store)
    assert len(s) > 4 and s.symbols(5).any()
    rel = "latents/c/1/0/0/0"
    assert rel in read_schema(store).checksums
    os.remove(os.path.join(store, rel))
    s = ls.open_store(store)
    with pytest.raises(CorruptSampleError) as ei:
        s.symbols(5)
    msg = str(ei.value)
    assert "\n" not in msg and store in msg and "shard 1" in msg and "sample 5" in msg and "missing" in msg
    with pytest.raises(CorruptSampleError, match="shard 1 sample 4"):
        s.backend.symbols_batch(np.array([0, 4]))
    assert s.symbols(0).any()  # the other shards read as before
    schema = read_schema(store)  # a shard no checksum records (all its rows empty): all-fill, as before
    unrecorded = ShardReader.for_store(store, lambda c: schema_tables(schema, c), recorded=frozenset())
    assert not unrecorded.read(5).any()


def test_a_missing_shard_object_the_schema_records_is_an_error_in_an_s3_store(converted, s3):  # noqa: F811
    url = f"{s3.prefix('seal-reads')}/s"
    dst = location_for(url)
    for root, _, files in os.walk(converted):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), converted).replace(os.sep, "/")
            if rel != "latents/c/1/0/0/0":  # shard 1's object never arrived
                dst.put(rel, open(os.path.join(root, name), "rb").read())
    s = ls.open_store(url)
    assert s.symbols(0).any()
    for read in (lambda: s.symbols(5), lambda: s.read_batch([0, 5])):
        with pytest.raises(CorruptSampleError) as ei:
            read()
        msg = str(ei.value)
        assert "\n" not in msg and url in msg and "shard 1 sample 5" in msg and "missing" in msg, msg


def test_an_upload_the_sealer_skips_as_already_stored_leaves_nothing_pending(codec_path, tmp_path):
    store = str(tmp_path / "s.zarr")
    cfg = ServeConfig(store=store, codec=codec_path, size=32, shard_size=4, seal_interval_s=30, device="cpu")
    app = create_app(cfg)
    with TestClient(app) as c:
        svc = app.state.service
        first = post(c, image_bytes(20), tok=None).json()
        seal(svc)
        assert c.get(f"/v1/images/{first['id']}").json()["sealed"] is True
        # the race: these bytes checked against the index before their first record was indexed
        known = svc.pending.known
        svc.pending.known = lambda *a, **kw: None
        again = post(c, image_bytes(20), tok=None)
        svc.pending.known = known
        assert again.status_code == 200 and again.json()["sha256"] == first["sha256"]
        assert first["sha256"] in svc.pending.meta  # accepted twice: a second record in the intake
        assert seal(svc) is None and svc.sealer.next_slot == 1  # skipped: stored once
        assert first["sha256"] not in svc.pending.meta and first["sha256"] not in svc.pending.blobs
        assert c.get(f"/v1/images/{first['id']}").json()["sealed"] is True
