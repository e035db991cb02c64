"""Issue #26's write-failure trials for the ingest service, long versions (tests/test_serve_faults.py runs short ones):

    .venv/bin/python benchmarks/serve_faults.py [--codec ls-c16] [--tmpfs-mb 8] [--uploads 800] [--out DIR]

1. Disk full: `latentstore serve` (a real subprocess, real HTTP) on a store on a fresh tmpfs (mounted here,
   unmounted after; --dir to use a folder you mounted yourself). A ballast file leaves --free-kb free, one client
   uploads distinct real photos until the disk has refused --refusals of them; then the ballast goes, the
   server must become ready by itself and store one more upload; then kill -9, a restart, SIGTERM. Counted:
   uploads answered 200 (acknowledged) against those present in the store after the restart, exactly once; the
   507s, and whether any refused upload was stored; /readyz while full; `verify`.
2. Injected write errors: every named write point of the sealer (`latentstore.serve.wal.WRITE_POINTS`) x ENOSPC,
   EIO, EROFS, each in two modes: `retry` (the failed round is followed by another round in the same process)
   and `kill` (the process is left as kill -9 leaves it, and restarted). Per row: the point was reached, uploads
   were 507 and /readyz not ready while it failed, the seal marker was there exactly when the store was mid-seal,
   and after the next round (or the restart) no acknowledged upload was missing or stored twice.
Prints one table per trial and writes OUT/serve_faults.md and .json.
"""
from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.serve import ServerProcess, make_images, store_sources  # noqa: E402

ERRNOS = (errno.ENOSPC, errno.EIO, errno.EROFS)


def _count(store: str, acked: set, refused: set) -> dict:
    from latentstore.store.verify import verify
    got = store_sources(store)
    rep = verify(store)
    return {"present": len(set(got) & acked), "lost": len(acked - set(got)), "twice": len(got) - len(set(got)),
            "strangers": len(set(got) - acked - refused), "refused_stored": len(set(got) & refused),
            "verify_ok": bool(rep["ok"]), "verify_errors": rep["errors"][:3]}


# ------------------------------------------------------------------------------------------ disk full
def disk_full_trial(mnt: str, codec: str, uploads: int = 800, free_kb: int = 256, seed: int = 0,
                    time_limit_s: float = 300.0, refusals: int = 20, args=(), log=print) -> dict:
    """See the module's docstring (1). `mnt`: an empty, small file system (a tmpfs)."""
    import httpx
    store = os.path.join(mnt, "full.zarr")
    images = make_images(uploads + 1, seed=seed, size=96)
    server_log = os.path.join(tempfile.gettempdir(), f"serve_faults-{os.getpid()}.log")  # not on the full disk
    server = ServerProcess(store, codec, args, log=server_log)
    ballast = os.path.join(mnt, "ballast")
    st = os.statvfs(mnt)
    fill = max(0, st.f_bavail * st.f_frsize - free_kb * 1024)
    with open(ballast, "wb") as f:  # the rest of the disk taken: --free-kb left
        for off in range(0, fill, 1 << 20):
            f.write(b"\0" * min(1 << 20, fill - off))
    acked, refused, statuses, t0 = {}, set(), {}, time.monotonic()
    not_ready_while_full, first_refusal_at = False, None
    with httpx.Client(timeout=60) as c:
        for i, (data, ctype) in enumerate(images[:-1]):
            if len(refused) >= refusals or time.monotonic() - t0 > time_limit_s:
                break
            r = c.post(f"{server.url}/v1/images", content=data, headers={"content-type": ctype})
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            sha = hashlib.sha256(data).hexdigest()
            if r.status_code == 200:
                acked[sha] = r.json()["id"]
            else:
                refused.add(sha)
                first_refusal_at = first_refusal_at if first_refusal_at is not None else i
                not_ready_while_full |= c.get(f"{server.url}/readyz").status_code == 503
        os.remove(ballast)  # space returns: the server must recover by itself
        deadline, ready_again = time.monotonic() + 30, False
        while time.monotonic() < deadline and not ready_again:
            ready_again = c.get(f"{server.url}/readyz").status_code == 200
            time.sleep(0.2)
        data, ctype = images[-1]
        r = c.post(f"{server.url}/v1/images", content=data, headers={"content-type": ctype})
        after = r.status_code
        if after == 200:
            acked[hashlib.sha256(data).hexdigest()] = r.json()["id"]
    server.kill9()
    server = ServerProcess(store, codec, args, log=server.log)  # the restart: recovery, then ready
    rc = server.stop()
    res = {"uploads": sum(statuses.values()) + 1, "acked": len(acked), "refused": len(refused), "statuses": statuses,
           "acked_before_first_refusal": first_refusal_at, "not_ready_while_full": not_ready_while_full,
           "ready_again": ready_again, "after_space_returned": after, "sigterm_rc": rc,
           **_count(store, set(acked), refused)}
    log(f"disk full: {res}")
    return res


# ------------------------------------------------------------------------------------------ injected faults
class _Service:
    """The app in-process (its lifespan run by starlette's TestClient), sealing only when told."""

    def __init__(self, store: str, codec: str, size: int, shard_size: int):
        from fastapi.testclient import TestClient
        from latentstore.serve import ServeConfig, create_app
        self.app = create_app(ServeConfig(store=store, codec=codec, size=size, shard_size=shard_size,
                                          seal_interval_s=3600.0, device="cpu"))
        self.client = TestClient(self.app).__enter__()
        self.svc = self.app.state.service

    def post(self, data: bytes, ctype: str):
        return self.client.post("/v1/images", content=data, headers={"content-type": ctype})

    def stop(self) -> None:
        self.client.__exit__(None, None, None)

    def leave_as_killed(self) -> None:
        """What kill -9 leaves: no drain, no final seal; the locks released as the kernel would release them."""
        svc = self.svc
        svc.stop = lambda: None
        svc._stop.set()
        svc._wake.set()
        svc.batcher.drain()
        svc.sealer.close()
        svc._lock_f.close()
        if svc.intake._f is not None:
            svc.intake._f.close()
        self.stop()


def fault_trial(work: str, codec: str, kill: bool, pairs, per_round: int = 3, size: int = 32, shard_size: int = 4,
                seed: int = 0, log=print) -> dict:
    """See the module's docstring (2): one store, one row per (write point, errno) in `pairs`."""
    from latentstore.serve.wal import FAULTS, WRITE_POINTS
    from latentstore.store.append import SEAL_MARKER, interrupted_seal
    marked = WRITE_POINTS[WRITE_POINTS.index("store.grow"): WRITE_POINTS.index("seal.unmark") + 1]
    store = os.path.join(work, f"faults-{'kill' if kill else 'retry'}-{seed}.zarr")
    images = iter(make_images(len(pairs) * (max(per_round, shard_size) + 1) + 1, seed=seed, size=64))
    acked, refused, rows = set(), set(), []
    s = _Service(store, codec, size, shard_size)
    try:
        for point, err in pairs:
            # a journal is closed only when its shard fills: that round uploads a whole shard's worth
            for _ in range(shard_size if point == "journal.close" else per_round):
                data, ctype = next(images)
                r = s.post(data, ctype)
                if r.status_code != 200:
                    raise AssertionError(f"before {point}: an upload answered {r.status_code}: {r.text}")
                acked.add(r.json()["sha256"])
            s.svc.intake.rotate()
            FAULTS.clear()
            FAULTS.hits.clear()
            FAULTS.arm(point, err, partial=point == "journal.write")
            try:
                s.svc.sealer.seal_once()
                failed = False
            except OSError:
                failed = True
            row = {"point": point, "errno": errno.errorcode[err], "mode": "kill" if kill else "retry",
                   "reached": failed and FAULTS.hits.get(point) == 1, "not_ready": s.svc.ready_reason() is not None,
                   "marker_ok": os.path.exists(os.path.join(store, SEAL_MARKER)) == (point in marked)}
            data, ctype = next(images)
            r = s.post(data, ctype)
            row["refused_507"] = r.status_code == 507
            if r.status_code != 200:
                refused.add(hashlib.sha256(data).hexdigest())
            else:
                acked.add(r.json()["sha256"])
            if kill:
                s.leave_as_killed()
                s = _Service(store, codec, size, shard_size)  # the restart repairs and seals
            else:
                s.svc.intake.rotate()
                s.svc.sealer.seal_once()
            row["ready_after"] = s.svc.ready_reason() is None and interrupted_seal(store) is None
            got = store_sources(store)
            row.update(acked=len(acked), lost=len(acked - set(got)), twice=len(got) - len(set(got)))
            row["ok"] = all(row[k] for k in ("reached", "not_ready", "marker_ok", "refused_507", "ready_after")) \
                and row["lost"] == 0 and row["twice"] == 0
            rows.append(row)
    finally:
        FAULTS.clear()
        s.stop()
    final = _count(store, acked, refused)
    log(f"injected faults ({'kill' if kill else 'retry'}): {sum(r['ok'] for r in rows)}/{len(rows)} rows ok; {final}")
    return {"rows": rows, "final": final, "ok": all(r["ok"] for r in rows) and final["lost"] == 0
            and final["twice"] == 0 and final["refused_stored"] == 0 and final["verify_ok"]}


# ------------------------------------------------------------------------------------------ main
def _mount(size_mb: int) -> str:
    mnt = tempfile.mkdtemp(prefix="serve_faults-")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", mnt], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"cannot mount a tmpfs ({r.stderr.strip()}); run as root, or pass --dir")
    return mnt


def _umount(mnt: str) -> None:
    if subprocess.run(["umount", mnt], capture_output=True).returncode:
        subprocess.run(["umount", "-l", mnt], capture_output=True)
    os.rmdir(mnt)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--codec", default="ls-c16", help="the servers' --codec (the fault trials use it too)")
    p.add_argument("--tmpfs-mb", type=int, default=8, help="size of the disk-full trial's tmpfs")
    p.add_argument("--dir", default=None, help="an empty small file system mounted by you, instead of a tmpfs")
    p.add_argument("--free-kb", type=int, default=1024, help="space left free by the ballast")
    p.add_argument("--uploads", type=int, default=800, help="uploads at most in the disk-full trial")
    p.add_argument("--per-round", type=int, default=3, help="uploads before each injected fault")
    p.add_argument("--skip-disk-full", action="store_true")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    a = p.parse_args(argv)
    from latentstore.serve.wal import WRITE_POINTS
    t0 = time.time()
    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "codec": a.codec,
           "command": "python benchmarks/serve_faults.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    if not a.skip_disk_full:
        mnt = a.dir or _mount(a.tmpfs_mb)
        try:
            out["disk_full"] = disk_full_trial(mnt, a.codec, a.uploads, a.free_kb)
        finally:
            if a.dir is None:
                _umount(mnt)
    points = [q for q in WRITE_POINTS if not q.startswith("intake.") or q == "intake.delete"]
    pairs = [(q, e) for q in points for e in ERRNOS]
    work = tempfile.mkdtemp(prefix="serve_faults-work-")
    try:
        out["faults"] = {m: fault_trial(work, a.codec, m == "kill", pairs, a.per_round, size=64, shard_size=8)
                         for m in ("retry", "kill")}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out["seconds"] = round(time.time() - t0, 1)
    md = [f"# serve_faults: {out['date']}, codec {a.codec}", "", f"Command: `{out['command']}`", ""]
    if "disk_full" in out:
        d = out["disk_full"]
        md += ["| disk full | uploads | 200 | 507/other | 200s before the first refusal | /readyz 503 while full | "
               "ready again | upload after | present once after restart | lost | twice | refused stored | verify |",
               "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
               f"| tmpfs {a.tmpfs_mb} MB, {a.free_kb} KB free | {d['uploads']} | {d['acked']} | {d['refused']} | "
               f"{d['acked_before_first_refusal']} | {d['not_ready_while_full']} | {d['ready_again']} | "
               f"{d['after_space_returned']} | {d['present']} | {d['lost']} | {d['twice']} | {d['refused_stored']} | "
               f"{d['verify_ok']} |", ""]
    md += ["| mode | rows (point x errno) | rows ok | acknowledged | lost | twice | refused stored | verify |",
           "|---|---|---|---|---|---|---|---|"]
    for m, f in out["faults"].items():
        fin = f["final"]
        md.append(f"| {m} | {len(f['rows'])} | {sum(r['ok'] for r in f['rows'])} | {fin['present'] + fin['lost']} | "
                  f"{fin['lost']} | {fin['twice']} | {fin['refused_stored']} | {fin['verify_ok']} |")
    bad = [f"{r['mode']} {r['point']} {r['errno']}: {r}" for f in out["faults"].values() for r in f["rows"]
           if not r["ok"]]
    md += ["", "Rows not ok: " + ("none" if not bad else "; ".join(bad))]
    print("\n".join(md))
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "serve_faults.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    with open(os.path.join(a.out, "serve_faults.json"), "w") as f:
        json.dump(out, f, indent=1, default=str)
    ok = out["faults"]["retry"]["ok"] and out["faults"]["kill"]["ok"]
    if "disk_full" in out:
        d = out["disk_full"]
        ok = ok and d["lost"] == 0 and d["twice"] == 0 and d["refused_stored"] == 0 and d["verify_ok"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
