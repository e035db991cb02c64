"""The hardened service (issue #26 "A hardened service", #30's start-up edges): private token files, arguments
and the port checked before anything is created, read deadlines on a real socket, no 500 for any query value,
thin images refused from the header, a client that leaves is one log line, an access line per request, and the
hostile-request zoo against a real `latentstore serve` process (no 5xx, its peak RSS growth under 300 MB)."""
import gzip
import io
import json
import os
import socket
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from click.testing import CliRunner
from PIL import Image

from latentstore.cli import main
from latentstore.errors import UsageError
from latentstore.serve.auth import load_tokens
from latentstore.serve.uploads import MAX_ASPECT, Rejected, check_geometry
from tests.test_serve import image_bytes

READ, WRITE = "read-token-0123456789", "write-token-0123456789"
HEADER_S, BODY_S = 1.0, 2.0  # the server's deadlines here: short, so the half-sent requests end quickly


def png(size, mode="1") -> bytes:
    b = io.BytesIO()
    Image.new(mode, size).save(b, "PNG", optimize=True)
    return b.getvalue()


def private_token_file(path) -> str:
    path.write_text(f"{READ} read\n{WRITE} write\n")
    path.chmod(0o600)
    return str(path)


def vm_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


class Served:
    """`latentstore serve` on a free 127.0.0.1 port, its stderr in a file; ready when it printed its URL."""

    def __init__(self, store: str, codec: str, token_file: str, log_path: str):
        exe = os.path.join(os.path.dirname(sys.executable), "latentstore")
        self.log_path = log_path
        self.logf = open(log_path, "w")
        self.proc = subprocess.Popen(
            [exe, "serve", store, "--codec", codec, "--size", "256", "--shard-size", "4", "--port", "0",
             "--device", "cpu", "--max-batch", "4", "--max-upload-mb", "1", "--token-file", token_file,
             "--header-timeout", str(HEADER_S), "--body-timeout", str(BODY_S)],
            stdout=self.logf, stderr=subprocess.STDOUT, start_new_session=True)
        t0, self.url = time.time(), None
        while self.url is None and time.time() - t0 < 180 and self.proc.poll() is None:
            lines = [ln for ln in self.log().splitlines() if ln.startswith("serving on ")]
            self.url = lines[0].split()[-1] if lines else None
            time.sleep(0.1)
        assert self.url, f"server did not start:\n{self.log()}"
        self.host, self.port = self.url.removeprefix("http://").split(":")
        self.port = int(self.port)

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def request(self, method: str, path: str, tok: str | None = READ, **kw) -> httpx.Response:
        headers = {**kw.pop("headers", {}), **({"Authorization": f"Bearer {tok}"} if tok else {})}
        return httpx.request(method, self.url + path, headers=headers, timeout=60, **kw)  # a new connection each

    def raw(self, data: bytes, wait_s: float = 20.0) -> bytes:
        """Send raw bytes, read until the server closes (bounded): what it answered, b'' if nothing."""
        out, t0 = b"", time.time()
        with socket.create_connection((self.host, self.port), timeout=wait_s) as s:
            try:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
                while time.time() - t0 < wait_s:
                    b = s.recv(65536)
                    if not b:
                        break
                    out += b
            except (BrokenPipeError, ConnectionResetError):  # answered and closed before all of it was sent
                pass
            return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.logf.close()


@pytest.fixture(scope="module")
def served(codec_path, tmp_path_factory):
    d = tmp_path_factory.mktemp("hardened")
    s = Served(str(d / "up.zarr"), codec_path, private_token_file(d / "tokens"), str(d / "serve.log"))
    assert s.request("POST", "/v1/images", tok=WRITE, content=image_bytes(1),
                     headers={"content-type": "image/png"}).status_code == 200  # warm: the first batch has run
    yield s
    s.stop()


# ------------------------------------------------------------------------------------ before anything is created
def test_token_files_must_be_private_utf8_with_long_tokens(tmp_path):
    ok = private_token_file(tmp_path / "ok")
    assert load_tokens(ok) == {READ: "read", WRITE: "write"}
    os.chmod(ok, 0o400)
    assert load_tokens(ok)  # stricter than 0600 is fine
    for mode in (0o644, 0o640, 0o604, 0o620, 0o602):
        os.chmod(ok, mode)
        with pytest.raises(UsageError, match="chmod 600"):
            load_tokens(ok)
    # the mode checked is the open file's (fstat), not a path's: a stat by path that says 0600 changes nothing
    real_stat = os.stat
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "stat", lambda p, *a, **k: os.stat_result((0o100600,) + tuple(real_stat(p, *a, **k))[1:]))
        with pytest.raises(UsageError, match="chmod 600"):
            load_tokens(ok)
    bad = {"short": "abc read\n", "spaces": f"{READ} read extra\n", "scope": f"{READ} admin\n", "empty": "# none\n",
           "twice": f"{READ} read\n{READ} write\n"}
    for name, text in bad.items():
        p = tmp_path / name
        p.write_text(text)
        p.chmod(0o600)
        with pytest.raises(UsageError) as e:
            load_tokens(str(p))
        assert "\n" not in str(e.value)
    latin1 = tmp_path / "latin1"
    latin1.write_bytes(b"\xe9t\xe9-token-0123456789 read\n")
    latin1.chmod(0o600)
    with pytest.raises(UsageError, match="not UTF-8"):
        load_tokens(str(latin1))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(UsageError, match="not a regular file"):  # refused, not waited on
        load_tokens(str(fifo))


@pytest.mark.parametrize("args", [["--max-upload-mb", "inf"], ["--max-upload-mb", "nan"], ["--max-upload-mb", "0"],
                                  ["--max-upload-mb", "-1"], ["--shard-size", "0"], ["--shard-size", "-5"],
                                  ["--max-batch", "0"], ["--queue", "-1"], ["--size", "30"], ["--size", "0"],
                                  ["--workers", "0"], ["--max-delay-ms", "nan"], ["--header-timeout", "0"],
                                  ["--body-timeout", "inf"], ["--port", "70000"], ["--token-file", "{short}"],
                                  ["--token-file", "{public}"], ["--token-file", "{latin1}"]])
def test_bad_arguments_are_one_line_exit_2_and_create_nothing(args, codec_path, tmp_path):
    for name, data, mode in (("short", b"abc write\n", 0o600), ("public", f"{WRITE} write\n".encode(), 0o644),
                             ("latin1", b"\xff" * 20 + b" write\n", 0o600)):
        (tmp_path / name).write_bytes(data)
        (tmp_path / name).chmod(mode)
    store = tmp_path / "never.zarr"
    r = CliRunner().invoke(main, ["serve", str(store), "--codec", codec_path, "--port", "0",
                                  *[a.format(**{n: str(tmp_path / n) for n in ("short", "public", "latin1")})
                                    for a in args]])
    assert r.exit_code == 2, r.output
    assert r.output.count("\n") == 1 and r.output.startswith("error: ") and "Traceback" not in r.output
    assert not store.exists()


def test_a_busy_port_is_one_line_exit_2_before_the_store_is_created(codec_path, tmp_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        r = CliRunner().invoke(main, ["serve", str(tmp_path / "s.zarr"), "--codec", codec_path, "--port", str(port)])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "in use" in r.output, r.output
    assert not (tmp_path / "s.zarr").exists()


def test_accepted_connections_send_without_waiting_for_acks():
    """The listening socket says TCP (proto IPPROTO_TCP), so asyncio sets TCP_NODELAY on every connection it
    accepts; with proto 0 it did not, and each answer's body waited ~45 ms for the client's delayed ACK."""
    import asyncio
    import socket as so

    from latentstore.serve.server import listen_socket

    async def main():
        got = asyncio.get_running_loop().create_future()

        async def handle(reader, writer):
            got.set_result(writer.get_extra_info("socket").getsockopt(so.IPPROTO_TCP, so.TCP_NODELAY))
            writer.close()
        sock = listen_socket("127.0.0.1", 0)
        server = await asyncio.start_server(handle, sock=sock)
        _, w = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
        nodelay = await asyncio.wait_for(got, 10)
        w.close()
        server.close()
        return nodelay
    assert asyncio.run(main()) == 1


def test_sealer_lock_held_elsewhere_means_a_store_being_created(codec_path, tmp_path):
    """With --workers, a worker that finds the store folder half made (no INIT.json yet) while another holds the
    sealer lock waits for it; the same folder with the lock free is a foreign folder (one line, exit 2)."""
    import fcntl

    from latentstore.serve import ServeConfig
    from latentstore.serve.service import SEALER_LOCK, IngestService
    from latentstore.store.lock import LOCK_DIR
    store = tmp_path / "half.zarr"
    (store / LOCK_DIR).mkdir(parents=True)
    (store / "zarr.json").write_text("{}")
    svc = IngestService(ServeConfig(store=str(store), codec=codec_path, size=32, device="cpu"))
    try:
        with open(store / LOCK_DIR / SEALER_LOCK, "a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            assert svc._sealer_busy()
        assert not svc._sealer_busy()
        with pytest.raises(UsageError, match="is not a latentstore store"):
            svc.start()
    finally:
        svc.pool.shutdown(wait=False)


def test_thin_and_oversized_geometry_is_refused_from_the_numbers():
    check_geometry(640, 480, 40_000_000, side=256)  # a photo passes
    check_geometry(8 * MAX_ASPECT, 8, 40_000_000, side=256)  # the thinnest allowed
    for (w, h), side, code in (((8, 65535), 256, "aspect_limit"), ((8, 8 * MAX_ASPECT + 8), None, "aspect_limit"),
                               ((7000, 7000), 256, "pixel_limit"), ((64, 4096), 4096, "pixel_limit")):
        with pytest.raises(Rejected) as e:
            check_geometry(w, h, 40_000_000, side)
        assert e.value.status == 422 and e.value.code == code, (w, h)


# ------------------------------------------------------------------------------------ a real server on a socket
def test_half_sent_requests_are_dropped_within_the_deadlines(served):
    """16 requests cut inside their headers, 16 inside their bodies and 2 silent connections: every one is
    closed by the server (bounded wait: the deadline plus 20 s of slack), and each drop is one log line."""
    head = b"POST /v1/images HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + WRITE.encode()
    cut = [head[: 10 + i] for i in range(16)]
    cut += [head + b"\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n" + b"\x89PNG" * (i + 1)
            for i in range(16)]
    cut += [b"", b""]
    socks = []
    for data in cut:
        s = socket.create_connection((served.host, served.port), timeout=30)
        if data:
            s.sendall(data)
        socks.append(s)
    t0, closed = time.time(), 0
    try:
        for s in socks:  # each recv returns b"" once the server closed it (or an answer first, then b"")
            s.settimeout(max(0.1, BODY_S + 20 - (time.time() - t0)))
            try:
                while s.recv(4096):
                    pass
                closed += 1
            except (socket.timeout, ConnectionResetError) as e:
                closed += isinstance(e, ConnectionResetError)
    finally:
        [s.close() for s in socks]
    assert closed == len(cut)
    log = served.log()
    assert log.count("did not arrive within") >= len(cut) and "Traceback" not in log
    assert served.request("GET", "/healthz", tok=None).status_code == 200  # and it still serves


def test_endless_headers_are_refused_at_the_header_bound(served):
    """llhttp has no bound of its own on a request's headers (h11 had 16 KB): a client streaming header bytes is
    answered 400 and closed once they pass MAX_HEAD_BYTES, well inside the header deadline, whatever the chunking."""
    from latentstore.serve.timeouts import MAX_HEAD_BYTES
    for chunk in (100, 4096, 60000):
        with socket.create_connection((served.host, served.port), timeout=30) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: ")
            sent, answer = 0, b""
            try:
                while sent < 20 * MAX_HEAD_BYTES:
                    s.sendall(b"a" * chunk)
                    sent += chunk
            except (BrokenPipeError, ConnectionResetError):
                pass
            s.settimeout(HEADER_S / 2)  # within the header deadline: the bound, not the timer, ended it
            try:
                while True:
                    b = s.recv(4096)
                    if not b:
                        break
                    answer += b
            except ConnectionResetError:
                pass
            assert answer.startswith(b"HTTP/1.1 400") and b"over %d bytes" % MAX_HEAD_BYTES in answer, (chunk, answer[:200])
    assert served.log().count("headers passed %d bytes" % MAX_HEAD_BYTES) >= 3
    with socket.create_connection((served.host, served.port), timeout=30) as s:  # headers just under it pass
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * (MAX_HEAD_BYTES - 200) + b"\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200")


def test_a_client_that_leaves_mid_upload_is_one_log_line(served):
    with socket.create_connection((served.host, served.port), timeout=30) as s:
        me = "%s:%d " % s.getsockname()[:2]
        s.sendall(b"POST /v1/images HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + WRITE.encode() +
                  b"\r\nContent-Type: image/png\r\nContent-Length: 50000\r\n\r\n" + image_bytes(2)[:500])
        time.sleep(0.3)  # the app is reading the body when the client goes
    t0 = time.time()
    while me not in served.log() and time.time() - t0 < 30:
        time.sleep(0.1)
    mine = [ln for ln in served.log().splitlines() if me in ln]
    assert len(mine) == 1 and "POST /v1/images 499" in mine[0] and "closed mid-request" in mine[0], mine
    assert "Traceback" not in served.log()


@pytest.mark.parametrize("query", [{"min_score": "nan"}, {"min_score": "inf"}, {"min_score": "-inf"},
                                   {"min_score": "1e999"}, {"min_score": "abc"}, {"min_score": ""},
                                   {"limit": "-1"}, {"limit": "0"}, {"limit": str(10 ** 30)}, {"limit": "abc"},
                                   {"limit": "1.5"}, {"label": "x" * 300}])
def test_no_query_value_is_a_500(served, query):
    r = served.request("GET", "/v1/search", params={"label": "cat", **query})
    assert r.status_code == 422 and r.json()["error"].count("\n") == 0, r.text
    ok = served.request("GET", "/v1/search", params={"label": "cat", "min_score": "1e-999", "limit": "3"})
    assert ok.status_code == 200 and ok.json()["results"] == []


def test_api_schema_needs_a_token_and_docs_pages_are_off(served):
    assert served.request("GET", "/openapi.json", tok=None).status_code == 401
    schema = served.request("GET", "/openapi.json")
    assert schema.status_code == 200 and "post" in schema.json()["paths"]["/v1/images"]
    assert served.request("GET", "/docs").status_code == 404 and served.request("GET", "/redoc").status_code == 404


def test_a_143_byte_thin_png_is_a_422_without_a_memory_spike(served):
    thin = png((8, 65535))
    assert len(thin) < 300
    hwm = vm_kb(served.proc.pid, "VmHWM")
    with ThreadPoolExecutor(4) as ex:  # four at once gave MemoryError 500s (issue #26)
        answers = list(ex.map(lambda _: served.request("POST", "/v1/images", tok=WRITE, content=thin,
                                                       headers={"content-type": "image/png"}), range(4)))
    assert [r.status_code for r in answers] == [422] * 4 and "aspect" in answers[0].json()["error"]
    assert vm_kb(served.proc.pid, "VmHWM") - hwm < 64 << 10  # a fit to 256 px would have been 1.6 GB each


def test_access_log_has_a_line_per_request_and_no_token(served):
    marker = f"/v1/images/{'ab' * 16}"
    for _ in range(3):
        assert served.request("GET", marker).status_code == 404
    t0 = time.time()
    while served.log().count(f"GET {marker} 404") < 3 and time.time() - t0 < 10:
        time.sleep(0.1)
    log = served.log()
    assert log.count(f"GET {marker} 404") == 3
    line = next(ln for ln in log.splitlines() if f"GET {marker} 404" in ln)
    assert line.rstrip().endswith("ms") and "B " in line  # bytes and milliseconds
    assert READ not in log and WRITE not in log


def _zoo() -> list:
    """(name, method, path, token, headers, body) of hostile or malformed requests, each answerable below 500."""
    png_ok, truncated = image_bytes(3), image_bytes(4)[:60]
    idat = zlib.compress(b"\0" * 60001 * 8)  # a header claiming 60000 x 60000 over a few rows of zeros
    ihdr = b"IHDR" + (60000).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])

    def chunk(b):
        return len(b[4:]).to_bytes(4, "big") + b + zlib.crc32(b).to_bytes(4, "big")
    huge_header_png = b"\x89PNG\r\n\x1a\n" + chunk(ihdr) + chunk(b"IDAT" + idat) + chunk(b"IEND")
    jpeg = bytearray(image_bytes(5, "JPEG"))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5:sof + 9] = (65500).to_bytes(2, "big") * 2  # a real JPEG whose frame header claims 65500 x 65500
    gif = io.BytesIO()
    Image.new("RGB", (16, 16)).save(gif, "GIF")
    mp = "multipart/form-data; boundary=XyZ"
    many = b"".join(b"--XyZ\r\nContent-Disposition: form-data; name=\"f%d\"\r\n\r\nv\r\n" % i for i in range(40))
    img = {"content-type": "image/png"}
    return [
        ("no token", "POST", "/v1/images", None, img, png_ok),
        ("wrong token", "POST", "/v1/images", "x" * 20, img, png_ok),
        ("read token", "POST", "/v1/images", READ, img, png_ok),
        ("text", "POST", "/v1/images", WRITE, {"content-type": "text/plain"}, b"hello"),
        ("empty", "POST", "/v1/images", WRITE, img, b""),
        ("truncated", "POST", "/v1/images", WRITE, img, truncated),
        ("gif", "POST", "/v1/images", WRITE, {"content-type": "image/gif"}, gif.getvalue()),
        ("header bomb", "POST", "/v1/images", WRITE, img, huge_header_png),
        ("jpeg bomb", "POST", "/v1/images", WRITE, {"content-type": "image/jpeg"}, bytes(jpeg)),
        ("gzip bomb", "POST", "/v1/images", WRITE, {**img, "content-encoding": "gzip"},
         gzip.compress(b"\0" * (8 << 20))),  # bodies are never inflated: not an image
        ("pixel bomb", "POST", "/v1/images", WRITE, img, png((7000, 7000))),
        ("thin", "POST", "/v1/images", WRITE, img, png((65535, 8))),
        ("over cap", "POST", "/v1/images", WRITE, img, b"\0" * (1 << 20) + b"x"),
        ("mp no boundary", "POST", "/v1/images", WRITE, {"content-type": "multipart/form-data"}, b"--x\r\n"),
        ("mp garbage", "POST", "/v1/images", WRITE, {"content-type": mp}, b"\x00\xff" * 500),
        ("mp no file", "POST", "/v1/images", WRITE, {"content-type": mp},
         b"--XyZ\r\nContent-Disposition: form-data; name=\"label\"\r\n\r\ncat\r\n--XyZ--\r\n"),
        ("mp many fields", "POST", "/v1/images", WRITE, {"content-type": mp}, many + b"--XyZ--\r\n"),
        ("bad label", "POST", "/v1/images?label=%00%01", WRITE, img, png_ok),
        ("long key", "POST", "/v1/images", WRITE, {**img, "idempotency-key": "k" * 5000}, png_ok),
        ("nan score", "GET", "/v1/search?label=a&min_score=nan", READ, {}, None),
        ("traversal", "GET", "/v1/images/..%2F..%2Fzarr.json", READ, {}, None),
        ("traversal latent", "GET", "/v1/images/..%2F_serve%2Findex.sqlite/latent", READ, {}, None),
        ("nul id", "GET", "/v1/images/%00/reconstruction", READ, {}, None),
        ("long id", "GET", "/v1/images/" + "f" * 4000, READ, {}, None),
        ("unknown route", "GET", "/admin", READ, {}, None),
        ("put", "PUT", "/v1/images", WRITE, img, png_ok),
        ("delete", "DELETE", "/v1/images/" + "0" * 32, WRITE, {}, None),
        ("docs", "GET", "/docs", READ, {}, None),
        ("schema no token", "GET", "/openapi.json", None, {}, None),
        ("metrics wrong token", "GET", "/metrics", "y" * 30, {}, None),
        ("bad bearer", "GET", "/readyz", None, {"authorization": "Basic Zm9vOmJhcg=="}, None),
        ("websocket", "GET", "/v1/images", READ, {"connection": "Upgrade", "upgrade": "websocket",
                                                  "sec-websocket-key": "x", "sec-websocket-version": "13"}, None),
    ]


RAW = [b"GARBAGE\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
       b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 70000 + b"\r\n\r\n",  # over h11's 16 KB of headers
       b"POST /v1/images HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
       b"POST /v1/images HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\nAuthorization: Bearer "
       + WRITE.encode() + b"\r\nContent-Type: image/png\r\n\r\n",
       b"POST /v1/images HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
       b"POST /v1/images HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nAuthorization: Bearer " + WRITE.encode()
       + b"\r\nContent-Type: image/png\r\n\r\n" + b"100000\r\n" + b"\0" * 0x100000 + b"\r\n" + b"10\r\n" + b"\0" * 16
       + b"\r\n0\r\n\r\n"]


def test_hostile_request_zoo_gets_no_5xx_and_no_memory_spike(served):
    pid = served.proc.pid
    hwm = vm_kb(pid, "VmHWM")
    zoo = _zoo()

    def send(item):
        name, method, path, tok, headers, body = item
        r = served.request(method, path, tok=tok, headers=headers, content=body)
        return name, r.status_code, r.text

    with ThreadPoolExecutor(8) as ex:
        answers = list(ex.map(send, zoo * 2)) + [("raw", int(a[9:12]) if a[:5] == b"HTTP/" else 0, a[:80])
                                                 for a in ex.map(served.raw, RAW)]
    bad = [a for a in answers if a[1] >= 500]
    assert not bad, bad
    for name, status, text in answers:
        if name != "raw" and status >= 400 and text.startswith("{"):
            assert "\n" not in json.loads(text)["error"], name
    assert served.proc.poll() is None and served.request("GET", "/healthz", tok=None).status_code == 200
    assert (vm_kb(pid, "VmHWM") - hwm) < 300 << 10, "peak RSS grew by more than 300 MB"
    assert "Traceback" not in served.log()
