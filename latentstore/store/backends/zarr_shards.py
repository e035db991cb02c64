"""A fast path for reading images' symbols out of a sharded Zarr v3 latent array.

zarr-python spends over a millisecond per inner chunk in its async codec pipeline; a training
loader wants tens of microseconds. The sharding format is a spec (zarr-specs, sharding codec v1.0):
a shard file is its inner chunks followed by an index of (offset, nbytes) uint64 pairs, one per
inner chunk, encoded by the index codecs (here: little-endian bytes + crc32c). We read the index
once per shard, then one positioned read per image, and decode a whole batch in one call (v2, v3:
one rANS decoder call over every payload at once). Used only when the array's metadata is exactly the layout
latentstore writes; anything else goes through zarr itself.
Integrity: every read checks what it reads, as zarr would: the index's crc32c once per shard (when the index
is read), each image's inner crc32c when its chunk is read (0.3 us for 4 KB), and every rANS lane's final
state in the decoder. A failure is a CorruptSampleError naming the store, shard and sample.

Writing (`shard_file_bytes`) is the same layout in reverse, for the same reason: conversion already has
each image's entropy-coded payload (numba over a whole shard, or the GPU's rANS encoder), and handing
symbols to zarr would make it re-encode them one chunk at a time through its async pipeline.
"""
from __future__ import annotations

import json
import os
import stat

import google_crc32c
import numpy as np

from ...data.imageio import file_kind
from ...errors import StoreError, first_line
from ..coders import lane_coder
from ..remote.location import location_for
from ..schema import read_metadata
from ..zarr_codec import CODEC_ID, LANE_CODECS, _decode_chunk
from .base import CorruptSampleError
from .checked_cache import ShardChecksumError

EMPTY = 2 ** 64 - 1
SHA_FAILED = ("its shard object fails its sha256 (damaged in the object store or the local cache); "
              "run latentstore verify")
INNER_CRC = 4  # the inner crc32c after each chunk's payload


def _crc32c(data: bytes) -> bytes:
    """zarr's Crc32cCodec: crc32c of the bytes, appended as a little-endian uint32."""
    return int(google_crc32c.value(data)).to_bytes(4, "little")


def shard_file_bytes(chunks: list) -> bytes | None:
    """One shard file as zarr's sharding codec writes it with latentstore's layout (and ShardReader reads it):
    `chunks` has one entry per row of the shard, a payload (bytes) or None for an empty row. The stored
    chunks, each its payload + crc32c, back to back in row order (zarr's order for one-image chunks: the
    Morton order of (row, 0, 0, 0) is row order); then the index, (offset, nbytes) uint64 little-endian per
    row, 2**64-1 twice for an empty row; then the index's crc32c. None when every row is empty: zarr then
    writes no file at all."""
    index = np.full((len(chunks), 2), EMPTY, dtype="<u8")
    parts, off = [], 0
    for j, payload in enumerate(chunks):
        if payload is None:
            continue
        parts += [payload, _crc32c(payload)]
        index[j] = (off, len(payload) + INNER_CRC)
        off += len(payload) + INNER_CRC
    if not parts:
        return None
    raw = index.tobytes()
    return b"".join(parts + [raw, _crc32c(raw)])


def _recorded_files(root: str) -> frozenset:
    """The files a local store's schema records checksums of (none when the schema cannot be read: the reads
    that need it say why)."""
    from ..schema import read_schema
    try:
        return frozenset(read_schema(root).checksums)
    except Exception:  # read_schema raises our one-line errors and others for damage; this is only a hint
        return frozenset()


class ShardReader:
    def __init__(self, array_dir: str, shard_rows: int, chunk_shape: tuple, coder: str, tables: np.ndarray,
                 key_sep: str, store: str = "", recorded=frozenset()):
        self.dir, self.S, self.chunk_shape, self.sep = array_dir, shard_rows, chunk_shape, key_sep
        self.coder, self.tables = coder, tables
        self.store = store  # the store's path or URL, for error messages
        # files the schema's checksums record: such a shard missing is damage, not an all-empty shard
        self.recorded = frozenset(recorded)
        self._index: dict[int, np.ndarray | None] = {}
        self._fds: dict[int, int] = {}
        self._sizes: dict[int, int] = {}

    @classmethod
    def for_store(cls, root: str, tables_for, blobs=None, recorded=None) -> "ShardReader | None":
        """`tables_for(coder_id)` gives the store's tables for the array's coder. `blobs`: a remote store's
        shard cache (remote.blobs.ShardCache): shards are then read whole from it (RemoteShardReader).
        `recorded`: the files the schema's checksums name (read from the schema, or the cache's, when None)."""
        d = os.path.join(root, "latents") if blobs is None else "latents"
        try:
            # bounded (a link to /dev/zero is a one-line StoreError, not caught below: zarr would read it unbounded)
            meta = json.loads(read_metadata(location_for(root) if blobs is None else blobs.loc, "latents/zarr.json"))
            (shard,) = meta["codecs"]
            cfg = shard["configuration"]
            inner = [c["name"] for c in cfg["codecs"]]
            index = [c["name"] for c in cfg["index_codecs"]]
            enc = meta["chunk_key_encoding"]
            ok = (shard["name"] == "sharding_indexed" and inner[1:] == ["crc32c"]
                  and (inner[0] == CODEC_ID or inner[0] in LANE_CODECS)
                  and index == ["bytes", "crc32c"] and cfg.get("index_location", "end") == "end"
                  and enc["name"] == "default" and cfg["chunk_shape"][0] == 1
                  and cfg["index_codecs"][0].get("configuration", {}).get("endian", "little") == "little")
            if not ok:
                return None
            S = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
            sep = enc.get("configuration", {}).get("separator", "/")
            if recorded is None:  # read only for a layout this reader takes
                recorded = blobs.checksums if blobs is not None else _recorded_files(root)
            if blobs is not None:
                return RemoteShardReader(d, S, tuple(cfg["chunk_shape"]), inner[0], tables_for(inner[0]), sep, root,
                                         blobs, recorded)
            return cls(d, S, tuple(cfg["chunk_shape"]), inner[0], tables_for(inner[0]), sep, root, recorded)
        except (OSError, KeyError, ValueError, TypeError):
            return None

    def shard_path(self, k: int) -> str:
        ndim = len(self.chunk_shape)
        return os.path.join(self.dir, "c" + self.sep + self.sep.join([str(k)] + ["0"] * (ndim - 1)))

    def shard_rel(self, k: int) -> str:
        """Shard k's path in the store, as the schema's checksums name it."""
        ndim = len(self.chunk_shape)
        return "latents/c" + self.sep + self.sep.join([str(k)] + ["0"] * (ndim - 1))

    def _missing(self, k: int) -> None:
        """Shard k has no file: an all-empty shard (zarr writes none), unless the schema records its file."""
        rel = self.shard_rel(k)
        if rel in self.recorded:
            raise CorruptSampleError(f"{self.store}: latents shard {k}: its file {rel} is missing (the schema "
                                     "records it); run latentstore verify")

    def _fd_index(self, k: int, writing: bool = False):
        """`writing`: the writer asks after writing shard k; no file is then what it wrote (every row empty)."""
        if k not in self._index:
            path = self.shard_path(k)
            if not os.path.exists(path):
                if not writing:
                    self._missing(k)
                self._index[k] = None
                return None, None
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not hang the open
            st = os.fstat(fd)  # the open descriptor's: what is checked is what is read
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                raise StoreError(f"{self.store}: latents shard {k}: {path} is {file_kind(st.st_mode)}, "
                                 "not a regular file; run latentstore verify")
            n = self.S * 16 + 4
            size = st.st_size
            raw = os.pread(fd, n, max(0, size - n))
            try:
                self._index[k] = self._checked_index(raw, k)
            except CorruptSampleError:
                os.close(fd)
                raise
            self._fds[k] = fd
            self._sizes[k] = size
        return self._fds.get(k), self._index[k]

    def where(self, slot: int) -> str:
        return f"{self.store}: latents shard {slot // self.S} sample {slot}"

    def _checked_index(self, raw: bytes, k: int) -> np.ndarray:
        """Shard k's index from its stored bytes, its crc32c checked (not cached when it fails: asked again,
        it fails again)."""
        if len(raw) != self.S * 16 + 4 or _crc32c(raw[:-4]) != raw[-4:]:
            raise CorruptSampleError(f"{self.store}: latents shard {k}: the shard index fails its crc32c (damaged; "
                                     "run latentstore verify)")
        return np.frombuffer(raw[:-4], dtype="<u8").reshape(self.S, 2)

    def _stored(self, k: int, fd, off: int, nbytes: int) -> bytes:
        """The stored bytes of one inner chunk (payload + crc32c)."""
        return os.pread(fd, nbytes, off)

    def shard_index(self, k: int) -> np.ndarray | None:
        """(rows, 2) uint64 (offset, nbytes) of shard k's inner chunks, read fresh from the file. Nothing stays
        open: the writer calls this once per shard it commits, and a rank writes thousands of shards."""
        self._forget(k)
        index = self._fd_index(k, writing=True)[1]
        self._forget(k)
        return index

    def _forget(self, k: int) -> None:
        self._index.pop(k, None)
        fd = self._fds.pop(k, None)
        if fd is not None:
            os.close(fd)

    def payload(self, slot: int) -> bytes | None:
        """The image's entropy-coded chunk, its inner crc32c checked and dropped, or None for an all-fill
        (unwritten) chunk."""
        k, j = divmod(slot, self.S)
        try:
            fd, index = self._fd_index(k)
        except CorruptSampleError as e:  # the shard's index: name the sample asked for too
            raise CorruptSampleError(f"{self.where(slot)}: {str(e).split(': ')[-1]}", slot) from None
        if index is None or index[j, 0] == EMPTY:
            return None
        off, nbytes = int(index[j, 0]), int(index[j, 1])
        if off + nbytes > self._sizes[k] or nbytes < INNER_CRC + 1:
            raise CorruptSampleError(f"{self.where(slot)}: index entry {j} points outside the shard file "
                                     "(damaged; run latentstore verify)", slot)
        data = self._stored(k, fd, off, nbytes)
        payload = data[:-INNER_CRC]
        if len(data) != nbytes or _crc32c(payload) != data[-INNER_CRC:]:
            raise CorruptSampleError(f"{self.where(slot)}: latent chunk fails its crc32c (damaged; "
                                     "run latentstore verify)", slot)
        return payload

    def read(self, slot: int) -> np.ndarray:
        """(C, h, w) uint8 symbols of the image at `slot`."""
        return self.read_batch([slot])[0]

    def read_batch(self, slots) -> np.ndarray:
        """(B, C, h, w) uint8 symbols of the images at `slots`, decoded in one call."""
        shape = self.chunk_shape[1:]
        out = np.zeros((len(slots),) + shape, np.uint8)  # an all-fill chunk is not stored: symbol 0 everywhere
        data = [self.payload(int(s)) for s in slots]
        have = [i for i, d in enumerate(data) if d is not None]
        if not have:
            return out
        lane = lane_coder(self.coder)
        if lane is not None:
            try:
                out[have] = lane.decode_batch([data[i] for i in have], self.tables, shape)
                return out
            except ValueError:  # a lane that does not end exactly: decode one by one to name the sample
                pass
        for i in have:
            out[i] = self._decode_one(data[i], int(slots[i]))
        return out

    def _decode_one(self, payload: bytes, slot: int) -> np.ndarray:
        try:
            lane = lane_coder(self.coder)
            if lane is not None:
                return lane.decode(payload, self.tables, self.chunk_shape[1:])
            return _decode_chunk(payload, self.tables, self.chunk_shape, 1)[0]
        except Exception as e:  # both decoders raise ValueError; v1's may raise others on damage
            raise CorruptSampleError(f"{self.where(slot)}: {first_line(e)}",
                                     slot) from None

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


class RemoteShardReader(ShardReader):
    """The same reads from an object store: each shard fetched whole (one GET) into the shard cache, the
    shards a batch needs fetched in parallel, then sliced as the local reader slices its file."""

    def __init__(self, array_dir, shard_rows, chunk_shape, coder, tables, key_sep, store, blobs, recorded=frozenset()):
        super().__init__(array_dir, shard_rows, chunk_shape, coder, tables, key_sep, store, recorded)
        self.blobs = blobs
        self._absent: set[int] = set()  # shards with no object: every row empty (zarr writes no file)
        self._paths: dict[int, str] = {}

    def shard_path(self, k: int) -> str:
        path = self._paths.get(k)
        if path is None:  # asked once per sample on the hot path: built once per shard
            ndim = len(self.chunk_shape)
            path = self._paths[k] = self.dir + "/c" + self.sep + self.sep.join([str(k)] + ["0"] * (ndim - 1))
        return path

    def _shard(self, k: int, writing: bool = False) -> bytes | None:
        if k in self._absent:
            return None
        try:
            return self.blobs.get(self.shard_path(k))
        except FileNotFoundError:
            if not writing:
                self._missing(k)
            self._absent.add(k)
            return None

    def _fd_index(self, k: int, writing: bool = False):
        if k not in self._index:
            data = self._shard(k, writing)
            self._index[k] = None if data is None else self._checked_index(data[-(self.S * 16 + 4):], k)
            if data is not None:
                self._sizes[k] = len(data)
        return None, self._index[k]

    def _stored(self, k: int, fd, off: int, nbytes: int) -> bytes:
        return self._shard(k)[off: off + nbytes]

    def read_batch(self, slots) -> np.ndarray:
        """The batch's shards fetched at once (in parallel) and held while its samples are sliced out. A shard
        that fails its sha256 on the way in is a CorruptSampleError for the batch's first sample in it."""
        shards = {int(s) // self.S for s in slots} - self._absent
        try:
            with self.blobs.pinned([self.shard_path(k) for k in sorted(shards)]):
                return super().read_batch(slots)
        except ShardChecksumError as e:
            slot = next((int(s) for s in slots if self.shard_path(int(s) // self.S) == e.rel), None)
            if slot is None:
                raise
            raise CorruptSampleError(f"{self.where(slot)}: {SHA_FAILED}", slot) from None

    def payload(self, slot: int) -> bytes | None:
        try:
            return super().payload(slot)
        except ShardChecksumError:
            raise CorruptSampleError(f"{self.where(slot)}: {SHA_FAILED}", slot) from None

    def __getstate__(self):
        d = super().__getstate__()
        d["_absent"] = set()
        return d
