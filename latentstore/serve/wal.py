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
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import struct
import threading
import zlib
from dataclasses import dataclass, field

log = logging.getLogger("latentstore.serve")

MAGIC = b"LSW1"
FRAME = struct.Struct("<4sII")  # magic, body length, crc32 of the body
MAX_BODY = 1 << 30  # a length beyond this is damage, not a record


@dataclass
class WalRecord:
    meta: dict  # sha256, id, label, key, size, source_bytes, latent_shape, predictions, created (+ slot in the journal)
    blobs: list = field(default_factory=list)  # [symbols (C*h*w uint8 bytes), payload (entropy-coded)]

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
        if off != len(body):
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


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def append_durably(f, records: list[WalRecord]) -> None:
    """Write records to an open binary file and fsync: on return they survive a crash."""
    f.write(b"".join(r.to_bytes() for r in records))
    f.flush()
    os.fsync(f.fileno())


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
        self._seq += 1
        self._path = os.path.join(self.dir, f"{self.owner}-{self._seq:08d}.open")
        self._f = open(self._path, "ab")
        fcntl.flock(self._f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # held while this process writes it
        fsync_dir(self.dir)
        self._count = 0

    def append(self, records: list[WalRecord]) -> None:
        """Durable on return (one fsync for the whole batch: group commit)."""
        if not records:
            return
        with self._lock:
            if self._f is None:
                self._open()
            append_durably(self._f, records)
            self._count += len(records)

    @property
    def pending(self) -> int:
        return self._count

    def rotate(self) -> str | None:
        """Close the current segment for the sealer (renamed .log); None when nothing was written."""
        with self._lock:
            if self._f is None:
                return None
            f, path = self._f, self._path
            self._f = None
            closed = path[: -len(".open")] + ".log"
            os.replace(path, closed)  # renamed while still locked: no other process takes it as orphaned
            fsync_dir(self.dir)
            f.close()
            return closed

    def close(self) -> None:
        self.rotate()


def _held(path: str) -> bool | None:
    """Is this file flock-held by a live writer? None when it is gone."""
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
    return sum(bool(_held(os.path.join(directory, n))) for n in names if n.endswith(".open"))


def closed_segments(directory: str) -> list[str]:
    """Segments ready to seal: rotated ones, and open ones whose writer is gone (its flock is free)."""
    if not os.path.isdir(directory):
        return []
    out = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name.endswith(".log"):
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
