"""The ingest service (`latentstore serve`) under load, over loopback, and killed with -9.

    .venv/bin/python benchmarks/serve.py [--codec ls-c16] [--max-batch 16] [--out benchmarks/results]
    .venv/bin/python benchmarks/serve.py --durability-trials 10 [--seed 0]

Load (the default): two `latentstore serve` subprocesses on 127.0.0.1, each on a fresh store, same codec:
(a) dynamic batching (`--max-batch 16`) and (b) one request at a time (`--max-batch 1`). A closed-loop load
generator (threads sharing one bounded httpx pool) posts distinct real JPEG/PNG crops at client concurrency 1, 8
and 32; each row is --repeats bursts alternating between the two servers (the same images to both), so both see
the same machine; every burst is bounded by a request count and by seconds. Then (a) gets an open-loop overload at
twice its measured concurrency-32 rate: how many get 503, the p99 of the accepted ones, its RSS sampled every
0.25 s, whether it is still alive. Beside them, the service's engine alone in this process (no HTTP) at batch 1
and at --max-batch, and each server's own per-batch compute and WAL times from its /metrics. The targets of
issue #20 are reported, not asserted: (a) >= 2x (b) in requests/s at concurrency 32; p99 of (a) < 2x its p50
at concurrency 8.

Durability (`--durability-trials N`): per trial, a fresh store, several client threads uploading distinct
images, SIGKILL of the server's process group at a seeded random moment (a random number of 200s into the
uploads, plus a random 0-200 ms), a restart on the same store; every sha256 that got a 200 must be served by
GET /v1/images/{id}, and after a SIGTERM (exit 0) be in the store exactly once (read with latentstore.open_store
and LatentDataset) beside nothing that no client sent, and `latentstore verify` must pass. One line per trial.

Images: seeded random crops (shorter side scaled to 256, ~384 or ~512, then a 256 px crop, a random flip) of
scikit-image's, scikit-learn's and matplotlib's photos and foolbox's ImageNet JPEGs, encoded as JPEG (q 80-95)
or, one in four, PNG: every request's bytes are distinct, so the server's dedup never skips the work.
Upload kinds (`--kinds`, issue #30; benchmarks/serve_kinds.py): JPEG at full resolution, JPEG at 256 px and the
client's latents (`upload --encode`) against one server, at concurrency 1/8/32, with the server's CPU-seconds per
upload, and again with --classifier when one is given.
Results: OUT/serve.md and OUT/serve.json (machine, load average, date, commit, codec, every row); each mode
rewrites its own section.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import hashlib
import io
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


# ----------------------------------------------------------------------------------------------- the server process
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    out = []
    for tid in os.listdir(f"/proc/{pid}/task") if os.path.isdir(f"/proc/{pid}/task") else []:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants (MB), from /proc; 0 when it is gone."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next((int(l.split()[1]) for l in f if l.startswith("VmRSS:")), 0)
        except OSError:
            continue
        todo += _children(p)
    return total / 1024


class ServerProcess:
    """`latentstore serve STORE --codec C` on 127.0.0.1 and a free port, its output in a log file; ready on return
    (GET /readyz answered 200). Its own session, so kill -9 takes any helper processes with it."""

    def __init__(self, store: str, codec: str, args=(), log: str | None = None, token: str | None = None,
                 ready_timeout_s: float = 180.0, port: int | None = None):
        self.store, self.port, self.token = store, port or free_port(), token
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log or store.rstrip("/") + f".serve-{self.port}.log"
        cmd = [sys.executable, "-m", "latentstore.cli", "serve", store, "--codec", codec, "--host", "127.0.0.1",
               "--port", str(self.port), *map(str, args)]
        args = [str(x) for x in args]
        self.workers = int(args[args.index("--workers") + 1]) if "--workers" in args else 1
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._logf, stderr=subprocess.STDOUT, cwd=ROOT,
                                     start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.wait_ready(ready_timeout_s)

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def log_tail(self, n: int = 15) -> str:
        with open(self.log, errors="replace") as f:
            return "".join(f.readlines()[-n:])

    def wait_ready(self, timeout_s: float) -> None:
        """Until /readyz is 200, from every worker with `--workers N` (each new connection may reach any worker:
        a load started while one worker still loads its models would all go to the others)."""
        import httpx
        deadline, ready = time.monotonic() + timeout_s, set()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._logf.close()
                raise RuntimeError(f"server exited with {self.proc.returncode} before it was ready:\n{self.log_tail()}")
            try:
                r = httpx.get(f"{self.url}/readyz", headers=self.headers(), timeout=2)
                if r.status_code == 200:
                    ready.add(r.json().get("pid"))
                    if len(ready) >= self.workers:
                        return
                    time.sleep(0.02)
                    continue
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.kill9()
        raise RuntimeError(f"server not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_mb(self) -> float:
        return tree_rss_mb(self.proc.pid) if self.alive() else 0.0

    def kill9(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self._logf.close()

    def stop(self, timeout_s: float = 120.0) -> int | None:
        """SIGTERM (drain, seal, exit); the exit code, or None when it had to be killed after timeout_s."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill9()
                return None
        self._logf.close()
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.alive():
            self.stop()


# ------------------------------------------------------------------------------------------------------ the images
@functools.lru_cache(maxsize=1)
def _sources() -> list[np.ndarray]:
    import importlib.util
    from latentstore.data.imageio import load_image
    from latentstore.data.photos import all_photos, resize_shorter
    rgbs = [resize_shorter(p.load(), 512) for p in all_photos()
            if p.name.split(":")[0] in ("skimage", "sklearn", "matplotlib")]
    spec = importlib.util.find_spec("foolbox")
    if spec and spec.submodule_search_locations:
        data = os.path.join(list(spec.submodule_search_locations)[0], "data")
        rgbs += [load_image(os.path.join(data, f)) for f in sorted(os.listdir(data))
                 if f.startswith("imagenet_") and f.endswith(".jpg")]
    return [r for r in rgbs if min(r.shape[:2]) >= 256]


def make_images(n: int, seed: int = 0, size: int = 256) -> list[tuple[bytes, str]]:
    """n distinct (bytes, content type): seeded crops of real photos as JPEG (q 80-95) or, one in four, PNG."""
    from PIL import Image
    from latentstore.data.photos import resize_shorter
    rng, out, seen, srcs, scaled = np.random.default_rng(seed), [], set(), _sources(), {}
    while len(out) < n:
        k = (int(rng.integers(len(srcs))), int(rng.integers(3)))  # a photo, at one of three scales
        if k not in scaled:
            short = min(srcs[k[0]].shape[:2])
            scaled[k] = resize_shorter(srcs[k[0]], (size, (size + short) // 2, short)[k[1]])
        rgb = scaled[k]
        y, x = (int(rng.integers(0, d - size + 1)) for d in rgb.shape[:2])
        crop = rgb[y: y + size, x: x + size][:, ::-1 if rng.random() < 0.5 else 1]
        buf, png = io.BytesIO(), rng.random() < 0.25
        Image.fromarray(np.ascontiguousarray(crop)).save(buf, "PNG" if png else "JPEG",
                                                         **({} if png else {"quality": int(rng.integers(80, 96))}))
        data = buf.getvalue()
        if hashlib.sha256(data).digest() not in seen:
            seen.add(hashlib.sha256(data).digest())
            out.append((data, "image/png" if png else "image/jpeg"))
    return out


# ----------------------------------------------------------------------------------------------------------- load
def percentile_ms(lat: list[float], q: float) -> float | None:
    return round(float(np.percentile(lat, q)) * 1000, 1) if lat else None


def _row(lat: list[float], statuses: list, wall: float) -> dict:
    ok = [t for t, s in zip(lat, statuses) if s == 200]
    return {"requests": len(statuses), "ok": len(ok), "rejected_503": sum(s == 503 for s in statuses),
            "errors": sum(s not in (200, 503) for s in statuses), "seconds": round(wall, 2),
            "rps": round(len(ok) / wall, 2) if wall > 0 else 0.0, "p50_ms": percentile_ms(ok, 50),
            "p99_ms": percentile_ms(ok, 99)}


def closed_loop(url: str, images, concurrency: int, time_limit_s: float, headers=None) -> dict:
    """`concurrency` threads, each posting the next image as soon as its last answer came; at most len(images)
    requests, none started after time_limit_s. Accepted answers are checked against the bytes' sha256."""
    import httpx
    lock, nxt, lat, statuses, bad = threading.Lock(), [0], [], [], []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(limits=limits, timeout=120, headers=headers or {}) as client:
        t0 = time.perf_counter()
        deadline = t0 + time_limit_s

        def worker():
            while time.perf_counter() < deadline:
                with lock:
                    i, nxt[0] = nxt[0], nxt[0] + 1
                if i >= len(images):
                    return
                data, ctype = images[i]
                t = time.perf_counter()
                try:  # a dict: multipart parts (a native store's latent upload: `file` + `companion`)
                    r = client.post(f"{url}/v1/images", files=data) if isinstance(data, dict) else \
                        client.post(f"{url}/v1/images", content=data, headers={"Content-Type": ctype})
                    status = r.status_code
                    sent = data["file"][1] if isinstance(data, dict) else data
                    if status == 200 and r.json().get("sha256") != hashlib.sha256(sent).hexdigest():
                        bad.append(i)
                except httpx.TransportError:
                    status = None
                with lock:
                    lat.append(time.perf_counter() - t)
                    statuses.append(status)

        threads = [threading.Thread(target=worker) for _ in range(concurrency)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        row = _row(lat, statuses, time.perf_counter() - t0)
    row.update(concurrency=concurrency, sha_mismatch=len(bad),
               _ok_lat=[t for t, st in zip(lat, statuses) if st == 200])
    return row


def pooled(parts: list[dict]) -> dict:
    """One row from several bursts of the same row (interleaved with the other server's): counts and seconds
    added, latency percentiles over every accepted request, and each burst's req/s kept."""
    lat = [t for p in parts for t in p["_ok_lat"]]
    secs = sum(p["seconds"] for p in parts)
    ok = sum(p["ok"] for p in parts)
    return {"concurrency": parts[0]["concurrency"], "requests": sum(p["requests"] for p in parts), "ok": ok,
            "rejected_503": sum(p["rejected_503"] for p in parts), "errors": sum(p["errors"] for p in parts),
            "sha_mismatch": sum(p["sha_mismatch"] for p in parts), "seconds": round(secs, 2),
            "rps": round(ok / secs, 2) if secs else 0.0, "rps_bursts": [p["rps"] for p in parts],
            "p50_ms": percentile_ms(lat, 50), "p99_ms": percentile_ms(lat, 99)}


def server_batches(url: str, headers=None) -> dict:
    """From the server's /metrics: its model batches (count, mean size), compute and WAL append+fsync per batch."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families
    got = {}
    for fam in text_string_to_metric_families(httpx.get(f"{url}/metrics", headers=headers or {}, timeout=30).text):
        for smp in fam.samples:
            if smp.name.endswith(("_sum", "_count")) and not smp.labels:
                got[smp.name] = smp.value
    n = got.get("latentstore_batch_size_count", 0)

    def per(name):  # mean milliseconds per observation
        c = got.get(f"{name}_count")
        return round(1e3 * got.get(f"{name}_sum", 0) / c, 1) if c else None
    return {"batches": int(n), "mean_batch": round(got.get("latentstore_batch_size_sum", 0) / n, 2) if n else None,
            "compute_ms_per_batch": per("latentstore_compute_seconds"),
            "wal_ms_per_batch": per("latentstore_wal_fsync_seconds")}


def engine_ceiling(codec: str, max_batch: int, images, rounds: int = 3) -> dict:
    """The service's own engine in this process, no HTTP: ms per image at batch 1 and at max_batch, interleaved
    rounds: the model's own gain from batching, without a server's threads around it."""
    from latentstore.data.imageio import decode_image_bytes
    from latentstore.serve.engine import IngestEngine
    e = IngestEngine(codec, None, "auto")
    e.bind(e.new_schema(256, 256, "bench"))
    rgbs = [e.prepare(decode_image_bytes(d)) for d, _ in images[:max_batch]]
    e.run(rgbs[:2])
    ms = {1: [], max_batch: []}
    for _ in range(rounds):
        for b in ms:
            t = time.perf_counter()
            for i in range(0, max_batch, b):
                e.run(rgbs[i: i + b])
            ms[b].append((time.perf_counter() - t) / max_batch * 1e3)
    one, many = float(np.median(ms[1])), float(np.median(ms[max_batch]))
    return {"device": str(e.device), "batch": max_batch,
            "ms_per_image_batch1": round(one, 1), "ms_per_image_batched": round(many, 1),
            "speedup": round(one / many, 2), "rounds": rounds}


def open_loop(url: str, images, rate: float, seconds: float, server: ServerProcess, headers=None,
              max_inflight: int = 512) -> dict:
    """Requests at a fixed `rate` per second for `seconds` (at most len(images)), whatever the answers: the
    excess must get 503 quickly. The server's RSS is sampled every 0.25 s meanwhile."""
    import asyncio
    import httpx
    n = min(len(images), int(rate * seconds))
    lat, statuses, rss, done = [], [], [], threading.Event()
    flight = {"now": 0, "peak": 0, "last_sent": 0.0}  # requests sent and not yet answered, as the client sees them

    def sample():
        t0 = time.perf_counter()
        while not done.is_set():
            rss.append((round(time.perf_counter() - t0, 2), round(server.rss_mb(), 1)))
            done.wait(0.25)

    server_ms: list[float] = []

    async def run() -> float:
        limits = httpx.Limits(max_connections=max_inflight, max_keepalive_connections=max_inflight)
        async with httpx.AsyncClient(limits=limits, timeout=120, headers=headers or {}) as client:
            async def one(i):
                data, ctype = images[i]
                t = time.perf_counter()
                flight["now"] += 1
                flight["peak"] = max(flight["peak"], flight["now"])
                try:
                    r = await client.post(f"{url}/v1/images", content=data, headers={"Content-Type": ctype})
                    status = r.status_code
                    if status == 200:  # the server's own view: from its handler's start to its answer
                        server_ms.append(float(r.json().get("timings_ms", {}).get("total", 0.0)))
                except httpx.TransportError:
                    status = None
                flight["now"] -= 1
                lat.append(time.perf_counter() - t)
                statuses.append(status)

            t0, tasks = time.perf_counter(), []
            for i in range(n):
                await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
                tasks.append(asyncio.create_task(one(i)))
            flight["last_sent"] = time.perf_counter() - t0
            await asyncio.gather(*tasks)
            return time.perf_counter() - t0

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        wall = asyncio.run(run())
    finally:
        done.set()
        sampler.join()
    row = _row(lat, statuses, wall)
    mbs = [m for _, m in rss if m > 0]
    q = max(1, len(mbs) // 4)
    row.update(rate=round(rate, 1), duration_s=seconds, peak_in_flight=flight["peak"],
               sent_rate=round(n / flight["last_sent"], 1) if flight["last_sent"] else None,  # what the client managed
               p50_503_ms=percentile_ms([t for t, st in zip(lat, statuses) if st == 503], 50),  # how fast a refusal
               p99_503_ms=percentile_ms([t for t, st in zip(lat, statuses) if st == 503], 99),
               server_p50_ms=round(float(np.percentile(server_ms, 50)), 1) if server_ms else None,
               server_p99_ms=round(float(np.percentile(server_ms, 99)), 1) if server_ms else None,
               drain_s=round(wall - flight["last_sent"], 2), rss_mb_series=rss, rss_mb_first=mbs[0] if mbs else None,
               rss_mb_max=max(mbs) if mbs else None, rss_mb_last=mbs[-1] if mbs else None,
               rss_growth=round(float(np.mean(mbs[-q:]) / np.mean(mbs[:q])), 3) if mbs else None)
    return row


# ----------------------------------------------------------------------------------------------------- durability
def store_sources(store: str) -> list[str]:
    """The sha256 of every sample of a store, read the way training reads it (open_store, LatentDataset)."""
    from latentstore import LatentDataset, open_store
    s = open_store(store)
    n = len(LatentDataset(store, output="symbols"))
    if n != len(s):
        raise AssertionError(f"LatentDataset sees {n} samples, open_store {len(s)}")
    src = [str(s.meta(i).get("source", "")) for i in range(len(s))]
    return [x.split(":", 1)[1] if x.startswith("sha256:") else x for x in src]


def _upload_until_killed(url: str, images, threads: int, after_acks: int, jitter_s: float, kill,
                         time_limit_s: float = 120.0) -> tuple[dict, set, list, int, float]:
    """`threads` clients post their share of `images` one by one; kill() runs jitter_s after the after_acks-th 200
    (so it lands while uploads are in flight, whatever the machine's speed). Returns (sha256 -> id of every 200,
    sha256s sent whose answer never came, other statuses, 200s counted at the kill, seconds from start to kill)."""
    import httpx
    acked, in_doubt, other, lock = {}, set(), [], threading.Lock()

    def client(part):
        with httpx.Client(timeout=30) as c:
            for data, ctype in part:
                sha = hashlib.sha256(data).hexdigest()
                try:
                    r = c.post(f"{url}/v1/images", content=data, headers={"Content-Type": ctype})
                except httpx.TransportError:  # the server is gone: this one may or may not have been stored
                    with lock:
                        in_doubt.add(sha)
                    return
                with lock:
                    if r.status_code == 200:
                        acked[sha] = r.json()["id"]
                    else:
                        other.append(r.status_code)

    ths = [threading.Thread(target=client, args=(images[i::threads],)) for i in range(threads)]
    t0 = time.perf_counter()
    for th in ths:
        th.start()
    while len(acked) < after_acks and any(th.is_alive() for th in ths) and time.perf_counter() - t0 < time_limit_s:
        time.sleep(0.002)
    time.sleep(jitter_s)
    with lock:
        at_kill = len(acked)
    t_kill = time.perf_counter() - t0
    kill()
    for th in ths:
        th.join()
    return acked, in_doubt, other, at_kill, t_kill


def durability_trial(work: str, codec: str, seed: int, threads: int = 4, per_thread: int = 12,
                     jitter_s: float = 0.2, rounds: int = 1, args=(), log=print, latent_every: int = 0) -> dict:
    """A fresh store; `rounds` times: client threads upload distinct images, kill -9 at a seeded random moment
    (after a random number of 200s, from 1 to 3/4 of the round's uploads, plus a random 0-jitter_s seconds),
    restart on the same store, every 200 so far must be served by GET. Then SIGTERM, and the store must hold
    each acknowledged upload exactly once and nothing no client sent, and `latentstore verify` must pass.
    `latent_every`: every n-th upload is the client's bitstream of its image (`upload --encode`), not the image.
    Returns what it found (`ok` True when every check held)."""
    import httpx
    from click.testing import CliRunner
    from latentstore.cli import main as cli_main
    rng = random.Random(seed)
    store = os.path.join(work, f"trial-{seed}.zarr")
    images = make_images(rounds * threads * per_thread, seed=10_000 + seed)
    acked, in_doubt, other, problems, kills = {}, set(), [], [], []
    server = ServerProcess(store, codec, args)
    latent = set()
    if latent_every:
        from benchmarks.serve_kinds import with_client_bitstreams
        images, latent = with_client_bitstreams(server.url, images, latent_every)
    for k in range(rounds):
        after, jitter = rng.randint(1, max(1, threads * per_thread * 3 // 4)), rng.uniform(0, jitter_s)
        part = images[k * threads * per_thread: (k + 1) * threads * per_thread]
        a, d, o, at_kill, t_kill = _upload_until_killed(server.url, part, threads, after, jitter, server.kill9)
        acked.update(a)
        in_doubt |= d
        other += o
        kills.append({"after_acks": after, "jitter_s": round(jitter, 3), "kill_after_s": round(t_kill, 3),
                      "acked_at_kill": at_kill, "acked": len(a), "in_doubt": len(d)})
        server = ServerProcess(store, codec, args, log=server.log)  # the restart: recovery, then ready
        with httpx.Client(timeout=30) as c:
            for sha, image_id in acked.items():
                r = c.get(f"{server.url}/v1/images/{image_id}")
                if r.status_code != 200 or r.json().get("sha256") != sha:
                    problems.append(f"after kill {k + 1}: GET {image_id} answered {r.status_code}")
    rc = server.stop()
    if rc != 0:
        problems.append(f"SIGTERM after the restart exited {rc}")
    stored = store_sources(store)
    counts = {}
    for sha in stored:
        counts[sha] = counts.get(sha, 0) + 1
    missing = [s for s in acked if counts.get(s, 0) != 1]
    dupes = [s for s, n in counts.items() if n > 1]
    strangers = [s for s in counts if s not in acked and s not in in_doubt]
    if missing:
        problems.append(f"{len(missing)} acknowledged uploads not in the store exactly once")
    if dupes:
        problems.append(f"{len(dupes)} uploads stored more than once")
    if strangers:
        problems.append(f"{len(strangers)} stored samples that no client had in flight or acknowledged")
    v = CliRunner().invoke(cli_main, ["verify", store])  # `latentstore verify STORE`, in this process
    if v.exit_code != 0:
        problems.append(f"verify exited {v.exit_code}: {(v.output or '').strip().splitlines()[-1:]}")
    with open(server.log, errors="replace") as f:
        torn = [ln.strip() for ln in f if "torn" in ln.lower()]
    res = {"seed": seed, "kills": kills, "kill_after_s": [x["kill_after_s"] for x in kills], "acked": len(acked),
           "latent_acked": sum(s in latent for s in acked), "in_doubt": len(in_doubt), "other_statuses": sorted(set(other)), "stored": len(stored),
           "stored_in_doubt": sum(s in counts for s in in_doubt), "sigterm_rc": rc, "verify_rc": v.exit_code,
           "torn_lines": torn[-2:], "problems": problems[:8] + ([f"... {len(problems) - 8} more"] if len(problems) > 8
                                                              else []), "ok": not problems}
    log(f"trial seed={seed}: kill -9 " + ", ".join(f"{x['jitter_s'] * 1e3:.0f} ms after 200 #{x['after_acks']} "
                                                    f"({x['kill_after_s']:.2f} s)" for x in kills) + f", {len(acked)} "
        f"acknowledged, {len(in_doubt)} in flight ({res['stored_in_doubt']} of those stored), {len(stored)} in the "
        f"store, verify rc {v.exit_code}, SIGTERM rc {rc}: " + ("ok" if not problems else "FAILED: " + "; ".join(
            res["problems"])))
    return res


# ------------------------------------------------------------------------------------------------------- the runs
def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def commit() -> str:
    try:
        c = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True).strip()
        dirty = subprocess.call(["git", "diff", "--quiet", "HEAD"], cwd=ROOT, stderr=subprocess.DEVNULL) == 1
        return c + ("+uncommitted" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


COUNTS = {1: 24, 8: 96, 32: 160}  # requests per row at each client concurrency (each row also stops at --row-s)


def run_load(a) -> dict:
    counts = {c: max(c, int(n * a.scale)) for c, n in COUNTS.items()}
    per = {c: max(c, n // a.repeats) for c, n in counts.items()}  # one burst
    t_img = time.perf_counter()
    images = make_images(a.warmup + sum(per[c] * a.repeats for c in per), seed=a.seed)
    print(f"{len(images)} distinct images made in {time.perf_counter() - t_img:.1f} s", flush=True)
    ceiling = engine_ceiling(a.codec, a.max_batch, images)
    print(f"engine alone: {ceiling['ms_per_image_batch1']} ms/image at batch 1, {ceiling['ms_per_image_batched']} "
          f"at batch {a.max_batch} ({ceiling['speedup']}x)", flush=True)
    warm, rest = images[:a.warmup], images[a.warmup:]
    modes = [("a", "dynamic batching", a.max_batch), ("b", "one at a time", 1)]
    rows, overload, batches = [], None, {}
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as work:
        extra = [*(["--classifier", a.classifier] if a.classifier else []), *a.server_args.split()]
        servers = {}
        try:
            for key, _, mb in modes:  # both up at once, bursts interleaved: one machine state for both
                servers[key] = ServerProcess(os.path.join(work, f"{key}.zarr"), a.codec, ["--max-batch", mb, *extra])
            for key, _, _ in modes:
                closed_loop(servers[key].url, warm, 4, a.row_s)
            off = 0
            for c in (1, 8, 32):
                bursts = {key: [] for key, _, _ in modes}
                for _ in range(a.repeats):  # the same images to both servers (each has its own store)
                    part = rest[off: off + per[c]]
                    for key, _, _ in modes:
                        bursts[key].append(closed_loop(servers[key].url, part, c, a.row_s / a.repeats))
                    off += per[c]
                for key, label, mb in modes:
                    r = pooled(bursts[key])
                    r.update(server=key, mode=label, max_batch=mb)
                    rows.append(r)
                    print(f"({key}) {label:16} max-batch {mb:2}  concurrency {c:2}: {r['ok']:4}/{r['requests']:4} ok, "
                          f"{r['rps']:7.2f} req/s (bursts {r['rps_bursts']}), p50 {r['p50_ms']} ms, "
                          f"p99 {r['p99_ms']} ms", flush=True)
            batches = {key: server_batches(servers[key].url) for key, _, _ in modes}
            for key, label, _ in modes:
                print(f"({key}) {label}: {batches[key]}", flush=True)
            servers.pop("b").stop()
            cap = next(r["rps"] for r in rows if r["server"] == "a" and r["concurrency"] == 32)
            s = servers["a"]
            more = make_images(int(2 * cap * a.overload_s) + 1, seed=a.seed + 1)  # distinct from the rows' images
            seen = {hashlib.sha256(d).digest() for d, _ in images}
            overload = open_loop(s.url, [x for x in more if hashlib.sha256(x[0]).digest() not in seen], 2 * cap,
                                 a.overload_s, s)
            overload["alive"] = s.alive()
            try:
                import httpx
                overload["healthz_after"] = httpx.get(f"{s.url}/healthz", timeout=10).status_code
            except Exception as e:  # noqa: BLE001 - a dead server is a result here, not a crash of the benchmark
                overload["healthz_after"] = f"{type(e).__name__}"
            overload["sigterm_rc"] = s.stop()
            print(f"(a) overload at {overload['rate']} req/s for {a.overload_s} s: {overload['ok']} ok, "
                  f"{overload['rejected_503']} x 503, {overload['errors']} other, accepted p50 {overload['p50_ms']} "
                  f"p99 {overload['p99_ms']} ms, RSS {overload['rss_mb_first']} -> max {overload['rss_mb_max']} -> "
                  f"{overload['rss_mb_last']} MB, alive {overload['alive']}", flush=True)
        finally:
            for s in servers.values():
                if s.alive():
                    s.kill9()
    return {"rows": rows, "overload": overload, "counts": counts, "repeats": a.repeats, "engine_ceiling": ceiling,
            "batches": batches,
            "server_args": ["--max-batch", "N", *extra], "targets": targets(rows)}


def targets(rows: list[dict]) -> dict:
    get = {(r["server"], r["concurrency"]): r for r in rows}
    a32, b32, a8 = get.get(("a", 32)), get.get(("b", 32)), get.get(("a", 8))
    speedup = round(a32["rps"] / b32["rps"], 2) if a32 and b32 and b32["rps"] else None
    tail = round(a8["p99_ms"] / a8["p50_ms"], 2) if a8 and a8["p50_ms"] else None
    return {"speedup_c32": speedup, "speedup_c32_met": bool(speedup and speedup >= 2),
            "p99_over_p50_c8": tail, "p99_over_p50_c8_met": bool(tail and tail < 2)}


def ceiling_lines(rows: list[dict], e: dict) -> list[str]:
    """What batching could give at most here: the engine's own img/s (no HTTP, no decode, no fsync) against
    what the servers reached, from this run's numbers."""
    get = {(r["server"], r["concurrency"]): r for r in rows}
    a32, b32 = get.get(("a", 32)), get.get(("b", 32))
    if not (a32 and b32 and e.get("ms_per_image_batched")):
        return []
    top, one = 1000 / e["ms_per_image_batched"], 1000 / e["ms_per_image_batch1"]
    need = 2 * b32["rps"]
    return [f"- the model-only ceiling: the engine alone encodes {top:.1f} img/s at batch {e['batch']} ({one:.1f} at "
            f"batch 1); (a) reached {a32['rps']} req/s at concurrency 32, {a32['rps'] / top:.0%} of that ceiling, "
            f"(b) {b32['rps']} req/s, {b32['rps'] / one:.0%} of its batch-1 ceiling. 2x (b) would be {need:.1f} "
            f"req/s, **{need / top:.2f}x the model-only ceiling**"
            + (": the model's cost per image is nearly linear in the batch on this CPU, so no batching policy "
               "reaches 2x here" if need > top else ": reachable only if HTTP, decoding and the log, which share "
               "these cores with the model, cost nothing")]


def run_durability(a) -> dict:
    trials = []
    with tempfile.TemporaryDirectory(prefix="serve-durability-") as work:
        for t in range(a.durability_trials):
            trials.append(durability_trial(work, a.codec, a.seed * 1000 + t, args=a.server_args.split(),
                                           latent_every=a.latent_every))
    return {"trials": trials, "passed": sum(t["ok"] for t in trials), "seed": a.seed}


def markdown(doc: dict) -> str:
    md = ["# `latentstore serve` over loopback", ""]
    load = doc.get("load")
    if load:
        md += [f"{load['date']}, commit {load['commit']}, codec {load['codec']}, {load['machine']['cpu']} "
               f"({load['machine']['cores']} cores, shared with other jobs: 1-minute load average "
               f"{load.get('load_avg_1min', ['?'])[0]} at the start, "
               f"{load.get('load_avg_1min', ['?', '?'])[1]} at the end), "
               f"{load['seconds']:.0f} s. Command: `{load['command']}`", "",
               f"Servers: `latentstore serve STORE --codec {load['codec']} {' '.join(map(str, load['server_args']))}`, "
               f"each row {load['repeats']} bursts alternating between (a) and (b), same images to both.", "",
               "| server | max-batch | concurrency | requests | ok | 503 | errors | req/s | req/s per burst | p50 ms "
               "| p99 ms |",
               "|---|---|---|---|---|---|---|---|---|---|---|"]
        md += [f"| ({r['server']}) {r['mode']} | {r['max_batch']} | {r['concurrency']} | {r['requests']} | {r['ok']} | "
               f"{r['rejected_503']} | {r['errors']} | {r['rps']} | {', '.join(map(str, r['rps_bursts']))} | "
               f"{r['p50_ms']} | {r['p99_ms']} |" for r in load["rows"]]
        t, o, e = load["targets"], load["overload"], load["engine_ceiling"]
        md += ["", f"- (a) / (b) requests/s at concurrency 32: **{t['speedup_c32']}x** (target >= 2x: "
               f"{'met' if t['speedup_c32_met'] else 'not met'})",
               f"- (a) p99 / p50 at concurrency 8: **{t['p99_over_p50_c8']}** (target < 2: "
               f"{'met' if t['p99_over_p50_c8_met'] else 'not met'})",
               f"- the engine alone (encode + entropy coding, no HTTP, in the benchmark's process on {e['device']}): "
               f"{e['ms_per_image_batch1']} ms/image at batch 1, {e['ms_per_image_batched']} ms/image at batch "
               f"{e['batch']}: **{e['speedup']}x** (the model's own gain from batching, with no HTTP or decode "
               f"threads competing for the cores and the GIL)"]
        md += ceiling_lines(load["rows"], e)
        for key, b in load.get("batches", {}).items():  # what each server did over all the rows, from its /metrics
            md.append(f"- ({key}) over all its rows: {b['batches']} model batches of {b['mean_batch']} uploads on "
                      f"average; {b['compute_ms_per_batch']} ms of encode + classify and {b['wal_ms_per_batch']} ms "
                      f"of WAL append + fsync per batch")
        if o:
            md += [f"- overload, (a) offered {o['rate']} req/s (2x its concurrency-32 rate) for {o['duration_s']} s; "
                   f"the load generator, on the same two cores, got them out at {o.get('sent_rate')} req/s (the last "
                   f"answer {o['seconds']} s after the first request): "
                   f"{o['requests']} sent, {o['ok']} accepted ({o['rps']} req/s), {o['rejected_503']} answered 503 "
                   f"(in p50 {o.get('p50_503_ms')} ms, p99 {o.get('p99_503_ms')} ms), "
                   f"{o['errors']} other; accepted p50 {o['p50_ms']} ms, p99 {o['p99_ms']} ms (client's view; the server's own "
                   f"timings_ms.total, handler start to answer: p50 {o.get('server_p50_ms')} ms, p99 "
                   f"{o.get('server_p99_ms')} ms); at most "
                   f"{o['peak_in_flight']} requests in flight (client's view), the last answered {o['drain_s']} s "
                   f"after the last was sent; server RSS "
                   f"{o['rss_mb_first']} MB at the start, {o['rss_mb_max']} MB max, {o['rss_mb_last']} MB at the end "
                   f"(last quarter / first quarter {o['rss_growth']}); alive after: {o['alive']}, /healthz "
                   f"{o['healthz_after']}, SIGTERM exit {o['sigterm_rc']}"]
    for key in sorted(k for k in doc if k.startswith("kinds")):
        from benchmarks.serve_kinds import kinds_markdown
        md += kinds_markdown(doc[key])
    dur = doc.get("durability")
    if dur:
        md += ["", f"## kill -9 trials: {dur['passed']} of {len(dur['trials'])} passed", "",
               f"{dur['date']}, commit {dur['commit']}, codec {dur['codec']}. Command: `{dur['command']}`", "",
               "| seed | kill -9 at (s) | acked | of those, client bitstreams | in flight | of those stored | in store "
               "| verify rc | SIGTERM rc | ok |",
               "|---|---|---|---|---|---|---|---|---|---|"]
        md += [f"| {t['seed']} | {', '.join(map(str, t['kill_after_s']))} | {t['acked']} | {t.get('latent_acked', 0)} | "
               f"{t['in_doubt']} | "
               f"{t['stored_in_doubt']} | {t['stored']} | {t['verify_rc']} | {t['sigterm_rc']} | "
               f"{'yes' if t['ok'] else '; '.join(t['problems'])} |"
               for t in dur["trials"]]
    return "\n".join(md) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--codec", default="ls-c16")
    p.add_argument("--classifier", default=None, help="a classify run for the servers' --classifier")
    p.add_argument("--max-batch", type=int, default=16, help="(a)'s --max-batch; (b) runs --max-batch 1")
    p.add_argument("--server-args", default="", help="more arguments for both servers, e.g. '--queue 64'")
    p.add_argument("--scale", type=float, default=1.0, help="multiplies each row's request count")
    p.add_argument("--repeats", type=int, default=2, help="bursts per row, alternating between the two servers")
    p.add_argument("--row-s", type=float, default=30.0, help="no request starts after this many seconds of a row")
    p.add_argument("--overload-s", type=float, default=10.0, help="seconds of the overload phase")
    p.add_argument("--warmup", type=int, default=8, help="requests to each server before measuring")
    p.add_argument("--durability-trials", type=int, default=0, help="run N kill -9 trials instead of the load")
    p.add_argument("--latent-every", type=int, default=3,
                   help="kill -9 trials: every n-th upload is a client's bitstream (0: images only)")
    p.add_argument("--kinds", action="store_true", help="the upload kinds of issue #30 (serve_kinds.py) instead")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    a = p.parse_args(argv)
    t0, load_before = time.perf_counter(), os.getloadavg()[0]
    section = "durability" if a.durability_trials else "kinds" if a.kinds else "load"
    if a.kinds and a.server_args.strip():  # one section per server setting (e.g. --workers 2), each kept
        section = f"kinds {a.server_args.strip()}"
    if a.kinds:
        from benchmarks.serve_kinds import run_kinds
        with tempfile.TemporaryDirectory(prefix="serve-kinds-") as work:
            res = run_kinds(a, work, log=lambda m: print(m, flush=True))
    else:
        res = run_durability(a) if a.durability_trials else run_load(a)
    res.update(date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), commit=commit(),
               codec=a.codec, machine=machine(), seconds=round(time.perf_counter() - t0, 1),
               load_avg_1min=[round(load_before, 2), round(os.getloadavg()[0], 2)],  # others' jobs share the cores
               command="python benchmarks/serve.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, "serve.json")
    doc = json.load(open(path)) if os.path.exists(path) else {}
    doc[section] = res
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    with open(os.path.join(a.out, "serve.md"), "w") as f:
        f.write(markdown(doc))
    print(markdown({section: res}))
    if section == "durability":
        return 0 if res["passed"] == len(res["trials"]) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
