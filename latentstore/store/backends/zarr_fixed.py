"""Zarr v3, fixed size: every image resized and centre-cropped to S, symbols in one sharded array.

    latents (N, C, S/8, S/8) uint8   sharded (shard_size, C, h, w), one image per inner chunk,
                                     inner codecs [latentstore.rans3 (v3), latentstore.rans (v2) or
                                     latentstore.ans (v1), crc32c]; v2/v3 shard files are written
                                     directly from pre-encoded payloads
    masks   (N, S, S) uint8          when the store has masks (255 = no label); zstd + crc32c per mask
plus the per-slot arrays of zarr_common. With latentstore installed, plain `zarr.open` decodes it.
"""
from __future__ import annotations

import os
from functools import cached_property

import numpy as np
from zarr.codecs import BloscCodec, Crc32cCodec

from ...atomic import write_bytes_atomic
from ...errors import StoreError, first_line
from ..coders import lane_coder
from ..zarr_codec import LANE_CODECS, LatentANSCodec
from .base import CorruptSampleError, schema_tables, store_coder
from .zarr_common import ZarrBackend

LATENTS, MASKS, CENTRES = "latents", "masks", "centres"
# per image, besides the entropy-coded payload: the inner crc32c, and v1's u32 word count
INNER_CHUNK_OVERHEAD = {"latentstore.ans": 8, "latentstore.rans": 4, "latentstore.rans3": 4}


class ZarrFixedBackend(ZarrBackend):
    modes = ("fixed",)
    payload_arrays = (LATENTS,)

    def create_payload_arrays(self, g) -> None:
        N, S = self.schema.num_slots, self.rows_per_shard
        C, side = self.schema.codec["C"], self.schema.policy["size"]
        h = side // 8
        coder = store_coder(self.schema)
        serializer = LANE_CODECS[coder](tables=schema_tables(self.schema, coder)) if coder in LANE_CODECS \
            else LatentANSCodec(freqs=self.schema.codec["freqs"])
        g.create_array(LATENTS, shape=(N, C, h, h), dtype="uint8", shards=(S, C, h, h), chunks=(1, C, h, h),
                       serializer=serializer, compressors=[Crc32cCodec()], fill_value=0)
        # symbol j means centres[j]: plain zarr users write `g["centres"][:][g["latents"][i]]`
        cen = g.create_array(CENTRES, shape=(self.schema.codec["L"],), dtype="float32", chunks=(self.schema.codec["L"],))
        cen[:] = np.asarray(self.schema.codec["centres"], dtype=np.float32)
        if self.schema.has_masks:
            g.create_array(MASKS, shape=(N, side, side), dtype="uint8", shards=(S, side, side),
                           chunks=(1, side, side), fill_value=255,  # a crc32c per mask, checked by zarr on reads
                           compressors=[BloscCodec(cname="zstd", clevel=5), Crc32cCodec()])

    def extra_arrays(self) -> tuple:
        return (MASKS,) if self.schema.has_masks else ()

    def metadata_files(self) -> list[str]:
        return super().metadata_files() + [f"{CENTRES}/zarr.json", f"{CENTRES}/c/0"]

    def payload_accounting(self, k: int, samples: list) -> tuple[int, int]:
        index = self.shard_reader.shard_index(k) if self.shard_reader is not None else None
        if index is None:
            return 0, 0
        used = index[:, 0] != np.iinfo(np.uint64).max
        per = INNER_CHUNK_OVERHEAD[store_coder(self.schema)]
        return int(index[used, 1].sum()) - per * int(used.sum()), index.nbytes + 4

    def write_payload(self, g, lo, n, rows, samples) -> None:
        if lane_coder(store_coder(self.schema)) is not None and self.shard_reader is not None:
            # the path as the reader finds it (no zarr metadata read: ~1 ms a lookup, per shard)
            self._write_shard_file(self.shard_reader.shard_path(lo // self.rows_per_shard), rows, samples)
        else:  # v1 (legacy): zarr runs latentstore.ans per chunk
            lat = g[LATENTS]
            block = np.zeros((n,) + lat.shape[1:], np.uint8)
            for r, s in zip(rows, samples):
                block[r] = s.symbols
            lat[lo: lo + n] = block
        if self.schema.has_masks:
            m = np.full((n,) + g[MASKS].shape[1:], 255, np.uint8)
            for r, s in zip(rows, samples):
                if s.mask is not None:
                    m[r] = s.mask
            g[MASKS][lo: lo + n] = m

    def _write_shard_file(self, path: str, rows: list[int], samples: list) -> None:
        """v2, v3: the shard file written directly from the samples' payloads (zarr_shards.shard_file_bytes), the
        bytes zarr itself would write; samples without a payload (callers other than conversion) are coded
        here in one batch. An image whose symbols are all 0, the fill value, is an empty chunk, as zarr's
        write_empty_chunks=False makes it (a sample from the GPU path carries its symbols only then)."""
        from .zarr_shards import shard_file_bytes
        chunks: list = [None] * self.rows_per_shard
        todo = []
        for r, s in zip(rows, samples):
            if s.symbols is not None and not s.symbols.any():
                continue
            if s.payload is None:
                todo.append((r, s.symbols))
            else:
                chunks[r] = s.payload
        if todo:
            coder = store_coder(self.schema)
            tables = schema_tables(self.schema, coder)
            coded = lane_coder(coder).encode_batch(np.stack([sym for _, sym in todo]), tables)
            for (r, _), p in zip(todo, coded):
                chunks[r] = p
        data = shard_file_bytes(chunks)
        if data is not None:  # the caller removes what this write did not replace; an all-empty shard has no file
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_bytes_atomic(path, data)

    def check_array(self, name: str, a) -> list[str]:
        side = self.schema.policy["size"]
        want = {LATENTS: (self.schema.codec["C"], side // 8, side // 8), MASKS: (side, side)}.get(name)
        return [f"shape {a.shape[1:]}, the schema implies {want}"] if want and tuple(a.shape[1:]) != want else []

    # ---- reading
    @cached_property
    def shard_reader(self):
        from .zarr_shards import ShardReader
        return ShardReader.for_store(self.root, lambda coder: schema_tables(self.schema, coder),
                                     None if self.loc.local else self.blobs, recorded=self.schema.checksums)

    def symbols(self, slot: int, checked: bool = False) -> np.ndarray:
        """Both paths check what they read (CRCs, lanes); checked=True reads through zarr itself (verify's path)."""
        fast = None if checked else self.shard_reader
        return fast.read(slot) if fast is not None else self._through_zarr(slot)

    def _through_zarr(self, slot: int) -> np.ndarray:
        """zarr checks the index and chunk crc32c and our codec the lanes; whatever it raises names the sample."""
        try:
            return self.group[LATENTS][slot]
        except StoreError:
            raise
        except Exception as e:  # zarr raises ValueError for a CRC, our codec ValueError for a lane, others for damage
            raise CorruptSampleError(f"{self.sample_where(slot)}: does not decode "
                                     f"({first_line(e, 200)})", slot) from None

    def payload(self, slot: int) -> bytes:
        fast = self.shard_reader
        data = fast.payload(slot) if fast is not None else None
        if data is None:
            raise StoreError(f"{self.where(slot)}: no payload on the fast path (an all-fill chunk or another layout)")
        return data

    def symbols_batch(self, slots) -> np.ndarray:
        """(B, C, h, w): one positioned read per image, one decode call for the batch."""
        fast = self.shard_reader
        if fast is None:
            return np.stack([self._through_zarr(int(s)) for s in slots])
        return fast.read_batch(slots)

    def mask(self, slot: int) -> np.ndarray | None:
        if not self.schema.has_masks:
            return None
        try:
            return self.group[MASKS][slot]
        except StoreError:
            raise
        except Exception as e:  # a mask chunk that fails its crc32c (stores written with one) or does not decompress
            raise CorruptSampleError(f"{self.sample_where(slot)}: unreadable mask "
                                     f"({first_line(e, 200)})", slot) from None

    def __getstate__(self):
        d = super().__getstate__()
        d.pop("shard_reader", None)  # file descriptors stay in the process that opened them
        return d
