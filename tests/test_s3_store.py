"""Stores on object storage, against a real S3 endpoint on 127.0.0.1 (moto's server, tests/s3server.py):
convert -> verify -> info -> LatentDataset -> training steps, both formats; the same bytes as a local
store; kill -9 + --resume; two writers; a bit flip caught by verify; the one-line errors."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from latentstore.cli import main
from latentstore.errors import StoreError, UsageError
from latentstore.store import open_store
from latentstore.store.remote import location_for
from latentstore.store.remote.lock import RemoteLock
from tests.s3server import s3  # noqa: F401  (the session fixture)
from tests.store_fixtures import make_store, make_tree

FORMATS = ["zarr", "wds"]


def _convert_args(src, dst, codec_path, fmt, *extra):
    """Shards of 2 inputs: 7 shards of the 14-image tree, so a kill -9 can land between two commits."""
    return ["convert", src, dst, "--codec", codec_path, "--format", fmt, "--size", "32", "--shard-size", "2",
            "--batch-size", "2", "--quiet", *extra]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_tree(str(tmp_path_factory.mktemp("s3tree") / "src"), with_bad=False)


@pytest.fixture(scope="module")
def stores(s3, tree, codec_path, tmp_path_factory):  # noqa: F811
    """fmt -> (remote URL, the same conversion on local disk); both named `st` (the name is in the schema)."""
    out = {}
    for fmt in FORMATS:
        remote = f"{s3.prefix(fmt)}/st.{fmt}"
        res = CliRunner().invoke(main, _convert_args(tree, remote, codec_path, fmt))
        assert res.exit_code == 0, res.output
        local = str(tmp_path_factory.mktemp(f"local-{fmt}") / f"st.{fmt}")
        make_store(tree, local, codec_path, fmt=fmt, shard_size=2)
        out[fmt] = (remote, local)
    return out


@pytest.mark.parametrize("fmt", FORMATS)
def test_convert_verify_info_iterate_train(stores, s3, fmt, tmp_path):  # noqa: F811
    remote, local = stores[fmt]
    keys = s3.keys(remote)
    assert not any(k.startswith("_locks/") for k in keys)  # the writer's lock object is gone
    a, b = open_store(local), open_store(remote)
    assert a.schema.checksums == b.schema.checksums and b.schema.complete  # the same bytes as on local disk
    for rel, h in b.schema.checksums.items():  # and the objects are those bytes
        import hashlib
        assert hashlib.sha256(keys[rel]).hexdigest() == h, rel
    r = CliRunner()
    res = r.invoke(main, ["verify", remote])
    assert res.exit_code == 0 and f"ok: {len(a)} samples decode" in res.output, res.output
    res = r.invoke(main, ["info", remote, "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["format"] == fmt and d["num_samples"] == len(a) and d["complete"]
    assert d["bytes_on_disk"] == sum(len(v) for v in keys.values())
    res = r.invoke(main, ["decode", remote, "--out", str(tmp_path / "png"), "--index", "0"])
    assert res.exit_code == 0 and any(f.startswith("0000000") and f.endswith(".png") for f in os.listdir(tmp_path / "png")), res.output  # the embedded codec
    import latentstore as ls
    ds, dl = ls.LatentDataset(remote, output="symbols"), ls.LatentDataset(local, output="symbols")
    assert len(ds) == len(dl) and ds.classes == dl.classes
    for i in range(len(ds)):
        assert torch.equal(ds[i][0], dl[i][0]) and ds[i][1] == dl[i][1]
    if fmt == "zarr":
        _train_through_the_cli(remote, tmp_path)
    else:
        _train_through_the_api(remote)


def _train_through_the_cli(remote, tmp_path):
    """A few steps of `latentstore train classify`, its loader workers reading the store themselves (forkserver
    processes: obstore does not survive fork())."""
    res = CliRunner().invoke(main, ["train", "classify", "--out", str(tmp_path / "run"), "--input", "latent", "--train",
                          remote, "--val", remote, "--model", "cresnet39", "--width", "8", "--depth-scale", "0.3",
                          "--batch-size", "4", "--epochs", "1", "--max-steps", "2", "--num-workers", "1",
                          "--crop", "3", "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.output
    log = json.load(open(tmp_path / "run" / "ckpt.json"))["log"]
    assert len(log) == 2 and all(np.isfinite(x["loss"]) for x in log)


def _train_through_the_api(remote):
    """The README's training loop, from the remote store (one process; the CLI run uses workers)."""
    import latentstore as ls
    ds = ls.LatentDataset(remote, train=True, crop=3)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True)
    model = ls.build_model("cresnet39", in_channels=ds.in_channels, num_classes=ds.num_classes, width=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    seen, losses = 0, []
    for latent, label in loader:
        loss = torch.nn.functional.cross_entropy(model(latent), label)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen, losses = seen + len(label), losses + [loss.item()]
    assert seen == len(ds) and all(np.isfinite(losses))


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_bit_flip_in_a_remote_object_fails_verify(stores, s3, fmt):  # noqa: F811
    remote, _ = stores[fmt]
    copy = f"{s3.prefix('flip')}/st.{fmt}"
    src, dst = location_for(remote), location_for(copy)
    victim = next(k for k in sorted(open_store(remote).schema.checksums) if k.endswith(".tar") or k.startswith("latents/c/"))
    for k in src.list():
        data = bytearray(src.read(k))
        if k == victim:
            data[len(data) // 2] ^= 0x10
        dst.put(k, bytes(data))
    res = CliRunner().invoke(main, ["verify", copy])
    assert res.exit_code == 1, res.output
    assert f"checksum mismatch in {victim}" in res.output and "Traceback" not in res.output


def test_a_process_forked_after_obstore_was_used_gets_one_line_not_a_hang(stores):
    remote, _ = stores["zarr"]
    loc = location_for(remote)
    loc.read("zarr.json")  # this process has used obstore
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first request must be refused at once (obstore would hang there)
        try:
            loc.read("zarr.json")
            msg = b"read"
        except StoreError as e:
            msg = str(e).encode()
        os.write(w, msg[:4000])
        os._exit(0)
    os.close(w)
    t0 = time.time()
    while os.waitpid(pid, os.WNOHANG)[0] == 0:
        if time.time() - t0 > 30:
            os.kill(pid, signal.SIGKILL)
            pytest.fail("the forked child hung")
        time.sleep(0.05)
    got = os.read(r, 4000).decode()
    assert "forked after its parent used object storage" in got and "forkserver" in got, got


def _cli(*args):
    return subprocess.Popen([sys.executable, "-m", "latentstore.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # inherits the AWS_* environment the fixture set


def test_kill_9_then_resume_equals_uninterrupted(stores, s3, tree, codec_path):  # noqa: F811
    """Every committed object of a killed-then-resumed conversion has the bytes of an uninterrupted one's."""
    straight = stores["zarr"][0]  # the uninterrupted run, also named st.zarr
    killed = f"{s3.prefix('kill')}/st.zarr"
    args = lambda dst: _convert_args(tree, dst, codec_path, "zarr")  # noqa: E731
    loc = location_for(killed)
    p = _cli(*args(killed))
    t0 = time.time()
    while time.time() - t0 < 120:  # kill as soon as some but not all shards are committed
        if len([k for k in loc.list("_parts/") if "shard-" in k]) >= 2 or p.poll() is not None:
            break
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    committed = [k for k in loc.list("_parts/") if "shard-" in k]
    assert 2 <= len(committed) < open_store(straight).schema.num_shards, "the run finished before it was killed"
    assert any(k.startswith("_locks/") for k in loc.list())  # kill -9 left its lock behind
    with pytest.raises(StoreError, match="incomplete"):
        open_store(killed)  # a half-written remote store is refused, not half-read
    q = _cli(*args(killed), "--resume")
    out, err = q.communicate(timeout=300)
    assert q.returncode == 0, err.decode()[-2000:]
    a, b = s3.keys(straight), s3.keys(killed)
    assert sorted(a) == sorted(b)
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]]


def test_two_writers_the_second_is_refused(stores, s3, tree, codec_path):  # noqa: F811
    dst = f"{s3.prefix('two')}/st.zarr"
    loc = location_for(dst)
    # two writers start at once: the conditional create lets exactly one take the lock
    got, refused = [], []

    def take():
        try:
            got.append(RemoteLock.for_rank(loc, 0, 1).acquire())
        except UsageError as e:
            refused.append(str(e))
    threads = [threading.Thread(target=take) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 1 and len(refused) == 1 and "already being written" in refused[0]
    try:
        res = CliRunner().invoke(main, _convert_args(tree, dst, codec_path, "zarr"))
        assert res.exit_code == 2 and "already being written" in res.output, res.output
        res = CliRunner().invoke(main, ["merge", dst])
        assert res.exit_code == 2 and "being written" in res.output, res.output
    finally:
        got[0].release()
    assert not loc.list("_locks/")


def test_a_lease_that_ran_out_is_taken_over_and_the_old_holder_stops(s3):  # noqa: F811
    loc = location_for(f"{s3.prefix('lease')}/st.zarr")
    old = {"host": "another-host", "pid": 1, "role": "rank-00000", "rank": 0, "world": 1, "renewed": time.time()}
    loc.put("_locks/rank-00000.json", json.dumps(old).encode())
    with pytest.raises(UsageError, match="another-host"):
        RemoteLock.for_rank(loc, 0, 1).acquire()  # a live lease on another host
    holder = RemoteLock.for_rank(loc, 0, 1)
    holder.etag = loc.put("_locks/rank-00000.json", json.dumps({**old, "renewed": time.time() - 7200}).encode())
    new = RemoteLock.for_rank(loc, 0, 1).acquire()  # its lease ran out (LATENTSTORE_LOCK_STALE_S, 3600 s)
    with pytest.raises(StoreError, match="taken over"):
        holder.heartbeat()  # the old holder learns it at its next commit, and commits nothing more
    new.release()


def test_two_ranks_then_merge_commits_once(stores, s3, tree, codec_path):  # noqa: F811
    remote, _ = stores["zarr"]
    dst = f"{s3.prefix('ranks')}/st.zarr"
    r = CliRunner()
    for rank in (0, 1):
        res = r.invoke(main, _convert_args(tree, dst, codec_path, "zarr", "--num-shards", "2", "--shard-id", str(rank)))
        assert res.exit_code == 0, res.output
    with pytest.raises(StoreError, match="incomplete"):
        open_store(dst)  # nothing is readable before the merge
    res = r.invoke(main, ["merge", dst])
    assert res.exit_code == 0, res.output
    assert open_store(dst).schema.checksums == open_store(remote).schema.checksums


def test_one_line_errors(s3, monkeypatch):  # noqa: F811
    from tests.s3server import free_port
    r = CliRunner()
    res = r.invoke(main, ["info", "s3://no-such-bucket-here/x.zarr"])
    assert res.exit_code == 1 and "no such bucket" in res.output, res.output
    res = r.invoke(main, ["verify", f"{s3.prefix('nothing')}/x.zarr"])
    assert res.exit_code == 2 and "no such store" in res.output, res.output
    half = f"{s3.prefix('half')}/x.zarr"
    location_for(half).put("_parts/notes.json", b"{}")  # creation interrupted before the metadata went up
    res = r.invoke(main, ["info", half])
    assert res.exit_code == 1 and "half-written remote store" in res.output, res.output
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    res = r.invoke(main, ["info", f"{s3.prefix('gone')}/x.zarr"])
    assert res.exit_code == 1 and "unreachable" in res.output, res.output
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    res = r.invoke(main, ["info", f"{s3.prefix('nocreds')}/x.zarr"])
    assert res.exit_code == 2 and "no S3 credentials" in res.output, res.output
    for res in (r.invoke(main, ["info", "s3://no-such-bucket-here/x.zarr"]),):
        assert "Traceback" not in res.output


def test_cache_dir_serves_shards_from_local_disk_and_stays_bounded(stores, monkeypatch, tmp_path):
    from latentstore.data.datasets import LatentMapDataset
    from latentstore.store.remote.blobs import RequestCounter
    remote, local = stores["zarr"]
    cache = tmp_path / "cache"
    monkeypatch.setenv("LATENTSTORE_CACHE_DIR", str(cache))

    def read_all():
        ds = LatentMapDataset(remote, train=False, crop=None)  # a new reader: its memory cache starts empty
        RequestCounter.reset()
        out = np.stack([s["latent"].numpy() for s in ds.samples(range(len(ds)))])
        return out, RequestCounter.requests
    first, fetched = read_all()
    files = [p for p in cache.rglob("*") if p.is_file()]
    assert fetched == len(files) > 1  # one GET per shard, each kept on disk
    again, refetched = read_all()
    assert refetched == 0 and np.array_equal(first, again)  # the second reader sent no request
    want = LatentMapDataset(local, train=False, crop=None)
    assert np.array_equal(first, np.stack([s["latent"].numpy() for s in want.samples(range(len(want)))]))
    one = max(p.stat().st_size for p in files)
    monkeypatch.setenv("LATENTSTORE_CACHE_DIR_MB", str(2.5 * one / 2 ** 20))  # room for two shards
    import shutil
    shutil.rmtree(cache)
    read_all()
    assert sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) <= 2.5 * one


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_store_served_over_plain_http_reads_like_the_local_one(stores, tree, codec_path, fmt):
    """http(s):// is read-only and has no listing: objects are found by the names the schema records."""
    from tests.s3server import static_http
    import latentstore as ls
    _, local = stores[fmt]
    with static_http(os.path.dirname(local)) as base:
        url = f"{base}/{os.path.basename(local)}"
        a, b = ls.LatentDataset(local, output="symbols"), ls.LatentDataset(url, output="symbols")
        assert len(a) == len(b) and all(torch.equal(a[i][0], b[i][0]) for i in range(len(a)))
        res = CliRunner().invoke(main, ["info", url, "--json"])
        assert res.exit_code == 0 and json.loads(res.output)["num_samples"] == len(a), res.output
        if fmt == "wds":  # zarr's checked reads are range requests, which python's http.server does not serve
            res = CliRunner().invoke(main, ["verify", url])
            assert res.exit_code == 0 and "ok:" in res.output, res.output
        res = CliRunner().invoke(main, _convert_args(tree, f"{url}-copy", codec_path, fmt))
        assert res.exit_code != 0 and "read-only" in res.output and "Traceback" not in res.output, res.output
        res = CliRunner().invoke(main, ["info", f"{base}/nothing-here"])
        assert res.exit_code == 2 and "no such store" in res.output, res.output


def test_convert_from_webdataset_shards_in_s3_and_over_http(s3, tree, codec_path, tmp_path):  # noqa: F811
    """SRC may be tar shards in object storage (a prefix) or one tar's http(s) URL: the same store as from disk."""
    import io
    import tarfile
    from tests.s3server import static_http
    shards = tmp_path / "shards"
    shards.mkdir()
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(tree) for f in fs)
    for k in range(2):  # two shards, KEY.jpg|png + KEY.cls
        with tarfile.open(shards / f"src-{k:06d}.tar", "w") as tf:
            for i, f in enumerate(files[k::2]):
                key = f"k{k}_{i:04d}"
                tf.add(f, arcname=f"{key}{os.path.splitext(f)[1]}")
                cls = os.path.basename(os.path.dirname(f)).encode()
                ti = tarfile.TarInfo(f"{key}.cls")
                ti.size = len(cls)
                tf.addfile(ti, io.BytesIO(cls))
    src = s3.prefix("src")
    loc = location_for(src)
    for t in sorted(os.listdir(shards)):
        loc.put(t, open(shards / t, "rb").read())
    local = str(tmp_path / "from-disk.zarr")
    make_store(str(shards), local, codec_path, shard_size=4)
    remote_src = str(tmp_path / "from-s3.zarr")
    make_store(src, remote_src, codec_path, shard_size=4)
    a, b = open_store(local), open_store(remote_src)
    assert len(a) == len(b) == len(files) and a.schema.label_names == b.schema.label_names
    assert all(np.array_equal(a.symbols(i), b.symbols(i)) for i in range(len(a)))
    assert list(a.labels) == list(b.labels)
    with static_http(str(shards)) as base:
        one = str(tmp_path / "from-http.zarr")
        make_store(f"{base}/src-000000.tar", one, codec_path, shard_size=4)
        assert len(open_store(one)) == len(files[0::2])
        res = CliRunner().invoke(main, _convert_args(base, str(tmp_path / "x.zarr"), codec_path, "zarr"))
        assert res.exit_code == 2 and "must name a .tar" in res.output, res.output
