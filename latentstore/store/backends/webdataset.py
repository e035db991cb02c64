"""WebDataset: tar shards NAME-000000.tar of samples, readable by plain `webdataset`.

Members of sample KEY (KEY = s + the 9-digit slot):
    KEY.latent     the complete latentstore bitstream (header + entropy-coded payload)
    KEY.cls        the label as decimal text
    KEY.json       {"size", "stored_size", "source", "label", "slot"}
    KEY.mask.npy   the class mask (uint8), when the store has masks
The schema is `schema.json` beside the shards. Shards are indexed once (member offsets) and read
with positioned reads, so any DataLoader worker can fetch any sample.
"""
from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np

from ...atomic import write_bytes_atomic, write_json_atomic
from ..schema import StoreSchema, read_schema
from .base import Backend, decode_bitstream

LATENT, CLS, META, MASK = "latent", "cls", "json", "mask.npy"
SCHEMA_FILE = "schema.json"


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

    def tar_path(self, k: int) -> str:
        return os.path.join(self.root, f"{self.schema.name}-{k:06d}.tar")

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
                members = [(LATENT, s.bitstream), (CLS, str(s.label).encode()),
                           (META, json.dumps(meta, sort_keys=True).encode())]
                if s.mask is not None:
                    m = io.BytesIO()
                    np.save(m, s.mask, allow_pickle=False)
                    members.append((MASK, m.getvalue()))
                for ext, data in members:
                    ti = tarfile.TarInfo(f"{key}.{ext}")
                    ti.size, ti.mtime, ti.mode = len(data), 0, 0o644  # mtime 0: same inputs, same bytes
                    tf.addfile(ti, io.BytesIO(data))
        write_bytes_atomic(path, buf.getvalue())
        return [path]

    def is_payload(self, rel: str) -> bool:
        return rel.endswith(".tar")

    # ---- reading
    @property
    def index(self) -> dict:
        """slot -> {"tar", LATENT: (offset, size), MASK: (offset, size) | None, "label"}."""
        if self._index is None:
            idx: dict = {}
            for k in range(self.schema.num_shards):
                tar = self.tar_path(k)
                if not os.path.exists(tar):
                    continue  # a shard whose inputs were all rejected
                with tarfile.open(tar, "r") as tf:
                    for m in tf:
                        key, _, ext = m.name.partition(".")
                        e = idx.setdefault(int(key[1:]), {"tar": tar, MASK: None})
                        if ext in (LATENT, MASK, META):
                            e[ext] = (m.offset_data, m.size)
                        elif ext == CLS:
                            e["label"] = int(tf.extractfile(m).read())
            self._index = idx
        return self._index

    def slots(self) -> np.ndarray:
        return np.array(sorted(self.index), dtype=np.int64)

    def labels(self, slots: np.ndarray) -> np.ndarray:
        return np.array([self.index[int(s)]["label"] for s in slots], dtype=np.int64)

    def _member(self, slot: int, ext: str) -> bytes:
        e = self.index[slot]
        return pread(e["tar"], *e[ext])

    def bitstream(self, slot: int) -> bytes:
        return self._member(slot, LATENT)

    def mask(self, slot: int) -> np.ndarray | None:
        if not self.schema.has_masks or self.index[slot][MASK] is None:
            return None
        return np.load(io.BytesIO(self._member(slot, MASK)), allow_pickle=False)

    def meta(self, slot: int) -> dict:
        return json.loads(self._member(slot, META))

    # ---- verification
    def check(self) -> list[str]:
        errs = []
        for k in range(self.schema.num_shards):
            tar = self.tar_path(k)
            if not os.path.exists(tar):
                continue  # all-rejected shard, or reported missing by the checksum pass
            try:
                size = os.path.getsize(tar)
                with tarfile.open(tar, "r") as tf:
                    for m in tf:
                        if m.offset_data + m.size > size:
                            raise tarfile.ReadError(f"member {m.name} runs past the end of the file")
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
        for k in range(self.schema.num_shards):
            tar = self.tar_path(k)
            if not os.path.exists(tar):
                continue
            try:
                with tarfile.open(tar, "r") as tf:
                    for m in tf:
                        if not m.name.endswith(f".{LATENT}"):
                            continue
                        where = f"{os.path.basename(tar)} sample {m.name.split('.')[0]}"
                        try:
                            decode_bitstream(self.schema, tf.extractfile(m).read(), where)
                            n += 1
                        except Exception as e:  # any failure to decode is a finding, with the sample named
                            errors.append(f"{where}: does not decode ({str(e).splitlines()[0][:160]})")
            except (tarfile.TarError, OSError):
                pass
        return n


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
