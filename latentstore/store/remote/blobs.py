"""The training reader's view of a remote store's shards: whole objects, fetched in parallel, kept in a
size-bounded memory LRU (and, optionally, a size-bounded local disk cache).

A loader batch touches a few shards; `fetch` gets the missing ones at once, at most `in_flight` GETs in
flight, so a remote shard costs one request however many samples are read from it. Objects over
`whole_max` bytes are read by range instead. Settings come from the environment, so DataLoader workers
(separate processes) see the same ones:
    LATENTSTORE_REMOTE_CACHE_MB   memory for whole shards, per process (default 1024)
    LATENTSTORE_REMOTE_IN_FLIGHT  concurrent requests per process (default 16)
    LATENTSTORE_CACHE_DIR         a local read-through cache of shard objects (default: none)
    LATENTSTORE_CACHE_DIR_MB      its bound; the least recently used files go first (default 10240)
The disk cache is keyed by the store's schema checksum, so a store rewritten at the same URL never
serves old bytes; a cached file's size is checked against the object's on every hit.
"""
from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor

from ...atomic import write_bytes_atomic


def _env_number(name: str, default: float) -> float:
    """A positive number from the environment (fractions allowed: 0.5 MB), the default when unset or bad."""
    try:
        return max(1e-6, float(os.environ.get(name, default)))
    except ValueError:
        return default


class RequestCounter:
    """Requests and bytes a process sent to object storage (the loader benchmark's requests per sample)."""

    requests = 0
    bytes = 0
    _lock = threading.Lock()

    @classmethod
    def add(cls, nbytes: int) -> None:
        with cls._lock:
            cls.requests += 1
            cls.bytes += nbytes

    @classmethod
    def reset(cls) -> None:
        cls.requests = cls.bytes = 0


class ShardCache:
    def __init__(self, loc, namespace: str, whole_max: int = 256 << 20):
        self.loc, self.namespace, self.whole_max = loc, namespace, whole_max
        self.max_bytes = int(_env_number("LATENTSTORE_REMOTE_CACHE_MB", 1024) * (1 << 20))
        self.in_flight = max(1, int(_env_number("LATENTSTORE_REMOTE_IN_FLIGHT", 16)))
        self.cache_dir = os.environ.get("LATENTSTORE_CACHE_DIR") or None
        self.cache_dir_max = int(_env_number("LATENTSTORE_CACHE_DIR_MB", 10240) * (1 << 20))
        self._mem: OrderedDict[str, bytes] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pins: dict[str, bytes] = {}  # the shards of the batch being read, held whatever the LRU evicts
        self._pid = os.getpid()  # a forked child starts over: its parent's fetch threads do not exist there

    def __getstate__(self):  # threads and cached bytes stay in their process
        return {"loc": self.loc, "namespace": self.namespace, "whole_max": self.whole_max}

    def __setstate__(self, d):
        self.__init__(d["loc"], d["namespace"], d["whole_max"])

    # ---- memory
    def _hit(self, rel: str) -> bytes | None:
        with self._lock:
            data = self._mem.get(rel)
            if data is not None:
                self._mem.move_to_end(rel)
            return data

    def _keep(self, rel: str, data: bytes) -> None:
        with self._lock:
            if rel in self._mem or len(data) > self.max_bytes:
                return
            self._mem[rel] = data
            self._held += len(data)
            while self._held > self.max_bytes:
                _, old = self._mem.popitem(last=False)
                self._held -= len(old)

    # ---- disk
    def _disk_path(self, rel: str) -> str:
        key = hashlib.sha256(f"{self.loc.url}/{rel}".encode()).hexdigest()[:32]
        return os.path.join(self.cache_dir, self.namespace[:16], key)

    def _from_disk(self, rel: str, size: int | None) -> bytes | None:
        if not self.cache_dir:
            return None
        p = self._disk_path(rel)
        try:
            with open(p, "rb") as f:
                data = f.read()
            os.utime(p)  # recently used
        except OSError:
            return None
        return data if size is None or len(data) == size else None

    def _to_disk(self, rel: str, data: bytes) -> None:
        if not self.cache_dir or len(data) > self.cache_dir_max:
            return
        p = self._disk_path(rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        write_bytes_atomic(p, data, fsync=False)
        self._trim_disk()

    def _trim_disk(self) -> None:
        files = []
        for d, _, names in os.walk(self.cache_dir):
            for n in names:
                p = os.path.join(d, n)
                try:
                    st = os.stat(p)
                    files.append((st.st_atime, st.st_mtime, st.st_size, p))
                except OSError:
                    pass
        total = sum(f[2] for f in files)
        for _, _, size, p in sorted(files):
            if total <= self.cache_dir_max:
                break
            try:
                os.remove(p)
                total -= size
            except OSError:
                pass

    # ---- fetching
    def get(self, rel: str, size: int | None = None) -> bytes:
        """The whole object (memory, then disk, then one GET)."""
        self._after_fork()
        data = self._pins.get(rel) or self._hit(rel)
        if data is None:
            data = self._from_disk(rel, size)
            if data is None:
                data = self.loc.read(rel)
                RequestCounter.add(len(data))
                self._to_disk(rel, data)
            self._keep(rel, data)
        return data

    def fetch(self, rels) -> dict[str, bytes]:
        """These objects' bytes, the missing ones fetched in parallel (at most `in_flight` requests at a time);
        objects that do not exist are left out."""
        self._after_fork()
        rels = list(dict.fromkeys(rels))
        out = {r: d for r in rels if (d := self._pins.get(r) or self._hit(r)) is not None}
        todo = [r for r in rels if r not in out]
        if len(todo) > 1 and self._pool is None:
            self._pool = ThreadPoolExecutor(self.in_flight, thread_name_prefix="latentstore-fetch")
        futures = [(r, self._pool.submit(self.get, r)) for r in todo] if len(todo) > 1 else []
        for r, f in futures or [(r, None) for r in todo]:
            try:
                out[r] = f.result() if f is not None else self.get(r)
            except FileNotFoundError:
                pass
        return out

    @contextmanager
    def pinned(self, rels):
        """Fetch these objects (in parallel) and hold them while a batch is read from them: with a memory cache
        smaller than the batch's shards, the LRU alone would evict them between two of its samples."""
        saved = self._pins
        self._pins = {**saved, **self.fetch(rels)}
        try:
            yield
        finally:
            self._pins = saved

    def _after_fork(self) -> None:
        if self._pid != os.getpid():
            self.__init__(self.loc, self.namespace, self.whole_max)

    def read_range(self, rel: str, off: int, size: int, object_size: int | None = None) -> bytes:
        """Bytes [off, off + size) of an object: sliced from the whole object when it fits `whole_max`."""
        data = self._pins.get(rel) or self._hit(rel)
        if data is None and object_size is not None and object_size > self.whole_max:
            out = self.loc.read_range(rel, off, size)
            RequestCounter.add(len(out))
            return out
        data = data if data is not None else self.get(rel, object_size)
        return data[off: off + size]
