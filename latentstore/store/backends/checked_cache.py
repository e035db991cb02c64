"""A remote store's shard cache that checks what it fetches: every fresh object (one GET, or a file of the
local disk cache) is hashed once and compared with the sha256 the schema records for it, before it is kept in
memory or written to the disk cache. So a remote shard is checked once per fetch, not once per sample, and no
reader slices samples out of bytes that fail their checksum."""
from __future__ import annotations

import hashlib

from ...errors import StoreError
from ..remote.blobs import ShardCache


class ShardChecksumError(StoreError):
    """A fetched shard object whose bytes fail the schema's sha256; `rel` names it (readers name the sample)."""

    def __init__(self, message: str, rel: str = ""):
        super().__init__(message)
        self.rel = rel


class CheckedShardCache(ShardCache):
    def __init__(self, loc, namespace: str, whole_max: int = 256 << 20, checksums: dict | None = None,
                 store: str = ""):
        super().__init__(loc, namespace, whole_max)
        # re-initialised after a fork (ShardCache._after_fork) without them: keep what this object had
        self.checksums = checksums if checksums is not None else getattr(self, "checksums", {})  # rel -> sha256
        self.store = store or getattr(self, "store", "")  # the store's URL, for error messages
        self._checked = None  # the bytes object checked last: a GET is hashed once, not again at the memory LRU

    def __getstate__(self):
        return {**super().__getstate__(), "checksums": self.checksums, "store": self.store}

    def __setstate__(self, d):
        self.checksums, self.store = d["checksums"], d["store"]
        super().__setstate__(d)

    def _check(self, rel: str, data: bytes) -> None:
        want = self.checksums.get(rel)  # objects without one (array metadata) pass as they are
        if want is None or data is self._checked:
            return
        if hashlib.sha256(data).hexdigest() != want:
            raise ShardChecksumError(f"{self.store}: {rel}: shard fails its sha256 (damaged in the object store or "
                                     "the local cache); run latentstore verify", rel)
        self._checked = data

    def _to_disk(self, rel: str, data: bytes) -> None:
        self._check(rel, data)
        super()._to_disk(rel, data)

    def _keep(self, rel: str, data: bytes) -> None:
        self._check(rel, data)
        super()._keep(rel, data)
