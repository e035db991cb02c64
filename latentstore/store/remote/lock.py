"""The writer lock on object storage: a lock object with a lease, taken and renewed by conditional puts.

`_locks/<role>.json` is created with a conditional create (S3 If-None-Match: *), so of two writers that
start together exactly one gets it. The holder renews its lease at every shard commit with a conditional
update (If-Match: the e_tag it last wrote); if that fails, another writer has taken the lock over and this
one stops before committing anything more. A lock is stale when its process is gone (same host) or when
its lease has not been renewed for LATENTSTORE_LOCK_STALE_S seconds (default 3600, any host); a stale
lock is taken over with a conditional update against the e_tag read, so two writers taking over the same
stale lock cannot both win. Roles and refusals are those of the local lock (store/lock.py).
"""
from __future__ import annotations

import json
import os
import socket
import time

from ...errors import StoreError, UsageError
from ..lock import LOCK_DIR, _describe, _pid_alive, _stale_after_s
from .errors import AlreadyExists, PreconditionFailed


class RemoteLock:
    def __init__(self, loc, role: str, rank: int = 0, world: int = 1):
        self.loc, self.role, self.rank, self.world = loc, role, rank, world
        self.rel = f"{LOCK_DIR}/{role}.json"
        self.etag: str | None = None
        self.started = time.strftime("%Y-%m-%dT%H:%M:%S")

    @classmethod
    def for_rank(cls, loc, rank: int, world: int) -> "RemoteLock":
        return cls(loc, f"rank-{rank:05d}", rank, world)

    @classmethod
    def for_merge(cls, loc) -> "RemoteLock":
        return cls(loc, "merge")

    @property
    def held(self) -> bool:
        return self.etag is not None

    def _body(self) -> bytes:
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "role": self.role, "rank": self.rank,
                           "world": self.world, "started": self.started, "renewed": time.time()}).encode()

    def _read(self, rel: str) -> tuple[dict | None, str | None]:
        """(lock info, e_tag), (None, None) when absent; unreadable JSON counts as a stale lock."""
        h = self.loc.head(rel)
        if h is None:
            return None, None
        try:
            info = json.loads(self.loc.read(rel))
        except FileNotFoundError:
            return None, None
        except ValueError:
            info = {}
        return (info if isinstance(info, dict) else {}), h["e_tag"]

    @staticmethod
    def is_stale(info: dict) -> bool:
        pid, renewed = info.get("pid"), info.get("renewed")
        if info.get("host") == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid):
            return True
        return not isinstance(renewed, (int, float)) or time.time() - renewed > _stale_after_s()

    def others(self) -> list[dict]:
        """Live locks other than ours."""
        out = []
        for rel in sorted(self.loc.list(LOCK_DIR + "/")):
            if rel == self.rel or not rel.endswith(".json"):
                continue
            info, _ = self._read(rel)
            if info is not None and not self.is_stale(info):
                out.append(info)
        return out

    def acquire(self) -> "RemoteLock":
        for other in self.others():
            if self.role == "merge" or other.get("role") == "merge":
                raise UsageError(f"{self.loc.url} is being written by {_describe(other)}; wait for it to finish")
            if other.get("world") != self.world:
                raise UsageError(f"{self.loc.url} is being written by a job of {other.get('world')} rank(s) "
                                 f"({_describe(other)}); this job has {self.world}")
        try:
            self.etag = self.loc.put(self.rel, self._body(), create=True)
            return self
        except AlreadyExists:
            pass
        info, etag = self._read(self.rel)
        if info is not None and not self.is_stale(info):
            raise UsageError(f"{self.loc.url} is already being written by {_describe(info)}; if that process is "
                             f"gone, delete {self.loc.url}/{self.rel} or wait {_stale_after_s():.0f} s for its lease "
                             "to run out")
        try:  # stale: take it over, but only if nobody changed it since we read it
            self.etag = self.loc.put(self.rel, self._body(), create=etag is None, if_match=etag)
        except (AlreadyExists, PreconditionFailed):
            raise UsageError(f"{self.loc.url}: another writer took over the stale lock {self.rel} just now") from None
        return self

    def heartbeat(self) -> None:
        """Renew the lease; StoreError when another writer has taken the lock (this one must stop)."""
        if not self.held:
            return
        try:
            self.etag = self.loc.put(self.rel, self._body(), if_match=self.etag)
        except PreconditionFailed:
            self.etag = None
            raise StoreError(f"{self.loc.url}: this writer's lock {self.rel} was taken over by another writer "
                             "(its lease ran out); stopping without committing more") from None

    def release(self) -> None:
        if not self.held:
            return
        try:
            h = self.loc.head(self.rel)
            if h is not None and h["e_tag"] == self.etag:  # still ours
                self.loc.delete(self.rel)
        except StoreError:
            pass  # the endpoint is gone: the lease runs out on its own
        self.etag = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
