"""The writer lock: one conversion (of any number of ranks) or one merge writes a store at a time.

Each writing process holds `_locks/<role>.json` (role: `rank-00003`, or `merge`), created with O_EXCL
and holding {host, pid, rank, world, started}. A second writer of the same role, a writer whose job
has another world size, or a merge while any rank still holds its lock, gets one clear line.
Stale rule: a lock whose host is this machine and whose process is gone is stale and is taken over;
a lock from another host is stale once its heartbeat (the file's mtime, refreshed at every shard
commit) is older than LATENTSTORE_LOCK_STALE_S seconds (default 3600).
The lock lives inside the store, so it goes away with the store, and on a shared filesystem ranks on
different nodes see each other's locks.
"""
from __future__ import annotations

import json
import os
import socket
import time

from ..data.imageio import read_bounded
from ..errors import StoreError, UsageError

LOCK_DIR = "_locks"
MAX_LOCK_BYTES = 64 << 10  # a lock holds a few fields


def _stale_after_s() -> float:
    return float(os.environ.get("LATENTSTORE_LOCK_STALE_S", "3600"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(info: dict) -> str:
    who = f"host {info.get('host')} pid {info.get('pid')}"
    if info.get("role", "").startswith("rank"):
        who += f" (rank {info.get('rank')} of {info.get('world')})"
    return f"{who} since {info.get('started', '?')}"


class WriterLock:
    def __init__(self, root: str, role: str, rank: int = 0, world: int = 1):
        self.root, self.role, self.rank, self.world = root, role, rank, world
        self.path = os.path.join(root, LOCK_DIR, f"{role}.json")
        self.held = False

    @classmethod
    def for_rank(cls, root: str, rank: int, world: int) -> "WriterLock":
        return cls(root, f"rank-{rank:05d}", rank, world)

    @classmethod
    def for_merge(cls, root: str) -> "WriterLock":
        return cls(root, "merge")

    # ---- reading others' locks
    def others(self) -> list[dict]:
        """Live locks other than ours (stale ones are removed on the way)."""
        d = os.path.join(self.root, LOCK_DIR)
        out = []
        for f in sorted(os.listdir(d)) if os.path.isdir(d) else []:
            p = os.path.join(d, f)
            if p == self.path or not f.endswith(".json"):
                continue
            info = self._read_live(p)
            if info is not None:
                out.append(info)
        return out

    @staticmethod
    def _read_live(p: str) -> dict | None:
        try:
            info = json.loads(read_bounded(p, MAX_LOCK_BYTES, StoreError))  # a FIFO or /dev/zero cannot hang us
            age = time.time() - os.path.getmtime(p)
        except StoreError as e:
            if os.path.exists(p) and not os.path.isfile(p):  # a special file is no lock, and no writer's: say so
                raise StoreError(f"{str(e)}; remove it") from None
            return None  # vanished (or over the limit: not a lock we wrote)
        except (OSError, ValueError):
            return None  # vanished, or half-written by a writer killed at that moment: not a live lock
        if not isinstance(info, dict):
            return None
        pid = info.get("pid")
        same_host = info.get("host") == socket.gethostname()
        stale = (same_host and isinstance(pid, int) and not _pid_alive(pid)) or (not same_host and age > _stale_after_s())
        if stale:
            try:
                os.remove(p)
            except OSError:
                pass
            return None
        return info

    # ---- taking and releasing
    def acquire(self) -> "WriterLock":
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        for other in self.others():
            if self.role == "merge" or other.get("role") == "merge":
                raise UsageError(f"{self.root} is being written by {_describe(other)}; wait for it to finish")
            if other.get("world") != self.world:
                raise UsageError(f"{self.root} is being written by a job of {other.get('world')} rank(s) "
                                 f"({_describe(other)}); this job has {self.world}")
        info = {"host": socket.gethostname(), "pid": os.getpid(), "role": self.role, "rank": self.rank,
                "world": self.world, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        for _ in range(2):  # a second try after removing a stale lock of our own role
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self._read_live(self.path)
                if holder is not None:
                    raise UsageError(f"{self.root} is already being written by {_describe(holder)}; "
                                     f"if that process is gone, delete {self.path}") from None
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(info, f)
            self.held = True
            return self
        raise UsageError(f"{self.root}: could not take the writer lock {self.path}")

    def heartbeat(self) -> None:
        if self.held:
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        if self.held:
            try:
                os.remove(self.path)
                os.rmdir(os.path.dirname(self.path))  # only when no other rank holds a lock
            except OSError:
                pass
            self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
