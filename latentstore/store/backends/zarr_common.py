"""What the two Zarr v3 layouts share: the per-slot arrays, the schema in the root attributes, shard files.

Per-slot arrays, chunked by shard so each shard's files belong to one writer:
    labels (N,) int32 (-1 where no sample), valid (N,) bool, sizes (N, 2) int32 original H, W,
    sources (N,) string.
The schema lives in the root group's attributes under "latentstore".
"""
from __future__ import annotations

import json
import os

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from ...atomic import write_json_atomic
from ...errors import StoreError, first_line
from ..remote.location import location_for
from ..schema import StoreSchema, read_metadata
from .base import Backend

LABELS, VALID, SIZES, SOURCES = "labels", "valid", "sizes", "sources"
ATTRS_KEY = "latentstore"


def small_array(g, name, shape, dtype, S, fill):
    """A per-slot array chunked by shard. Numbers: zstd, then a crc32c that zarr checks on every read (a flipped
    bit in a label is an error, not another label); zarr reads arrays written without it as before."""
    return g.create_array(name, shape=shape, dtype=dtype, chunks=(S,) + tuple(shape[1:]), fill_value=fill,
                          compressors=[BloscCodec(cname="zstd", clevel=3), Crc32cCodec()]
                          if dtype not in ("str", str) else None)


def write_root_attrs(root: str, schema: StoreSchema) -> None:
    """Write the schema into the root zarr.json atomically (zarr's own attrs update rewrites it too)."""
    path = os.path.join(root, "zarr.json")
    try:
        meta = json.loads(read_metadata(location_for(root), "zarr.json"))  # bounded: a special file is refused
        meta.setdefault("attributes", {})[ATTRS_KEY] = schema.to_dict()
    except (OSError, ValueError, AttributeError) as e:
        raise StoreError(f"{path}: unreadable root metadata ({str(e).splitlines()[0][:120]}); the store is damaged") from None
    write_json_atomic(meta, path)


def _identity(path: str) -> tuple | None:
    """What tells a replaced file from the one that was there: a rename brings a new inode, an in-place
    rewrite new times. None when there is no file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size


class ZarrBackend(Backend):
    kind = "zarr"
    payload_arrays: tuple = ()  # arrays holding latent payload (counted as latent bytes)

    @property
    def rows_per_shard(self) -> int:
        """Rows per shard file: the commit unit, but never more rows than the store has, so a small
        store's shard index is sized to what is written (a 10-image store does not pay for 256 slots)."""
        return max(1, min(self.schema.shard_size, self.schema.num_slots))

    def __init__(self, root: str, schema: StoreSchema):
        super().__init__(root, schema)
        self._g = None

    @property
    def group(self):
        if not self.loc.local:
            self.loc.store  # noqa: B018  (refuses, in one line, a process forked after obstore was used)
        if self._g is None:  # a remote store through zarr's own ObjectStore over obstore
            if self.loc.local:
                self._refuse_special_files()
            self._g = zarr.open_group(self.root if self.loc.local else self.loc.zarr_store(), mode="r")
        return self._g

    def _refuse_special_files(self) -> None:
        """zarr opens the files it reads by path and reads them whole: a FIFO among an array's chunks or metadata
        would hang it, a link to /dev/zero never end. One walk when the group is opened refuses them in one line
        first (the type comes with the folder listing; only a link costs a stat: ~10 ms for 25,000 files)."""
        from ...data.imageio import file_kind
        todo = [os.path.join(self.root, name) for name in self.array_names()]
        while todo:
            try:
                entries = list(os.scandir(todo.pop()))
            except OSError:  # a missing array: zarr's own error says so
                continue
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    todo.append(e.path)
                    continue
                try:
                    regular = e.is_file()  # links followed
                    mode = 0 if regular else os.stat(e.path).st_mode
                except OSError:  # a dangling link: zarr's own error (a missing chunk) says what it means
                    continue
                if not regular:
                    rel = os.path.relpath(e.path, self.root).replace(os.sep, "/")
                    raise StoreError(f"{self.root}: {rel} is {file_kind(mode)}, not a regular file; "
                                     "run latentstore verify")

    # ---- writing
    def create(self) -> None:
        N, S = self.schema.num_slots, self.rows_per_shard
        g = zarr.open_group(self.root, mode="a", zarr_format=3)  # the writer has emptied it (but for its lock)
        self.create_payload_arrays(g)
        small_array(g, LABELS, (N,), "int32", S, -1)
        small_array(g, VALID, (N,), "bool", S, False)
        small_array(g, SIZES, (N, 2), "int32", S, 0)
        g.create_array(SOURCES, shape=(N,), dtype=str, chunks=(S,))

    def create_payload_arrays(self, g) -> None:
        raise NotImplementedError

    def write_schema(self, schema: StoreSchema) -> None:
        write_root_attrs(self.root, schema)

    def array_names(self) -> tuple:
        return self.payload_arrays + self.extra_arrays() + (LABELS, VALID, SIZES, SOURCES)

    def metadata_files(self) -> list[str]:
        return [f"{a}/zarr.json" for a in self.array_names()]

    def chunk_file(self, arr, k: int) -> str:
        return os.path.join(arr.store.root, arr.path, arr.metadata.encode_chunk_key((k,) + (0,) * (arr.ndim - 1)))

    def write_shard(self, k: int, slots: range, samples: list) -> list[str]:
        g = zarr.open_group(self.root, mode="r+")
        n, lo = len(slots), slots.start
        rows = [s.slot - lo for s in samples]
        names = [a for a in (LABELS, VALID, SIZES, SOURCES) + self.payload_arrays + self.extra_arrays() if a in g]
        # The shard is rewritten whole, but nothing is deleted first: readers of an open shard (the service's,
        # other workers') must see the old files or the new ones, never none (a missing file reads as empty
        # rows). Each file is replaced in one step (zarr's LocalStore and write_bytes_atomic: write + rename);
        # what the new write does not replace (an all-fill chunk is not written) is removed afterwards.
        before = {f: _identity(f) for f in (self.chunk_file(g[name], k) for name in names)}
        self.write_payload(g, lo, n, rows, samples)
        labels, valid = np.full(n, -1, np.int32), np.zeros(n, bool)
        sizes, sources = np.zeros((n, 2), np.int32), np.array([""] * n, dtype=object)
        for r, s in zip(rows, samples):
            labels[r], valid[r], sizes[r], sources[r] = s.label, True, s.size, s.source
        g[LABELS][lo: lo + n] = labels
        g[VALID][lo: lo + n] = valid
        g[SIZES][lo: lo + n] = sizes
        g[SOURCES][lo: lo + n] = sources
        for f, old in before.items():
            if old is not None and _identity(f) == old:  # left over from an earlier write: not this shard's now
                os.remove(f)
        return [f for f in before if os.path.exists(f)]  # an all-fill chunk is not written at all

    def write_payload(self, g, lo: int, n: int, rows: list[int], samples: list) -> None:
        raise NotImplementedError

    def extra_arrays(self) -> tuple:
        return ()

    def is_payload(self, rel: str) -> bool:
        return rel.split(os.sep)[0] in self.payload_arrays

    # ---- reading
    def _read_whole(self, name: str) -> np.ndarray:
        try:
            a = self.group[name]
            if a.shape[0] != self.schema.num_slots:
                raise ValueError(f"{a.shape[0]} rows, the schema says {self.schema.num_slots} slots")
            return a[:]
        except StoreError:  # ours already (an object store's one-line errors)
            raise
        except Exception as e:  # zarr raises many types for missing or damaged metadata and chunks
            raise StoreError(f"{self.root}: array {name}/ is unreadable ({first_line(e, 200)}); run latentstore verify") from None

    def slots(self) -> np.ndarray:
        return np.flatnonzero(self._read_whole(VALID))

    def labels(self, slots: np.ndarray) -> np.ndarray:
        return self._read_whole(LABELS)[slots]

    def check(self) -> list[str]:
        """Every array opens, has one row per slot, and the payload array has the schema's geometry."""
        errs = []
        for name in self.array_names():
            try:
                a = self.group[name]
                if a.shape[0] != self.schema.num_slots:
                    errs.append(f"{name}/: {a.shape[0]} rows, the schema says {self.schema.num_slots} slots")
                else:
                    errs += [f"{name}/: {m}" for m in self.check_array(name, a)]
            except Exception as e:
                errs.append(f"{name}/: array metadata is missing or unreadable ({first_line(e, 200)})")
        return errs

    def check_array(self, name: str, a) -> list[str]:
        return []

    def meta(self, slot: int) -> dict:
        return {"size": self.group[SIZES][slot].tolist(), "source": str(self.group[SOURCES][slot]), "slot": slot}

    def where(self, slot: int) -> str:
        return f"{self.payload_arrays[0]} shard {slot // self.schema.shard_size} sample {slot}"

    def file_where(self, rel: str) -> str:
        parts = rel.split("/")
        return f"{parts[0]} shard {parts[2]}" if len(parts) > 2 and parts[1] == "c" else rel

    def __getstate__(self):  # zarr groups do not cross into DataLoader workers
        d = dict(self.__dict__)
        d["_g"] = None
        return d
