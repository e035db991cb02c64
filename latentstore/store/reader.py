"""Reading a latent store from the store alone: symbols, labels, masks, and pixels via the embedded codec.

`open_store(path)` returns a LatentStore with random access by sample index (valid samples only,
in slot order) for both formats. WebDataset shards are indexed once (tar member offsets), then
read with positioned reads, so a DataLoader worker can fetch any sample.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from functools import cached_property

import numpy as np

from ..codec.bitstream import Header, decode_symbols, unpack
from ..errors import BitstreamError, StoreError
from .schema import CODEC_FILE, StoreSchema, read_schema
from .writer import sample_key


class LatentStore:
    def __init__(self, path: str, schema: StoreSchema, allow_incomplete: bool = False):
        self.path = path
        self.schema = schema
        if not schema.complete and not allow_incomplete:
            raise StoreError(f"{path}: store is incomplete (conversion interrupted or ranks not merged); "
                             "run `latentstore convert --resume` or `latentstore merge`")
        self.freqs = np.asarray(schema.codec["freqs"], dtype=np.int64)
        self.centres = np.asarray(schema.codec["centres"], dtype=np.float32)
        self._g = None
        self._tar_index = None

    # ------------------------------------------------------------------------------ basics
    @property
    def kind(self) -> str:
        return self.schema.kind

    @property
    def mode(self) -> str:
        return self.schema.policy["mode"]

    @cached_property
    def slots(self) -> np.ndarray:
        """Slot index of every valid sample, ascending: sample i lives at slot slots[i]."""
        if self.kind == "zarr":
            return np.flatnonzero(self.group["valid"][:])
        return np.array(sorted(self.tar_index), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.slots)

    @cached_property
    def labels(self) -> np.ndarray:
        if self.kind == "zarr":
            return self.group["labels"][:][self.slots]
        return np.array([self.tar_index[s]["label"] for s in self.slots], dtype=np.int64)

    @property
    def group(self):
        if self._g is None:
            import zarr
            self._g = zarr.open_group(self.path, mode="r")
        return self._g

    @cached_property
    def shard_reader(self):
        from .zarr_fast import ShardReader
        return ShardReader.for_store(self.path, self.freqs)

    # ------------------------------------------------------------------------ tar indexing
    @property
    def tar_index(self) -> dict:
        """slot -> {"tar", "latent": (offset, size), "mask": (offset, size) | None, "label"}."""
        if self._tar_index is None:
            idx = {}
            for k in range(self.schema.num_shards):
                tar = os.path.join(self.path, f"{self.schema.name}-{k:06d}.tar")
                if not os.path.exists(tar):
                    continue  # a shard whose inputs were all rejected
                with tarfile.open(tar, "r") as tf:
                    for m in tf:
                        key, _, ext = m.name.partition(".")
                        slot = int(key[1:])
                        e = idx.setdefault(slot, {"tar": tar, "mask": None})
                        if ext == "latent":
                            e["latent"] = (m.offset_data, m.size)
                        elif ext == "mask.npy":
                            e["mask"] = (m.offset_data, m.size)
                        elif ext == "cls":
                            e["label"] = int(tf.extractfile(m).read())
            self._tar_index = idx
        return self._tar_index

    @staticmethod
    def _pread(path: str, off: int, size: int) -> bytes:
        fd = os.open(path, os.O_RDONLY)
        try:
            return os.pread(fd, size, off)
        finally:
            os.close(fd)

    # ------------------------------------------------------------------------- per sample
    def bitstream(self, i: int) -> bytes | None:
        slot = int(self.slots[i])
        if self.kind == "wds":
            e = self.tar_index[slot]
            return self._pread(e["tar"], *e["latent"])
        if self.mode == "native":
            return bytes(self.group["bitstreams"][slot: slot + 1][0])
        return None

    def symbols(self, i: int, checked: bool = False) -> np.ndarray:
        """(C, h, w) uint8 symbols of sample i. checked=True reads Zarr through zarr itself (CRCs checked)."""
        slot = int(self.slots[i])
        if self.kind == "zarr" and self.mode == "fixed":
            fast = None if checked else self.shard_reader
            return fast.read(slot) if fast is not None else self.group["latents"][slot]
        header, words = self.parse(self.bitstream(i), f"sample {i}")
        return decode_symbols(words, self.freqs, (header.C, header.h, header.w))

    def parse(self, data: bytes, where: str) -> tuple[Header, np.ndarray]:
        try:
            header, words = unpack(data)
        except BitstreamError as e:
            raise StoreError(f"{self.path}: {where}: {e}") from None
        if header.weights_hash != self.schema.codec["weights_hash"]:
            raise StoreError(f"{self.path}: {where}: made by codec {header.codec_id} ({header.weights_hash}), "
                             f"not the store's {self.schema.codec['id']}")
        return header, words

    def label(self, i: int) -> int:
        return int(self.labels[i])

    def mask(self, i: int) -> np.ndarray | None:
        if not self.schema.has_masks:
            return None
        slot = int(self.slots[i])
        if self.kind == "zarr":
            return self.group["masks"][slot]
        e = self.tar_index[slot]
        return None if e["mask"] is None else np.load(io.BytesIO(self._pread(e["tar"], *e["mask"])), allow_pickle=False)

    def meta(self, i: int) -> dict:
        slot = int(self.slots[i])
        if self.kind == "zarr":
            return {"size": self.group["sizes"][slot].tolist(), "source": str(self.group["sources"][slot]), "slot": slot}
        e = self.tar_index[slot]
        with tarfile.open(e["tar"], "r") as tf:
            return json.loads(tf.extractfile(f"{sample_key(slot)}.json").read())

    def dequantize(self, symbols: np.ndarray) -> np.ndarray:
        return self.centres[symbols]

    # ----------------------------------------------------------------------------- pixels
    @cached_property
    def codec(self):
        """The codec embedded in the store (its weights hash is checked against the schema)."""
        from ..codec.zoo import load_codec_file
        c = load_codec_file(os.path.join(self.path, CODEC_FILE))
        if c.hash != self.schema.codec["weights_hash"]:
            raise StoreError(f"{self.path}: embedded codec's hash {c.hash} differs from the schema's")
        return c

    def decode_rgb(self, i: int) -> np.ndarray:
        """Reconstructed pixels of sample i at the stored resolution (native: the original size)."""
        from ..codec.api import symbols_to_rgb
        sym = self.symbols(i)
        if self.mode == "fixed":
            s = self.schema.policy["size"]
            return symbols_to_rgb(self.codec, sym, (s, s))
        H, W = self.meta(i)["size"]
        return symbols_to_rgb(self.codec, sym, (H, W))


def open_store(path: str, allow_incomplete: bool = False) -> LatentStore:
    return LatentStore(path, read_schema(path), allow_incomplete)


def webdataset_decoder(store_path: str, output: str = "symbols"):
    """A `webdataset` decode handler for `.latent` members, built from the store's own schema:

        ds = webdataset.WebDataset(shards).decode(webdataset_decoder(store_dir))
        sample["latent"]  # (C, h, w) uint8 symbols, or floats with output="float"
    """
    schema = read_schema(store_path)
    freqs = np.asarray(schema.codec["freqs"], dtype=np.int64)
    centres = np.asarray(schema.codec["centres"], dtype=np.float32)

    def handler(key: str, data: bytes):
        if not key.endswith("latent"):
            return None
        header, words = unpack(data)
        if header.weights_hash != schema.codec["weights_hash"]:
            raise StoreError(f"{key}: made by codec {header.codec_id}, not the store's {schema.codec['id']}")
        sym = decode_symbols(words, freqs, (header.C, header.h, header.w))
        return centres[sym] if output == "float" else sym

    return handler
