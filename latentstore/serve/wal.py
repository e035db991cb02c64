"""The service's write-ahead log: checksummed records, fsynced before an upload is answered.

A record on disk:   b"LSW1" | u32 body length | u32 crc32(body) | body
body:               u32 json length | json (the upload's metadata, with "blobs": [len, ...]) | blobs
An upload's record carries its latent symbols and entropy-coded payload, so sealing needs no model.

Two kinds of log use this framing:
- the intake (`IntakeLog`): one per serving process, `_serve/intake/<owner>-<seq>.open` while written
  (flock-held, so another process can tell a live writer from a dead one), renamed to `.log` when rotated;
  the sealer consumes closed segments and deletes them once their records are in the journal;
- the journal (serve/sealer.py): every record of a not-yet-full store shard, with its slot.
Reading stops at the first record that is incomplete or fails its checksum: that is the torn tail a
crash mid-append leaves (a record is fsynced before its upload is answered, so a torn record was never
acknowledged); `repair` truncates it away and says so in one logged line.

Record format 2 carries the payload only: the symbols are the payload decoded with the store's tables, so
a record is about the payload's size (format 1 also carried the raw symbols, C*h*w bytes: 16 KB of an 18.6 KB
record at ls-c16, 256 px; issue #30). Format 1 records stay readable (`WalRecord.symbols_bytes`).

A failed append (ENOSPC, EIO, EROFS) leaves the file as it was before it: the bytes written are cut away and,
when even that fails, the intake segment is abandoned (the next append opens a new one), so no later record
ever follows a torn one. `FAULTS` lets tests fail any named write point (WRITE_POINTS) the way a full disk,
a failing device or a read-only remount would.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field

from ..store.append import fsync_path as fsync_dir  # noqa: F401  (the sealer's too)

log = logging.getLogger("latentstore.serve")

MAGIC = b"LSW1"
FRAME = struct.Struct("<4sII")  # magic, body length, crc32 of the body
MAX_BODY = 1 << 30  # a length beyond this is damage, not a record
RECORD_FORMAT = 2  # meta["format"]: 2 = blobs [payload]; absent (1) = blobs [symbols, payload]

# every place the intake log and the sealer write: a test arms one and the next write there fails
WRITE_POINTS = ("intake.open", "intake.write", "intake.fsync", "intake.rotate",  # the intake (wal.py)
                "journal.write", "journal.fsync", "journal.dirsync",  # the sealer (sealer.py) ...
                "seal.marker", "store.grow", "store.shard", "store.finalize", "store.sync", "seal.unmark",
                "index.add", "intake.delete", "journal.close")


class Faults:
    """Injected write failures at named points, as Postgres and Kafka test their logs. Empty in production."""

    def __init__(self):
        self.armed: dict[str, list] = {}  # point -> [errno, failures left, write half the bytes first]
        self.hits: dict[str, int] = {}  # point -> failures injected so far

    def arm(self, point: str, err: int = errno.ENOSPC, times: int = 1, partial: bool = False) -> None:
        if point not in WRITE_POINTS:
            raise ValueError(f"unknown write point {point}")
        self.armed[point] = [err, times, partial]

    def clear(self) -> None:
        self.armed.clear()

    def check(self, point: str, f=None, data: bytes = b"") -> None:
        """Raise the armed error at `point` (after writing half of `data` to `f` when armed partial)."""
        spec = self.armed.get(point)
        if spec is None or spec[1] <= 0:
            return
        spec[1] -= 1
        self.hits[point] = self.hits.get(point, 0) + 1
        if spec[2] and f is not None and data:
            f.write(data[: len(data) // 2])  # a torn write: what a disk that fills mid-record leaves
            f.flush()
        raise OSError(spec[0], f"{os.strerror(spec[0])} (injected at {point})")


FAULTS = Faults()


@dataclass
class WalRecord:
    meta: dict  # sha256, id, label, key, size, source_bytes, latent_shape, predictions, created (+ slot in the journal)
    blobs: list = field(default_factory=list)  # [payload (entropy-coded)]; format 1: [symbols, payload]
    symbols: object = None  # (C, h, w) uint8 once decoded (sealer), kept so a shard rewrite decodes it once

    @classmethod
    def of_payload(cls, meta: dict, payload: bytes) -> "WalRecord":
        return cls({**meta, "format": RECORD_FORMAT}, [payload])

    @property
    def payload(self) -> bytes:
        return self.blobs[-1]

    @property
    def symbols_bytes(self) -> bytes | None:
        """The raw symbols a format-1 record carries; None in format 2 (decode the payload)."""
        return self.blobs[0] if len(self.blobs) == 2 else None

    def to_bytes(self) -> bytes:
        j = json.dumps({**self.meta, "blobs": [len(b) for b in self.blobs]}, sort_keys=True,
                       separators=(",", ":")).encode()
        body = struct.pack("<I", len(j)) + j + b"".join(self.blobs)
        return FRAME.pack(MAGIC, len(body), zlib.crc32(body)) + body

    @classmethod
    def from_body(cls, body: bytes) -> "WalRecord":
        (n,) = struct.unpack_from("<I", body, 0)
        meta = json.loads(body[4: 4 + n])
        blobs, off = [], 4 + n
        for ln in meta.pop("blobs"):
            blobs.append(body[off: off + ln])
            off += ln
        if off != len(body) or len(blobs) != (1 if meta.get("format") == RECORD_FORMAT else 2):
            raise ValueError("blob lengths do not add up")
        return cls(meta, blobs)


def read_records(path: str) -> tuple[list[WalRecord], int, str | None]:
    """(records, bytes of good records, why the rest is unusable or None)."""
    with open(path, "rb") as f:
        data = f.read()
    out, off = [], 0
    while off < len(data):
        if len(data) - off < FRAME.size:
            return out, off, f"{len(data) - off} bytes of an incomplete record header"
        magic, n, crc = FRAME.unpack_from(data, off)
        if magic != MAGIC or n > MAX_BODY:
            return out, off, "a record header that is not one (bad magic or length)"
        body = data[off + FRAME.size: off + FRAME.size + n]
        if len(body) < n:
            return out, off, f"an incomplete record ({len(body)} of {n} bytes)"
        if zlib.crc32(body) != crc:
            return out, off, "a record failing its checksum"
        try:
            out.append(WalRecord.from_body(body))
        except (ValueError, KeyError, struct.error):
            return out, off, "a record whose body does not parse"
        off += FRAME.size + n
    return out, off, None


def repair(path: str) -> list[WalRecord]:
    """The records of a log file; a torn tail is truncated away, with one logged line."""
    records, good, why = read_records(path)
    if why is not None:
        size = os.path.getsize(path)
        log.warning("%s: dropped a torn tail of %d bytes after %d good records (%s)", path, size - good,
                    len(records), why)
        with open(path, "r+b") as f:
            f.truncate(good)
            f.flush()
            os.fsync(f.fileno())
    return records


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def append_durably(f, records: list[WalRecord], point: str) -> None:
    """Append records to an open binary file (opened "ab"; written through its descriptor, never buffered)
    and fsync: on return they survive a crash. On a failure the file is cut back to its size before and the
    OSError raised; if even that fails, the OSError carries `torn = True`: nothing may be appended to this
    file again before `repair` has cut the torn tail."""
    data = b"".join(r.to_bytes() for r in records)
    fd = f.fileno()
    start = os.fstat(fd).st_size
    try:
        FAULTS.check(f"{point}.write", _FdWriter(fd), data)
        _write_all(fd, data)
        FAULTS.check(f"{point}.fsync")
        os.fsync(fd)
    except OSError as e:
        try:  # a record after a torn one would be dropped with it: no torn bytes may stay in front of the next
            os.ftruncate(fd, start)
            os.fsync(fd)
        except OSError:
            e.torn = True
        raise


class _FdWriter:
    """What FAULTS.check writes a torn half through."""

    def __init__(self, fd: int):
        self.fd = fd

    def write(self, data: bytes) -> None:
        _write_all(self.fd, data)

    def flush(self) -> None:
        pass


NEW_SUFFIX = ".new"  # a segment being created (`<owner>-<seq>.open.new`), not yet locked and named


class IntakeLog:
    """One process's intake segments. append() is called by the batcher thread, rotate() by the sealer."""

    def __init__(self, directory: str, owner: str):
        self.dir, self.owner = directory, owner
        os.makedirs(directory, exist_ok=True)
        self._lock = threading.Lock()
        self._f = None
        self._path = ""
        self._count = 0
        self._seq = 0

    def _open(self) -> None:
        """A new segment, locked before it has its `.open` name: created as `.open.new`, flocked, then renamed.
        Created as `.open` directly, the sealer could see it between the create and the flock, find its lock free,
        take it as orphaned (renamed .log, sealed, deleted) while this process went on appending to it: those
        uploads were acknowledged, then gone with the unlinked file (seen under load: the next rotate failed
        with FileNotFoundError)."""
        self._seq += 1
        self._path = os.path.join(self.dir, f"{self.owner}-{self._seq:08d}.open")
        f = open(self._path + NEW_SUFFIX, "ab")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # held while this process writes it
            os.replace(self._path + NEW_SUFFIX, self._path)  # the lock stays with the file
            FAULTS.check("intake.open")
            fsync_dir(self.dir)
        except OSError:
            f.close()  # an empty segment, unlocked: the sealer takes it as orphaned and deletes it
            raise
        self._f, self._count = f, 0

    def append(self, records: list[WalRecord]) -> None:
        """Durable on return (one fsync for the whole batch: group commit). On OSError nothing of the batch
        stays in the log, or, when the write could not be cut back, the segment is abandoned (closed and
        unlocked: the sealer takes its good records and drops the torn tail) and the next append opens a new one."""
        if not records:
            return
        with self._lock:
            if self._f is None:
                self._open()
            try:
                append_durably(self._f, records, "intake")
            except OSError as e:
                if getattr(e, "torn", False):
                    f, self._f = self._f, None
                    f.close()
                raise
            self._count += len(records)

    def probe(self, nbytes: int) -> None:
        """Write and fsync `nbytes` in the intake folder, then remove them: OSError while the disk cannot take
        them (how a service finds that space has come back without risking an upload)."""
        path = os.path.join(self.dir, f"{self.owner}.probe")
        try:
            with open(path, "wb") as f:
                _write_all(f.fileno(), b"\0" * max(1, nbytes))
                os.fsync(f.fileno())
        finally:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass

    @property
    def pending(self) -> int:
        return self._count

    def rotate(self) -> str | None:
        """Close the current segment for the sealer (renamed .log); None when nothing was written. On OSError
        the segment stays this process's open one."""
        with self._lock:
            if self._f is None:
                return None
            closed = self._path[: -len(".open")] + ".log"
            FAULTS.check("intake.rotate")
            os.replace(self._path, closed)  # renamed while still locked: no other process takes it as orphaned
            f, self._f = self._f, None
            f.close()
            fsync_dir(self.dir)
            return closed

    def close(self) -> None:
        """Rotate the segment for the sealer; when even that fails, close it unrenamed (its flock released,
        the sealer takes it as orphaned)."""
        try:
            self.rotate()
        finally:
            f, self._f = self._f, None
            if f is not None:
                f.close()


def lock_held(path: str) -> bool | None:
    """Is this file flock-held by a live process (an intake writer, the sealer)? None when it is gone."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        f.close()


def live_segments(directory: str) -> int:
    """Open segments that a live process is still writing (other workers, at shutdown)."""
    names = os.listdir(directory) if os.path.isdir(directory) else []
    return sum(bool(lock_held(os.path.join(directory, n))) for n in names if n.endswith(".open"))


def closed_segments(directory: str) -> list[str]:
    """Segments ready to seal: rotated ones, and open ones whose writer is gone (its flock is free). A `.open.new`
    left by a writer killed before it named its segment holds no record: removed once stale and unlocked."""
    if not os.path.isdir(directory):
        return []
    out = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name.endswith(NEW_SUFFIX):
            try:  # a minute old: never one a live writer is naming (microseconds between create and rename)
                stale = time.time() - os.stat(path).st_mtime > 60 and os.path.getsize(path) == 0
            except FileNotFoundError:
                continue
            if stale and lock_held(path) is False:
                os.remove(path)
        elif name.endswith(".log"):
            out.append(path)
        elif name.endswith(".open"):
            try:
                f = open(path, "rb")
            except FileNotFoundError:  # rotated meanwhile: picked up next time
                continue
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                continue  # its writer is alive
            try:
                if os.path.exists(path):
                    closed = path[: -len(".open")] + ".log"
                    os.replace(path, closed)
                    out.append(closed)
            finally:
                f.close()
    return sorted(set(out))
