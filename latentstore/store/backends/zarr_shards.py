"""A fast path for reading one image's symbols out of a sharded Zarr v3 latent array.

zarr-python spends over a millisecond per inner chunk in its async codec pipeline; a training
loader wants tens of microseconds. The sharding format is a spec (zarr-specs, sharding codec v1.0):
a shard file is its inner chunks followed by an index of (offset, nbytes) uint64 pairs, one per
inner chunk, encoded by the index codecs (here: little-endian bytes + crc32c). We read the index
once per shard, then one positioned read and one ANS decode per image. Used only when the array's
metadata is exactly the layout latentstore writes; anything else goes through zarr itself.
Integrity: the chunk CRCs are checked by `latentstore verify` (through zarr), not on this hot path.
"""
from __future__ import annotations

import json
import os
import struct

import numpy as np

from ..zarr_codec import CODEC_ID, _decode_chunk

EMPTY = 2 ** 64 - 1


class ShardReader:
    def __init__(self, array_dir: str, shard_rows: int, chunk_shape: tuple, freqs: np.ndarray, key_sep: str):
        self.dir, self.S, self.chunk_shape, self.freqs, self.sep = array_dir, shard_rows, chunk_shape, freqs, key_sep
        self._index: dict[int, np.ndarray] = {}
        self._fds: dict[int, int] = {}
        self._sizes: dict[int, int] = {}

    @classmethod
    def for_store(cls, root: str, freqs: np.ndarray) -> "ShardReader | None":
        d = os.path.join(root, "latents")
        try:
            with open(os.path.join(d, "zarr.json")) as f:
                meta = json.load(f)
            (shard,) = meta["codecs"]
            cfg = shard["configuration"]
            inner = [c["name"] for c in cfg["codecs"]]
            index = [c["name"] for c in cfg["index_codecs"]]
            enc = meta["chunk_key_encoding"]
            ok = (shard["name"] == "sharding_indexed" and inner == [CODEC_ID, "crc32c"]
                  and index == ["bytes", "crc32c"] and cfg.get("index_location", "end") == "end"
                  and enc["name"] == "default" and cfg["chunk_shape"][0] == 1
                  and cfg["index_codecs"][0].get("configuration", {}).get("endian", "little") == "little")
            if not ok:
                return None
            S = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
            sep = enc.get("configuration", {}).get("separator", "/")
            return cls(d, S, tuple(cfg["chunk_shape"]), freqs, sep)
        except (OSError, KeyError, ValueError, TypeError):
            return None

    def _shard_path(self, k: int) -> str:
        ndim = len(self.chunk_shape)
        return os.path.join(self.dir, "c" + self.sep + self.sep.join([str(k)] + ["0"] * (ndim - 1)))

    def _fd_index(self, k: int):
        if k not in self._index:
            path = self._shard_path(k)
            if not os.path.exists(path):
                self._index[k] = None
                return None, None
            fd = os.open(path, os.O_RDONLY)
            n = self.S * 16 + 4
            size = os.fstat(fd).st_size
            raw = os.pread(fd, n, size - n)
            self._index[k] = np.frombuffer(raw[:-4], dtype="<u8").reshape(self.S, 2)
            self._fds[k] = fd
            self._sizes[k] = size
        return self._fds.get(k), self._index[k]

    def shard_index(self, k: int) -> np.ndarray | None:
        """(rows, 2) uint64 (offset, nbytes) of shard k's inner chunks, read fresh from the file."""
        self._index.pop(k, None)
        fd = self._fds.pop(k, None)
        if fd is not None:
            os.close(fd)
        return self._fd_index(k)[1]

    def read(self, slot: int) -> np.ndarray:
        """(C, h, w) uint8 symbols of the image at `slot`."""
        k, j = divmod(slot, self.S)
        fd, index = self._fd_index(k)
        shape = self.chunk_shape
        if index is None or index[j, 0] == EMPTY:
            return np.zeros(shape[1:], np.uint8)  # an all-fill chunk is not stored: symbol 0 everywhere
        off, nbytes = int(index[j, 0]), int(index[j, 1])
        if off + nbytes > self._sizes[k] or nbytes < 8:
            raise ValueError(f"shard {k}: index entry {j} points outside the file (damaged; run latentstore verify)")
        data = os.pread(fd, nbytes, off)[:-4]  # drop the inner crc32c
        return _decode_chunk(data, self.freqs, shape, 1)[0]

    def __getstate__(self):  # file descriptors do not cross into DataLoader workers
        d = dict(self.__dict__)
        d["_index"], d["_fds"], d["_sizes"] = {}, {}, {}
        return d

    def __del__(self):
        for fd in getattr(self, "_fds", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass
