"""The service's client: send a folder (or a list file) of images to `latentstore serve`, N uploads at a time.

Each file is one `POST /v1/images` with its raw bytes and Content-Type. A 503 (a full queue) or a lost
connection is retried with exponential backoff and jitter, never sooner than the server's Retry-After, a bounded
number of times; any other 4xx is the server rejecting that file (recorded with its reason, the rest go on);
401/403 stop the run with one line, since every other file would get the same answer. The server answers only
once an upload is durable, so "uploaded" here means stored. The same bytes twice are stored once, and the
answer says so: uploading a folder again reports every file as already stored.
Labels come from class folders (SRC/<class>/<image>, as `convert` lists them) or a list file's second column.
With `encode` each photo is compressed here with the store's codec and sent as its bitstream (client_encode.py).
"""
from __future__ import annotations

import email.utils
import hashlib
import itertools
import os
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..data.imageio import IMAGE_EXTENSIONS, MAX_FILE_BYTES, read_bounded
from ..errors import BadImageError, LatentstoreError, UsageError
from ..listfile import read_list_file

CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
                 ".bmp": "image/bmp", ".gif": "image/gif", ".tif": "image/tiff", ".tiff": "image/tiff",
                 ".ppm": "image/x-portable-pixmap", ".pgm": "image/x-portable-graymap"}
RETRY_STATUSES = (429, 503)  # "come back later": the queue is full or the server is not ready yet
MAX_RETRY_AFTER_S = 60.0  # a Retry-After longer than this is capped, so a run stays bounded in time


@dataclass
class UploadOptions:
    url: str  # the service's base URL, e.g. http://127.0.0.1:8000
    token: str | None = None  # bearer token (scope `write`) when the server runs with --token-file
    concurrency: int = 8  # uploads in flight at once; also the size of the connection pool
    retries: int = 6  # retries of one file after a 503 or a lost connection before it counts as failed
    backoff_s: float = 0.25  # the first retry's wait; doubled per retry (with jitter), capped at max_backoff_s
    max_backoff_s: float = 8.0  # the longest wait between two tries of one file (unless Retry-After asks more)
    timeout_s: float = 120.0  # one request's connect/read/write limit
    progress: bool = True  # a tqdm bar on stderr
    seed: int | None = None  # the backoff jitter's seed (None: random)
    encode: bool = False  # compress here with the store's codec (GET /v1/codec) and send bitstreams, not files
    tile: int | None = None  # --encode: tile side for big photos (None: as `latentstore compress`)
    codec_cache: str | None = None  # --encode: where fetched codecs are kept (None: client_encode.codec_cache_dir)


@dataclass
class FileResult:
    path: str
    outcome: str  # uploaded | duplicate | rejected | failed
    status: int | None = None  # the final HTTP status (None: no answer)
    reason: str = ""  # the server's {"error"} for a reject, or why it failed
    id: str | None = None
    sha256: str | None = None
    tries: int = 0


@dataclass
class UploadSummary:
    results: list[FileResult] = field(default_factory=list)
    seconds: float = 0.0
    bytes_sent: int = 0
    codec: str = ""  # --encode: the codec the photos were compressed with (RemoteCodec.describe)

    def count(self, outcome: str) -> int:
        return sum(r.outcome == outcome for r in self.results)

    @property
    def failed(self) -> int:
        return self.count("failed")

    def describe(self, examples: int = 3) -> str:
        n = len(self.results)
        lines = [f"{n} files in {self.seconds:.1f} s ({n / max(self.seconds, 1e-9):.1f} files/s, "
                 f"{self.bytes_sent / 1e6:.1f} MB sent): uploaded {self.count('uploaded')}, "
                 f"already stored {self.count('duplicate')} (dedup), rejected {self.count('rejected')}, "
                 f"failed {self.failed}"]
        if self.codec:
            lines.append(f"  encoded here with {self.codec}")
        for outcome in ("rejected", "failed"):
            rs = [r for r in self.results if r.outcome == outcome]
            for status, k in sorted(Counter(r.status or 0 for r in rs).items()):
                some = [r for r in rs if (r.status or 0) == status]
                what = f"HTTP {status}" if status else "no answer"
                lines.append(f"  {outcome} ({what}): {k}")
                lines += [f"    {os.path.basename(r.path)}: {r.reason}" for r in some[:examples]]
                if k > examples:
                    lines.append(f"    ... and {k - examples} more")
        return "\n".join(lines)


class _Stop(Exception):
    """An answer that every other upload would get as well (401/403): end the run."""


def list_upload_sources(src: str) -> list[tuple[str, str | None]]:
    """(path, label) for every image of SRC: a folder read as `convert` reads a class tree (SRC/<class>/<image>,
    searched recursively, the sorted class folders' names are the labels; images directly in SRC, beside class
    folders or alone, go unlabelled), or a list file (`path [label]` per line, relative paths from its folder).
    Standard library only (the client starts without torch or zarr): convert/sources.py's _list_tree, which
    imports the store package, applies the same rules."""
    if not os.path.exists(src):
        raise UsageError(f"{src}: no such file or directory")
    if not os.path.isdir(src):
        return [(p, label) for p, label in read_list_file(src, ("path", "label"))]
    out: list[tuple[str, str | None]] = []
    for e in sorted(os.listdir(src)):
        path = os.path.join(src, e)
        if e.startswith("."):
            continue
        if not os.path.isdir(path):
            out += [(path, None)] if e.lower().endswith(IMAGE_EXTENSIONS) else []
            continue
        for root, dirs, files in os.walk(path):
            dirs.sort()
            out += [(os.path.join(root, f), e) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not out:
        raise UsageError(f"{src}: no images found (extensions {', '.join(IMAGE_EXTENSIONS)})")
    return out


def check_url(url: str) -> str:
    """The base URL without a trailing slash; UsageError for anything but http(s)://host[:port]."""
    import httpx
    try:
        u = httpx.URL(url)
    except Exception as e:  # httpx.InvalidURL and friends
        raise UsageError(f"--url {url}: not a URL ({e})") from None
    if u.scheme not in ("http", "https") or not u.host:
        raise UsageError(f"--url {url}: expected http://HOST:PORT")
    if u.path not in ("", "/") or u.query:
        raise UsageError(f"--url {url}: give the service's base URL, http://HOST:PORT, without a path "
                         f"(the client adds /v1/images)")
    return url.rstrip("/")


def retry_after_s(value: str | None) -> float:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); 0 when absent or unreadable."""
    if not value:
        return 0.0
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return 0.0


def is_duplicate(body: dict) -> bool:
    """Whether a 200 says the bytes were stored before (dedup): the service answers `"duplicate": true`."""
    return bool(body.get("duplicate", False))


def _error_text(resp) -> str:
    """The server's one-line {"error"}, else the start of whatever it sent, else the status's phrase."""
    try:
        msg = resp.json().get("error")
    except (ValueError, AttributeError):  # not JSON, or JSON that is not an object
        msg = None
    text = str(msg or resp.text[:200] or resp.reason_phrase).strip()
    return text.splitlines()[0] if text else f"HTTP {resp.status_code}"


def _upload_one(client, opts: UploadOptions, path: str, label: str | None, rng: random.Random,
                sent: list, remote=None) -> FileResult:
    import httpx
    try:
        data = read_bounded(path, MAX_FILE_BYTES)
    except BadImageError as e:
        return FileResult(path, "failed", None, str(e))
    body = {"content": data, "content_type": CONTENT_TYPES.get(os.path.splitext(path)[1].lower(),
                                                                 "application/octet-stream")}
    if remote is not None:  # --encode: the bitstream goes instead of the file
        from .client_encode import encode_photo
        try:
            body = encode_photo(remote, data, path, opts.tile)
        except BadImageError as e:
            return FileResult(path, "rejected", None, f"not encoded: {e}")
    files = body.get("files")
    data = files["file"][1] if files else body["content"]
    sha = hashlib.sha256(data).hexdigest()
    headers = {} if files else {"Content-Type": body["content_type"]}
    size = sum(len(f[1]) for f in files.values()) if files else len(data)
    if opts.token:
        headers["Authorization"] = f"Bearer {opts.token}"
    params = {"label": label} if label is not None else None
    last = ""
    for attempt in itertools.count():
        wait = min(opts.max_backoff_s, opts.backoff_s * 2 ** attempt) * rng.uniform(0.5, 1.0)
        try:
            resp = client.post(f"{opts.url}/v1/images", headers=headers, params=params,
                               **({"files": files} if files else {"content": data}))
        except httpx.TransportError as e:  # refused, reset, timed out: the server may be restarting
            status, last = None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no answer'}"
        else:
            with sent[1]:
                sent[0] += size
            status = resp.status_code
            if 200 <= status < 300:
                try:
                    body = resp.json()
                    ok = isinstance(body, dict) and body.get("sha256") == sha and body.get("id")
                except ValueError:
                    body, ok = {}, False
                if not ok:  # what was stored is not what was sent, or the answer is not the service's
                    return FileResult(path, "failed", status, f"answer without this file's sha256 {sha[:16]}...: "
                                      f"{resp.text[:120]!r}", None, sha, attempt + 1)
                outcome = "duplicate" if is_duplicate(body) else "uploaded"
                return FileResult(path, outcome, status, "", body["id"], sha, attempt + 1)
            last = _error_text(resp)
            if status in (401, 403):
                raise _Stop(f"{opts.url} answered {status} ({last}): "
                            + ("pass a token with --token" if status == 401 and not opts.token else
                               "the token is not accepted for uploads" if status == 401 else
                               "the token lacks the `write` scope"))
            if status not in RETRY_STATUSES:
                outcome = "rejected" if 400 <= status < 500 else "failed"
                return FileResult(path, outcome, status, last, None, sha, attempt + 1)
            wait = max(wait, min(MAX_RETRY_AFTER_S, retry_after_s(resp.headers.get("retry-after"))))
        if attempt >= opts.retries:
            return FileResult(path, "failed", status, f"{last} (after {attempt + 1} tries)", None, sha, attempt + 1)
        time.sleep(wait)


def _check_reachable(client, url: str) -> None:
    import httpx
    try:
        client.get(f"{url}/healthz")
    except httpx.TransportError as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LatentstoreError(f"cannot reach {url}: {why}") from None


def upload(src: str, opts: UploadOptions) -> UploadSummary:
    """Upload every image of SRC (a folder or a list file); the summary of what happened to each."""
    import httpx
    from tqdm import tqdm
    if opts.concurrency < 1 or opts.retries < 0:
        raise UsageError("--concurrency must be >= 1 and --retries >= 0")
    opts.url = check_url(opts.url)
    items = list_upload_sources(src)
    lock, stop = threading.Lock(), threading.Event()
    summary, sent = UploadSummary(), [0, threading.Lock()]
    todo, stopped = iter(items), []
    limits = httpx.Limits(max_connections=opts.concurrency, max_keepalive_connections=opts.concurrency)
    seeds = random.Random(opts.seed)
    t0 = time.perf_counter()
    with httpx.Client(limits=limits, timeout=opts.timeout_s) as client:
        _check_reachable(client, opts.url)
        remote = None
        if opts.encode:
            from .client_encode import fetch_codec
            auth = {"Authorization": f"Bearer {opts.token}"} if opts.token else {}
            remote = fetch_codec(client, opts.url, auth, opts.codec_cache)
            summary.codec = remote.describe()
        bar = tqdm(total=len(items), unit="img", disable=not opts.progress, desc="upload", dynamic_ncols=True)

        def worker(rng: random.Random) -> None:
            while not stop.is_set():
                with lock:
                    nxt = next(todo, None)
                if nxt is None:
                    return
                try:
                    r = _upload_one(client, opts, nxt[0], nxt[1], rng, sent, remote)
                except _Stop as e:
                    stopped.append(str(e))
                    stop.set()
                    return
                with lock:
                    summary.results.append(r)
                    bar.update(1)
                    bar.set_postfix(new=summary.count("uploaded"), dedup=summary.count("duplicate"),
                                    rejected=summary.count("rejected"), failed=summary.failed, refresh=False)

        with bar, ThreadPoolExecutor(opts.concurrency, thread_name_prefix="upload") as pool:
            try:
                for f in [pool.submit(worker, random.Random(seeds.random())) for _ in range(opts.concurrency)]:
                    f.result()
            except BaseException:  # Ctrl-C: the workers finish the file in hand and take no other
                stop.set()
                raise
    if stopped:
        raise LatentstoreError(stopped[0])
    order = {p: i for i, (p, _) in enumerate(items)}
    summary.results.sort(key=lambda r: order[r.path])
    summary.seconds, summary.bytes_sent = time.perf_counter() - t0, sent[0]
    return summary
