"""Issue #30's rows: what each kind of upload costs the service, over loopback, at client concurrency 1, 8 and 32.

    .venv/bin/python benchmarks/serve.py --kinds [--classifier RUN] [--server-args "..."] [--scale 0.5]

Kinds, each set against the store it belongs in (two servers per classifier setting, one codec), in one run:
    (a) jpeg-full   a `serve --native` store: JPEG uploads at full resolution, kept whole (the validation photos
                    and foolbox's JPEGs at their own size; seeded: each a distinct JPEG, q 80-95, maybe mirrored);
                    the server encodes the whole photo (one at a time, tiled above 1 Mpx) and its S-px view
    (a') latent-full the same photos coded by the client (`upload --encode` for a native store): multipart `file`
                    (the full-size bitstream) + `companion` (S px, for the classifier); the server checks both
    (b) jpeg-256    a fixed-size store: JPEG/PNG uploads at 256 px (benchmarks/serve.make_images: today's path)
    (c) latent      the (b) images compressed by the client as `latentstore upload --encode` does (the codec and
                    precision from GET /v1/codec, fitted to the store's size), sent as application/x-latentstore
Per row: req/s, p50/p99 at the client, and the server's CPU-seconds per accepted upload (utime + stime of the
server's process tree from /proc/PID/stat, read before and after the row: encoder, decode, HTTP, sealer, all of it).
With --classifier the same rows run again against a second pair of servers with that classifier; the classifier's share
of the server's time is the difference of CPU-seconds per upload between the two, over the one with it.
A kind the server refuses (a probe upload answered 4xx, or no GET /v1/codec) is skipped with its reason.
Target of the issue, reported not asserted: (c) >= 10x (b) in req/s at concurrency 32 without a classifier.
"""
from __future__ import annotations

import hashlib
import io
import os
import tempfile
import time

import numpy as np

from benchmarks.rawload import closed_loop_raw
from benchmarks.serve import ServerProcess, _children, make_images

COUNTS = {1: 16, 8: 64, 32: 128}  # requests per row (each row also stops at --row-s) ...
CHEAP = {"latent": 32, "latent-full": 4}  # ... times this for the kinds that run at hundreds per second, so their rows
                                         # last seconds, not a tenth of one (each request is a distinct upload)
KINDS = ("jpeg-full", "latent-full", "jpeg-256", "latent")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its descendants, from /proc (seconds)."""
    tick, total, todo = os.sysconf("SC_CLK_TCK"), 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
        except (OSError, IndexError, ValueError):
            continue
        todo += _children(p)
    return total / tick


def full_size_jpegs(n: int, seed: int) -> list[tuple[bytes, str]]:
    """n distinct full-resolution JPEGs of the validation photos and foolbox's images."""
    import importlib.util

    from PIL import Image
    from latentstore.data.imageio import load_image
    from latentstore.data.photos import all_photos
    srcs = [p.load() for p in all_photos() if p.split == "val"]
    spec = importlib.util.find_spec("foolbox")
    if spec and spec.submodule_search_locations:
        data = os.path.join(list(spec.submodule_search_locations)[0], "data")
        srcs += [load_image(os.path.join(data, f)) for f in sorted(os.listdir(data)) if f.endswith(".jpg")]
    rng, out, seen = np.random.default_rng(seed), [], set()
    while len(out) < n:
        rgb = srcs[int(rng.integers(len(srcs)))]
        rgb = rgb[:, ::-1] if rng.random() < 0.5 else rgb
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(rgb)).save(buf, "JPEG", quality=int(rng.integers(80, 96)))
        d = buf.getvalue()
        if hashlib.sha256(d).digest() not in seen:
            seen.add(hashlib.sha256(d).digest())
            out.append((d, "image/jpeg"))
    return out


def latent_uploads(url: str, images, headers: dict) -> tuple[list, str | None]:
    """The client's bitstreams of `images` as `upload --encode` makes them for this server: a fixed-size store's
    S x S bitstream as the raw body, or a native store's multipart parts (`file`: full size, `companion`)."""
    import httpx

    from latentstore.errors import LatentstoreError
    from latentstore.serve.client_encode import encode_photo, fetch_codec
    from latentstore.serve.latent_ingest import MEDIA_TYPE
    with httpx.Client(timeout=60) as c:
        try:
            remote = fetch_codec(c, url, headers, tempfile.mkdtemp(prefix="codec-cache-"))
        except LatentstoreError as e:
            return [], str(e)
    out, seen = [], set()
    for data, _ in images:
        b = encode_photo(remote, data, "bench")
        item = (b["content"], MEDIA_TYPE) if "content" in b else (b["files"], "multipart/form-data")
        key = hashlib.sha256(b["content"] if "content" in b else b["files"]["file"][1]).digest()
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out, None


def with_client_bitstreams(url: str, images, every: int, headers: dict | None = None) -> tuple[list, set]:
    """`images` with every `every`-th one (0, every, 2*every, ...) replaced by the client's bitstream of it (as
    `upload --encode` makes it for this server's fixed-size store); returns (the list, the sha256s of those)."""
    import httpx

    from latentstore.serve.client_encode import encode_photo, fetch_codec
    from latentstore.serve.latent_ingest import MEDIA_TYPE
    with httpx.Client(timeout=60) as c:
        remote = fetch_codec(c, url, headers or {}, tempfile.mkdtemp(prefix="codec-cache-"))
    out, shas = list(images), set()
    for i in range(0, len(out), every):
        b = encode_photo(remote, out[i][0], f"image {i}")["content"]
        out[i] = (b, MEDIA_TYPE)
        shas.add(hashlib.sha256(b).hexdigest())
    return out, shas


def probe(url: str, item, headers: dict) -> str | None:
    """None when the server accepts one upload of this kind, else why not (its status and error)."""
    import httpx
    data, ctype = item
    r = httpx.post(f"{url}/v1/images", files=data, headers=headers, timeout=300) if isinstance(data, dict) else \
        httpx.post(f"{url}/v1/images", content=data, headers={"Content-Type": ctype, **headers}, timeout=300)
    if r.status_code == 200:
        return None
    try:
        why = r.json().get("error", r.text[:200])
    except ValueError:
        why = r.text[:200]
    return f"HTTP {r.status_code}: {why}"


def item_bytes(item) -> int:
    data = item[0]
    return sum(len(p[1]) for p in data.values()) if isinstance(data, dict) else len(data)


# which store each kind goes to: today's fixed-size store (S x S), or a `serve --native` store (photos kept whole)
LAYOUT = {"jpeg-full": "native", "latent-full": "native", "jpeg-256": "fixed", "latent": "fixed"}


def run_kinds(a, work: str, log=print) -> dict:
    counts = {c: max(c, int(n * a.scale)) for c, n in COUNTS.items()}
    need = {layout: a.warmup + 1 + sum(counts.values()) * max(CHEAP.get(k, 1) for k in KINDS if LAYOUT[k] == layout)
            for layout in ("fixed", "native")}
    small = make_images(need["fixed"], seed=a.seed)
    full = full_size_jpegs(need["native"], seed=a.seed + 7)
    setups = [("none", [])] + ([("classifier", ["--classifier", a.classifier])] if a.classifier else [])
    rows, skipped, client_coded = [], [], {}
    for name, extra in setups:
        for layout in ("native", "fixed"):
            s = ServerProcess(os.path.join(work, f"kinds-{name}-{layout}.zarr"), a.codec,
                              ["--max-batch", a.max_batch, *extra, *(["--native"] if layout == "native" else []),
                               *a.server_args.split()])
            try:
                if layout not in client_coded:  # the client's coding depends on the store's layout, not the classifier
                    t0 = time.perf_counter()
                    client_coded[layout] = latent_uploads(s.url, small if layout == "fixed" else full, s.headers())
                    log(f"client-side coding for the {layout} store: {len(client_coded[layout][0])} uploads in "
                        f"{time.perf_counter() - t0:.0f} s")
                sets = {"jpeg-full": (full, None), "latent-full": client_coded["native"] if layout == "native" else
                        None, "jpeg-256": (small, None), "latent": client_coded.get("fixed")}
                for kind in (k for k in KINDS if LAYOUT[k] == layout):
                    items, why = sets[kind]
                    why = why or (None if items else "no uploads") or probe(s.url, items[0], s.headers())
                    if why:
                        skipped.append({"kind": kind, "classifier": name, "why": why})
                        log(f"skipped ({kind}, classifier {name}): {why}")
                        continue
                    rows += _kind_rows(s, kind, name, items, counts, a, log)
            finally:
                if s.alive():
                    s.stop()
    return {"rows": rows, "skipped": skipped, "counts": counts, "targets": kind_targets(rows),
            "server_args": a.server_args.strip()}


def _kind_rows(s, kind: str, name: str, items, counts: dict, a, log) -> list[dict]:
    rows = []
    closed_loop_raw(s.url, items[1: 1 + a.warmup], 4, a.row_s, s.headers())
    off = 1 + a.warmup
    for c in (1, 8, 32):
        n = counts[c] * CHEAP.get(kind, 1)
        part = items[off: off + n]
        off += n
        cpu0 = cpu_seconds(s.proc.pid)
        r = closed_loop_raw(s.url, part, c, a.row_s, s.headers())
        cpu = cpu_seconds(s.proc.pid) - cpu0
        r.pop("_ok_lat", None)
        r.update(kind=kind, classifier=name, server_cpu_s=round(cpu, 2),
                 cpu_s_per_upload=round(cpu / r["ok"], 4) if r["ok"] else None,
                 bytes_per_upload=round(float(np.mean([item_bytes(it) for it in part])), 1))
        rows.append(r)
        log(f"({kind:11} classifier {name:10}) concurrency {c:2}: {r['ok']:4}/{r['requests']:4} ok, "
            f"{r['rps']:7.2f} req/s, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, server "
            f"{r['cpu_s_per_upload']} CPU-s/upload, {r['bytes_per_upload']:.0f} B/upload, client "
            f"{r['client_cpu_ms_per_request']} CPU-ms/request, per worker {r['uploads_per_worker']}")
    return rows


def kind_targets(rows: list[dict]) -> dict:
    get = {(r["kind"], r["classifier"], r["concurrency"]): r for r in rows}
    out = {}
    for cls in ("none", "classifier"):
        b, c = get.get(("jpeg-256", cls, 32)), get.get(("latent", cls, 32))
        if b and c and b["rps"]:
            out[f"latent_over_jpeg256_c32_{cls}"] = round(c["rps"] / b["rps"], 2)
        a_, a2 = get.get(("jpeg-full", cls, 32)), get.get(("latent-full", cls, 32))
        if a_ and a2 and a_["rps"]:
            out[f"latent_full_over_jpeg_full_c32_{cls}"] = round(a2["rps"] / a_["rps"], 2)
    for kind in KINDS:  # the classifier's share of the server's CPU time per upload, concurrency 32
        n, w = get.get((kind, "none", 32)), get.get((kind, "classifier", 32))
        if n and w and w["cpu_s_per_upload"]:
            out[f"classifier_share_{kind}"] = round(1 - n["cpu_s_per_upload"] / w["cpu_s_per_upload"], 3)
    ratio = out.get("latent_over_jpeg256_c32_none")
    out["target_10x"] = "not measured (no latent rows)" if ratio is None else "met" if ratio >= 10 else "not met"
    return out


def kinds_markdown(k: dict) -> list[str]:
    la = k.get("load_avg_1min", ["?", "?"])
    m = k.get("machine", {})
    title = "## Upload kinds (issue #30)" + (f", `{k['server_args']}`" if k.get("server_args") else "")
    md = ["", title, "", f"{k['date']}, commit {k['commit']}, codec {k['codec']}, "
          f"{m.get('cpu', '?')} ({m.get('cores', '?')} cores; 1-minute load "
          f"average {la[0]} at the start, {la[1]} at the end), {k.get('seconds', 0):.0f} s. Command: `{k['command']}`",
          "", "Stores: (a) jpeg-full and (a') latent-full go to a `serve --native` store (photos kept whole), (b) "
          "jpeg-256 and (c) latent to a fixed-size store (256 x 256), each kind on its own server "
          f"(`{k.get('server_args') or 'one process'}`); the client (benchmarks/rawload.py: keep-alive sockets on one "
          "asyncio loop, requests built before the clock) runs on the same cores, and its CPU per request is a "
          "column. Server CPU-s: utime + stime of the server's process tree over the row. Per worker: accepted "
          "uploads answered by each worker process.", "",
          "| kind | store | classifier | concurrency | requests | ok | 503 | errors | req/s | p50 ms | p99 ms | server "
          "CPU-s per upload | client CPU-ms per request | per worker | bytes per upload |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['kind']} | {LAYOUT.get(r['kind'], '?')} | {r['classifier']} | {r['concurrency']} | {r['requests']} | "
           f"{r['ok']} | {r['rejected_503']} | {r['errors']} | {r['rps']} | {r['p50_ms']} | {r['p99_ms']} | "
           f"{r['cpu_s_per_upload']} | {r.get('client_cpu_ms_per_request', '')} | "
           f"{'/'.join(map(str, r.get('uploads_per_worker', [])))} | {r['bytes_per_upload']:.0f} |" for r in k["rows"]]
    md += [f"- skipped ({s['kind']}, classifier {s['classifier']}): {s['why']}" for s in k["skipped"]]
    md += [f"- {key}: {v}" for key, v in k["targets"].items()]
    return md
