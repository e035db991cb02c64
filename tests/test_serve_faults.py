"""An acknowledgement is a promise (issue #26): write failures (ENOSPC, EIO, EROFS) injected at every named write
point of the intake log and of the sealer (`wal.FAULTS`, as Postgres and Kafka test their logs), a real full
tmpfs, and kills after a failed write. Each time: every upload answered 200 is in the store exactly once after
a restart, no upload answered 507 is, `verify` passes, and while the disk refuses writes uploads are 507 and
the service says it is not ready. Plus idempotency keys bound to their bytes (409), and log records the size
of their payload (format 2; format 1 still sealed)."""
import errno
import hashlib
import io
import os
import subprocess

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from benchmarks.serve_faults import disk_full_trial, fault_trial
from latentstore.serve import ServeConfig, create_app
from latentstore.serve.service import _Job
from latentstore.serve.uploads import Rejected
from latentstore.serve.wal import FAULTS, FRAME, WRITE_POINTS, WalRecord, append_durably, read_records
from latentstore.store.append import interrupted_seal
from latentstore.store.verify import verify
from tests.test_serve import image_bytes, stored_shas

ERRNOS = (errno.ENOSPC, errno.EIO, errno.EROFS)
SEALER_POINTS = [p for p in WRITE_POINTS if not p.startswith("intake.") or p == "intake.delete"]


@pytest.fixture(autouse=True)
def no_faults_left():
    FAULTS.clear()
    FAULTS.hits.clear()
    yield
    FAULTS.clear()


def config(store: str, codec_path: str, interval_s: float = 3600.0) -> ServeConfig:
    # sealing by hand (the interval is an hour) unless a test lets the background loop run
    return ServeConfig(store=store, codec=codec_path, size=32, shard_size=4, seal_interval_s=interval_s, device="cpu")


def post(c, data: bytes, **params):
    return c.post("/v1/images", content=data, headers={"content-type": "image/png"}, params=params or None)


def upload(c, i: int, acked: set) -> None:
    r = post(c, image_bytes(i))
    assert r.status_code == 200, r.text
    acked.add(r.json()["sha256"])


def check_store(store: str, acked: set, refused: set = frozenset()) -> None:
    got = stored_shas(store)
    assert len(got) == len(set(got)), "an upload stored twice"
    assert set(got) == acked, (len(acked - set(got)), "acknowledged uploads lost", len(set(got) - acked), "extra")
    assert not set(got) & set(refused)
    rep = verify(store)
    assert rep["ok"], rep["errors"]
    assert interrupted_seal(store) is None


PAIRS = [(p, ERRNOS[n % 3]) for n, p in enumerate(SEALER_POINTS)]  # every point, the errors in turn


@pytest.mark.parametrize("kill", [False, True], ids=["retry", "kill"])
def test_a_failed_write_at_each_seal_point_loses_nothing_and_the_next_round_or_start_seals_it(codec_path, tmp_path,
                                                                                             kill):
    """Per point: reached; uploads 507 and not ready while it fails; the seal marker there exactly when the store
    is mid-seal; after the next round (retry) or a restart (kill) ready again, nothing acknowledged missing."""
    res = fault_trial(str(tmp_path), codec_path, kill, PAIRS, per_round=3, size=32, shard_size=4)
    assert [r["point"] for r in res["rows"] if not r["ok"]] == [], res["rows"]
    assert res["final"]["present"] == 3 * (len(PAIRS) - 1) + 4 and res["ok"], res["final"]


def test_a_failed_intake_append_is_a_507_leaves_nothing_and_clears_once_the_disk_takes_writes(codec_path, tmp_path,
                                                                                          monkeypatch, caplog):
    store = str(tmp_path / "i.zarr")
    acked, refused = set(), set()
    app = create_app(config(store, codec_path))
    cases = [("intake.open", False), ("intake.write", True), ("intake.write", False), ("intake.fsync", False),
             ("intake.write", "torn")]
    with TestClient(app) as c:
        svc = app.state.service
        for n, (point, partial) in enumerate(cases):
            upload(c, 5000 + 10 * n, acked)
            if point == "intake.open":
                svc.intake.rotate()  # the next append opens a segment
            FAULTS.hits.clear()
            FAULTS.arm(point, ERRNOS[n % 3], partial=bool(partial))
            if partial == "torn":  # the torn half cannot be cut away either: the segment is abandoned
                monkeypatch.setattr(os, "ftruncate", lambda fd, n: (_ for _ in ()).throw(OSError(errno.EIO, "EIO")))
            for j in (1, 2):  # the failing batch, then one refused at once (not encoded)
                data = image_bytes(5000 + 10 * n + j)
                r = post(c, data)
                assert r.status_code == 507 and "cannot write the log" in r.json()["error"], (point, r.text)
                refused.add(hashlib.sha256(data).hexdigest())
            monkeypatch.undo()
            assert FAULTS.hits.get(point) == 1 and svc.ready_reason() is not None
            assert (svc.intake._f is None) == (partial == "torn" or point == "intake.open")
            svc.health.probe(svc.intake)  # what the background loop does every round
            assert svc.ready_reason() is None
            upload(c, 5000 + 10 * n + 3, acked)
        FAULTS.arm("intake.rotate", errno.EROFS)
        with pytest.raises(OSError):
            svc.intake.rotate()
        upload(c, 5999, acked)  # the segment stays this process's open one
        svc.intake.rotate()
        svc.sealer.seal_once()
    assert any("torn tail" in r.message for r in caplog.records)  # the abandoned segment's half record
    check_store(store, acked, refused)


def test_a_reused_idempotency_key_with_other_bytes_is_a_409(codec_path, tmp_path):
    app = create_app(config(str(tmp_path / "key.zarr"), codec_path))
    with TestClient(app) as c:
        first = post(c, image_bytes(1), key="k-1")
        assert first.status_code == 200
        for body in (image_bytes(2), b"", b"not an image"):
            r = post(c, body, key="k-1")
            assert r.status_code == 409 and "k-1" in r.json()["error"], r.text
        again = post(c, image_bytes(1), key="k-1")
        assert again.status_code == 200 and again.json()["id"] == first.json()["id"] and again.json()["duplicate"]
        svc = app.state.service
        svc.intake.rotate()
        svc.sealer.seal_once()  # from the index now, not from memory
        assert post(c, image_bytes(3), key="k-1").status_code == 409
        assert post(c, image_bytes(1), key="k-1").json()["id"] == first.json()["id"]
        assert post(c, image_bytes(3), key="k-3").status_code == 200
        jobs = []  # one key, other bytes, in one batch: the first is stored, the second a 409
        for i in (20, 21):
            data = image_bytes(i)
            sha = hashlib.sha256(data).hexdigest()
            rgb, shape = svc._decode(data)
            jobs.append(_Job(rgb, {"id": sha[:32], "sha256": sha, "label": None, "key": "k-9", "size": list(shape),
                                   "shape": list(shape), "source_bytes": len(data), "created": 0.0}))
        first_out, second_out = svc._run_batch(jobs)
        assert first_out["key"] == "k-9" and isinstance(second_out, Rejected) and second_out.status == 409
        assert svc.lookup(jobs[0].meta["id"]) is not None and svc.lookup(jobs[1].meta["id"]) is None


def test_a_log_record_is_its_payload_and_metadata_and_format_1_records_still_seal(codec_path, tmp_path):
    import json
    store = str(tmp_path / "r.zarr")
    app = create_app(config(store, codec_path))
    with TestClient(app) as c:
        svc = app.state.service
        sha = post(c, image_bytes(7)).json()["sha256"]
        seg = svc.intake.rotate()
        (rec,) = read_records(seg)[0]
        body_json = json.dumps({**rec.meta, "blobs": [len(rec.payload)]}, sort_keys=True, separators=(",", ":"))
        assert len(rec.blobs) == 1 and len(rec.to_bytes()) == FRAME.size + 4 + len(body_json) + len(rec.payload)
        C, h, w = rec.meta["latent_shape"]
        assert len(rec.to_bytes()) < len(rec.payload) + 1024 and C * h * w > len(rec.payload)
        # a format-1 record (symbols + payload), as an older service wrote them
        rgb = svc.engine.prepare(np.asarray(Image.open(io.BytesIO(image_bytes(8))).convert("RGB")))
        (e,) = svc.engine.run([rgb])
        old_sha = "ab" * 32
        meta = {**rec.meta, "sha256": old_sha, "id": old_sha[:32], "key": None}
        meta.pop("format")
        with open(os.path.join(store, "_serve", "intake", "old-00000001.log"), "ab") as f:
            append_durably(f, [WalRecord(meta, [e.symbols.tobytes(), e.payload])], "intake")
        svc.sealer.seal_once()
    import latentstore as ls
    s = ls.open_store(store)
    got = {s.meta(i)["source"].removeprefix("sha256:"): i for i in range(len(s))}
    assert set(got) == {sha, old_sha}
    assert np.array_equal(s.symbols(got[old_sha]), e.symbols)
    assert verify(store)["ok"]


def test_a_full_tmpfs_loses_no_acknowledged_upload_and_recovers_when_space_returns(codec_path, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({(r.stderr.strip().splitlines() or ['not permitted'])[0]})")
    try:
        res = disk_full_trial(str(mnt), codec_path, uploads=200, free_kb=64, seed=0, time_limit_s=90, refusals=10,
                              args=["--size", "32", "--shard-size", "4"])
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    assert res["refused"] > 0 and res["acked"] > 0, res  # the disk did fill, and uploads were stored before
    assert res["not_ready_while_full"] and res["ready_again"] and res["after_space_returned"] == 200, res
    assert res["lost"] == 0 and res["twice"] == 0 and res["refused_stored"] == 0 and res["verify_ok"], res
    assert res["present"] == res["acked"] and res["sigterm_rc"] == 0, res


def test_a_segment_being_created_is_never_taken_as_orphaned(tmp_path, monkeypatch):
    """The sealer's closed_segments runs while the batcher opens a new segment, between the file's creation and
    its flock (where the GIL may switch threads). A segment created under its `.open` name was then unlocked:
    taken as orphaned (renamed .log) while its writer went on appending, so those acknowledged records would be
    sealed away or lost, and the next rotate failed with FileNotFoundError (seen under load)."""
    import fcntl

    from latentstore.serve import wal
    d = str(tmp_path / "intake")
    log = wal.IntakeLog(d, "owner")
    taken = []
    real_flock = fcntl.flock

    def flock_after_a_sealer_look(fd, op):  # the sealer thread's turn comes just before the writer's flock
        if op & fcntl.LOCK_EX and not taken:
            taken.append(None)  # once (closed_segments flocks too)
            taken[0] = wal.closed_segments(d)
        return real_flock(fd, op)
    monkeypatch.setattr(wal.fcntl, "flock", flock_after_a_sealer_look)
    recs = [WalRecord.of_payload({"sha256": f"{i:064x}", "slot": i}, bytes([i]) * 10) for i in range(3)]
    log.append(recs[:2])
    log.append(recs[2:])
    assert taken == [[]]  # the sealer saw no segment it could take
    closed = log.rotate()  # FileNotFoundError before the fix
    got, _, _ = read_records(closed)
    assert [r.meta["sha256"] for r in got] == [r.meta["sha256"] for r in recs]
    assert sorted(os.listdir(d)) == [os.path.basename(closed)]
