"""WebDataset: tar shards NAME-000000.tar of samples, readable by plain `webdataset`.

Members of sample KEY (KEY = s + the 9-digit slot):
    KEY.latent     the complete latentstore bitstream (header + entropy-coded payload)
    KEY.cls        the label as decimal text
    KEY.json       {"size", "stored_size", "source", "label", "slot"} (+ "mask_crc32" with a mask)
    KEY.mask.npy   the class mask (uint8), when the store has masks
The schema is `schema.json` beside the shards. Shards are indexed once (member offsets) and read
with positioned reads, so any DataLoader worker can fetch any sample.
Integrity on every read: a `.latent` carries its own CRC (checked with every lane when it is decoded); the
index refuses a tar that ends early (a damaged header ends Python's tar walk silently), a member of another
shard or a repeated one, a `.cls` that disagrees with its `.json` (label, slot), and a count of samples other
than the schema's; a `.mask.npy` is checked against the crc32 its `.json` records (stores written before it had
one: its tar, whole, once). Remote tars are checked whole against the schema's sha256 when fetched (base.blobs).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import zlib

import numpy as np

from ...atomic import write_bytes_atomic, write_json_atomic
from ...data.imageio import check_regular_file
from ...errors import StoreError, first_line
from ..remote.location import join
from ..schema import StoreSchema, read_schema
from .base import Backend, CorruptSampleError, decode_bitstream

LATENT, CLS, META, MASK = "latent", "cls", "json", "mask.npy"
SCHEMA_FILE = "schema.json"
# the most a reader will read of one member: a crafted tar header cannot make it allocate more
MEMBER_LIMITS = {LATENT: 64 << 20, CLS: 64, META: 1 << 20, MASK: 256 << 20}
TAR_TAIL_MAX = 20480  # after the last member: two zero blocks, padded to tarfile's 10240-byte records
_TAR = re.compile(r"^(?P<name>.+)-(?P<k>\d{6})\.tar$")


def sample_key(slot: int) -> str:
    return f"s{slot:09d}"


def pread(path: str, off: int, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, off)
    finally:
        os.close(fd)


class WebDatasetBackend(Backend):
    kind = "wds"
    modes = ("fixed", "native")

    def __init__(self, root: str, schema: StoreSchema):
        super().__init__(root, schema)
        self._index: dict | None = None
        self._sizes: dict[str, int] = {}
        self._tars_checked: set[str] = set()  # local tars hashed whole (masks of stores without a mask crc32)

    def tar_path(self, k: int) -> str:
        return join(self.root, f"{self.schema.name}-{k:06d}.tar")

    # ---- file access: a local path, or an object read whole through the shard cache (one GET a shard)
    def _size(self, tar: str) -> int:
        if self.loc.local:  # a FIFO or a link to /dev/zero would hang tarfile and pread: refused in one line
            check_regular_file(tar, StoreError)
            return os.path.getsize(tar)
        if tar not in self._sizes:
            size = self.loc.size(os.path.basename(tar))
            if size is None:
                raise StoreError(f"{tar}: shard object is missing; run latentstore verify")
            self._sizes[tar] = size
        return self._sizes[tar]

    def _pread(self, tar: str, off: int, size: int) -> bytes:
        if self.loc.local:
            return pread(tar, off, size)
        return self.blobs.read_range(os.path.basename(tar), off, size, self._sizes.get(tar))

    def _held(self, tar: str):
        import contextlib
        return contextlib.nullcontext() if self.loc.local else self.blobs.pinned([os.path.basename(tar)])

    def _open_tar(self, tar: str):
        if self.loc.local:
            return tarfile.open(tar, "r")
        return tarfile.open(fileobj=io.BytesIO(self.blobs.get(os.path.basename(tar))), mode="r")

    # ---- writing
    def create(self) -> None:
        os.makedirs(self.root, exist_ok=True)

    def write_schema(self, schema: StoreSchema) -> None:
        write_json_atomic(schema.to_dict(), os.path.join(self.root, SCHEMA_FILE))

    def write_shard(self, k: int, slots: range, samples: list) -> list[str]:
        path = self.tar_path(k)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
            for s in samples:
                key = sample_key(s.slot)
                meta = {"size": list(s.size), "stored_size": list(s.stored_size), "source": s.source,
                        "label": s.label, "slot": s.slot}
                mask = None
                if s.mask is not None:
                    m = io.BytesIO()
                    np.save(m, s.mask, allow_pickle=False)
                    mask = m.getvalue()
                    meta["mask_crc32"] = zlib.crc32(mask)  # the mask's own check (a bitstream carries its CRC)
                members = [(LATENT, s.bitstream), (CLS, str(s.label).encode()),
                           (META, json.dumps(meta, sort_keys=True).encode())]
                if mask is not None:
                    members.append((MASK, mask))
                for ext, data in members:
                    ti = tarfile.TarInfo(f"{key}.{ext}")
                    ti.size, ti.mtime, ti.mode = len(data), 0, 0o644  # mtime 0: same inputs, same bytes
                    tf.addfile(ti, io.BytesIO(data))
        write_bytes_atomic(path, buf.getvalue())
        return [path]

    def is_payload(self, rel: str) -> bool:
        return rel.endswith(".tar")

    # ---- reading
    def shard_files(self) -> list[tuple[int, str]]:
        """(k, path) of the shard tars present, found on disk (a schema field never bounds this loop)."""
        out = []
        if self.loc.local:
            names = sorted(os.listdir(self.root))
        elif getattr(self.loc, "http", False):  # no listing over http(s): the tars the schema names
            names = sorted(f for f in self.schema.checksums if f.endswith(".tar") and "/" not in f)
        else:  # one listing gives every tar's size too (no HEAD per shard)
            listed = self.loc.list()
            names = sorted(f for f in listed if "/" not in f)
            self._sizes.update({join(self.root, f): listed[f] for f in names})
        for f in names:
            m = _TAR.match(f)
            if m and m.group("name") == self.schema.name and int(m.group("k")) < self.schema.num_shards:
                out.append((int(m.group("k")), join(self.root, f)))
        if not self.loc.local:
            self.blobs.fetch([os.path.basename(t) for _, t in out])  # in parallel, bounded
        return out

    def members(self, tar: str):
        """(slot, ext, offset, size) of each member, checked against the file's size and MEMBER_LIMITS; then the
        tar's end: Python's tar walk stops at a damaged header without a word, so what follows the last member
        must be the end-of-archive zeros."""
        size = self._size(tar)
        with self._open_tar(tar) as tf:
            for m in tf:
                key, _, ext = m.name.partition(".")
                if ext not in MEMBER_LIMITS or not key[1:].isdigit() or key[0] != "s":
                    raise StoreError(f"{self.root}: {os.path.basename(tar)}: unexpected member {m.name!r}")
                if m.size > MEMBER_LIMITS[ext] or m.offset_data + m.size > size:
                    raise StoreError(f"{os.path.basename(tar)}: member {m.name} claims {m.size:,} bytes "
                                     f"({'past the end of the file' if m.offset_data + m.size > size else 'over the limit'})")
                yield int(key[1:]), ext, m.offset_data, m.size
            end = tf.offset
        rest = size - end
        if rest > TAR_TAIL_MAX or self._pread(tar, end, rest).strip(b"\0"):
            raise StoreError(f"{self.root}: {os.path.basename(tar)}: damaged tar header at byte {end:,} "
                             f"({rest:,} bytes after it not read); run latentstore verify")

    @property
    def index(self) -> dict:
        """slot -> {"tar", LATENT: (offset, size), META: (offset, size), MASK: (offset, size) | None, "label"}."""
        if self._index is None:
            idx: dict = {}
            for k, tar in self.shard_files():
                try:
                    with self._held(tar):  # a remote tar read once for its whole index, whatever the cache's size
                        self._index_tar(k, tar, idx)
                except (tarfile.TarError, OSError) as e:
                    why = first_line(e)
                    raise StoreError(f"{self.root}: {os.path.basename(tar)}: unreadable tar ({why}); "
                                     "run latentstore verify") from None
            if self.schema.complete and len(idx) != self.schema.num_samples:
                raise StoreError(f"{self.root}: the tars hold {len(idx):,} samples, the schema "
                                 f"{self.schema.num_samples:,} (a shard is missing or damaged); run latentstore verify")
            self._index = idx
        return self._index

    def _index_tar(self, k: int, tar: str, idx: dict) -> None:
        """Shard k's members into idx, each sample checked: in its shard, each member once, every member there,
        and its `.cls` (the label the index keeps) agreeing with its `.json` (one read spans both)."""
        first = len(idx)
        for slot, ext, off, size in self.members(tar):
            e = idx.setdefault(slot, {"tar": tar, MASK: None})
            name = "cls" if ext == CLS else ext
            if slot // self.schema.shard_size != k or e["tar"] != tar or e.get(name) is not None:
                raise CorruptSampleError(f"{self.sample_where(slot)}: member {ext} out of place in "
                                         f"{os.path.basename(tar)} (damaged tar header)", slot)
            e[name] = (off, size)
        for slot in list(idx)[first:]:
            e = idx[slot]
            if LATENT not in e or "cls" not in e or META not in e:
                raise CorruptSampleError(f"{self.sample_where(slot)}: incomplete sample (members missing)", slot)
            (c_off, c_size), (m_off, m_size) = e.pop("cls"), e[META]
            span = self._pread(tar, c_off, m_off + m_size - c_off) if c_off < m_off <= c_off + 4096 else None
            raw_cls = span[:c_size] if span is not None else self._pread(tar, c_off, c_size)
            raw_meta = span[m_off - c_off:] if span is not None else self._pread(tar, m_off, m_size)
            e["label"] = _int_label(raw_cls, self.sample_where(slot), slot)
            try:
                meta = json.loads(raw_meta)
                agree = meta.get("label") == e["label"] and meta.get("slot") == slot
            except (ValueError, AttributeError):
                agree = False
            if not agree:
                raise CorruptSampleError(f"{self.sample_where(slot)}: its .cls and .json disagree (damaged)", slot)
            crc = meta.get("mask_crc32")
            e["mask_crc32"] = crc if isinstance(crc, int) and not isinstance(crc, bool) else None

    def slots(self) -> np.ndarray:
        return np.array(sorted(self.index), dtype=np.int64)

    def labels(self, slots: np.ndarray) -> np.ndarray:
        return np.array([self.index[int(s)]["label"] for s in slots], dtype=np.int64)

    def _member(self, slot: int, ext: str) -> bytes:
        e = self.index[slot]
        data = self._pread(e["tar"], *e[ext])
        if len(data) != e[ext][1]:
            raise CorruptSampleError(f"{self.sample_where(slot)}: {ext} member cut short (the tar shrank)", slot)
        return data

    def bitstream(self, slot: int) -> bytes:
        return self._member(slot, LATENT)

    def symbols_batch(self, slots):
        """A remote store's batch: its tars fetched at once (in parallel) and held while it is decoded."""
        if self.loc.local:
            return super().symbols_batch(slots)
        with self.blobs.pinned(sorted({os.path.basename(self.index[int(s)]["tar"]) for s in slots})):
            return super().symbols_batch(slots)

    def mask(self, slot: int) -> np.ndarray | None:
        """The sample's mask, checked: against the crc32 its .json records, or, in a store written before masks
        carried one, the whole tar once against the sha256 its commit record holds."""
        e = self.index[slot]
        if not self.schema.has_masks or e[MASK] is None:
            return None
        raw = self._member(slot, MASK)
        if e.get("mask_crc32") is not None:
            if zlib.crc32(raw) != e["mask_crc32"]:
                raise CorruptSampleError(f"{self.sample_where(slot)}: mask fails its checksum (damaged)", slot)
        else:
            self._check_whole_tar(e["tar"], slot)
        return np.load(io.BytesIO(raw), allow_pickle=False)

    def _check_whole_tar(self, tar: str, slot: int) -> None:
        """A local tar hashed once per reader (a remote one is checked whole when fetched: base.blobs)."""
        if not self.loc.local or tar in self._tars_checked:
            return
        rel = os.path.basename(tar)
        want = (self.schema.checksums or {}).get(rel)
        if want is None:
            raise CorruptSampleError(f"{self.sample_where(slot)}: its mask has no checksum and {rel} none recorded; "
                                     "run latentstore verify", slot)
        with open(tar, "rb") as f:  # a regular file: the index checked it (_size)
            got = hashlib.file_digest(f, "sha256").hexdigest()
        if got != want:
            raise CorruptSampleError(f"{self.sample_where(slot)}: {rel} fails its checksum (damaged); "
                                     "run latentstore verify", slot)
        self._tars_checked.add(tar)

    def meta(self, slot: int) -> dict:
        try:
            meta = json.loads(self._member(slot, META))
        except ValueError:
            meta = None
        if not isinstance(meta, dict) or meta.get("slot") != slot:
            raise CorruptSampleError(f"{self.sample_where(slot)}: unreadable .json member (damaged)", slot)
        return meta

    # ---- verification
    def check(self) -> list[str]:
        errs = []
        for _, tar in self.shard_files():
            try:
                for _ in self.members(tar):
                    pass
            except StoreError as e:
                errs.append(str(e))
            except (tarfile.TarError, OSError) as e:
                errs.append(f"{os.path.basename(tar)}: unreadable tar ({e})")
        return errs

    def where(self, slot: int) -> str:
        return f"{os.path.basename(self.tar_path(slot // self.schema.shard_size))} sample {sample_key(slot)}"

    def file_where(self, rel: str) -> str:
        return os.path.basename(rel)

    def decode_readable(self, errors: list[str]) -> int:
        """When a tar is damaged, name the samples in it that no longer decode; returns how many do."""
        n = 0
        for _, tar in self.shard_files():
            try:
                size = self._size(tar)
                with self._open_tar(tar) as tf:
                    for m in tf:
                        if not m.name.endswith(f".{LATENT}"):
                            continue
                        where = f"{os.path.basename(tar)} sample {m.name.split('.')[0]}"
                        if m.size > MEMBER_LIMITS[LATENT] or m.offset_data + m.size > size:
                            continue  # already reported by check()
                        try:
                            decode_bitstream(self.schema, self._pread(tar, m.offset_data, m.size), where)
                            n += 1
                        except Exception as e:  # any failure to decode is a finding, with the sample named
                            errors.append(f"{where}: does not decode ({str(e).splitlines()[0][:160]})")
            except (tarfile.TarError, OSError, StoreError):
                pass
        return n


def _int_label(raw: bytes, where: str, slot: int) -> int:
    try:
        return int(raw)
    except ValueError:
        raise CorruptSampleError(f"{where}: label {raw[:20]!r} is not an integer", slot) from None


def webdataset_decoder(store_path: str, output: str = "symbols"):
    """A `webdataset` decode handler for `.latent` members, built from the store's own schema:

        ds = webdataset.WebDataset(shards).decode(webdataset_decoder(store_dir))
        sample["latent"]  # (C, h, w) uint8 symbols, or floats with output="float"
    """
    schema = read_schema(store_path)
    centres = np.asarray(schema.codec["centres"], dtype=np.float32)

    def handler(key: str, data: bytes):
        if not key.endswith(LATENT):
            return None
        sym = decode_bitstream(schema, data, key)
        return centres[sym] if output == "float" else sym

    return handler
