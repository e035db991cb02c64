"""A lean closed-loop load generator: raw HTTP/1.1 over keep-alive sockets on one asyncio loop.

The benchmarks share two cores with the server they measure. A client of httpx threads spent 0.86 ms of CPU per
request (measured against `latentstore serve`, concurrency 32): for an upload the server handles in about 2 ms,
that is the client taking a third of the machine, and the measured rate is the client's as much as the server's.
This one builds every request's bytes before the clock starts and parses only the status line, Content-Length
and the answer's sha256 and worker pid (how the uploads spread over `--workers`), so its cost per request is a fraction of that (it reports its own CPU-seconds, so the
reader can check: `client_cpu_ms_per_request`).

    closed_loop_raw(url, items, concurrency, time_limit_s, headers) -> the same row as serve.closed_loop

An item is (bytes, content type) sent as the raw body, or (dict of multipart parts, "multipart/form-data") with
parts as httpx takes them ({"file": (name, bytes, type), ...}), encoded here once. Accepted answers are checked
against the sent bytes' sha256, as closed_loop does. Answers must carry Content-Length (uvicorn's JSON answers do).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import time
import urllib.parse

from benchmarks.serve import _row

BOUNDARY = "latentstore-rawload-7d3f9a"


def multipart_body(parts: dict) -> bytes:
    out = []
    for name, value in parts.items():
        if isinstance(value, tuple):
            fname, data, ctype = value
            head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="{fname}"\r\n'
                    f"Content-Type: {ctype}\r\n\r\n")
        else:
            data = value.encode() if isinstance(value, str) else value
            head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
        out += [head.encode(), data, b"\r\n"]
    out.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(out)


def build_request(host: str, path: str, item, headers: dict) -> tuple[bytes, str]:
    """The request's bytes and the sha256 (hex) a 200 must name."""
    data, ctype = item
    if isinstance(data, dict):
        body, ctype = multipart_body(data), f"multipart/form-data; boundary={BOUNDARY}"
        sent = data["file"][1]
    else:
        body, sent = data, data
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Type: {ctype}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body, hashlib.sha256(sent).hexdigest()


async def _exchange(reader, writer, request: bytes) -> tuple[int, bytes]:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = None
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    if length is None:
        raise ConnectionError("an answer without Content-Length")
    return status, await reader.readexactly(length)


async def _run(host: str, port: int, reqs: list, concurrency: int, time_limit_s: float):
    nxt, lat, statuses, bad, by_worker, failures = [0], [], [], [], {}, {}
    t0 = time.perf_counter()
    deadline = t0 + time_limit_s

    async def worker():
        conn = None
        while time.perf_counter() < deadline and nxt[0] < len(reqs):
            i = nxt[0]
            nxt[0] += 1
            request, sha = reqs[i]
            t = time.perf_counter()
            status = None
            for attempt in (0, 1):  # a keep-alive connection the server closed: one fresh try
                try:
                    if conn is None:
                        conn = await asyncio.open_connection(host, port)
                    status, body = await _exchange(*conn, request)
                    if status == 200:
                        answer = json.loads(body)
                        if answer.get("sha256") != sha:
                            bad.append(i)
                        pid = str(answer.get("worker"))
                        by_worker[pid] = by_worker.get(pid, 0) + 1
                    break
                except (ConnectionError, asyncio.IncompleteReadError, OSError) as e:
                    failures[type(e).__name__] = failures.get(type(e).__name__, 0) + 1
                    if conn is not None:
                        conn[1].close()
                    conn, status = None, None
                    if attempt:
                        break
            lat.append(time.perf_counter() - t)
            statuses.append(status)
        if conn is not None:
            conn[1].close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return lat, statuses, bad, by_worker, failures, time.perf_counter() - t0


def closed_loop_raw(url: str, items, concurrency: int, time_limit_s: float, headers=None) -> dict:
    """`concurrency` keep-alive connections, each posting the next item as soon as its last answer came; at most
    len(items) requests, none started after time_limit_s. The row of serve.closed_loop, plus the client's CPU."""
    u = urllib.parse.urlsplit(url)
    host, port = u.hostname, u.port or 80
    reqs = [build_request(f"{host}:{port}", "/v1/images", it, headers or {}) for it in items]
    cpu0 = time.process_time()  # the requests are built: from here on, what sending and reading them costs
    lat, statuses, bad, by_worker, failures, wall = asyncio.run(_run(host, port, reqs, concurrency, time_limit_s))
    row = _row(lat, statuses, wall)
    row.update(concurrency=concurrency, sha_mismatch=len(bad),
               transport_failures=failures, other_statuses=sorted({s for s in statuses if s not in (200, 503)}, key=str),
               uploads_per_worker=sorted(by_worker.values(), reverse=True),
               client_cpu_ms_per_request=round(1000 * (time.process_time() - cpu0) / max(1, len(statuses)), 3),
               _ok_lat=[t for t, st in zip(lat, statuses) if st == 200])
    return row
