"""Zarr v3, fixed size: every image resized and centre-cropped to S, symbols in one sharded array.

    latents (N, C, S/8, S/8) uint8   sharded (shard_size, C, h, w), one image per inner chunk,
                                     inner codecs [latentstore.ans, crc32c]
    masks   (N, S, S) uint8          when the store has masks (255 = no label)
plus the per-slot arrays of zarr_common. With latentstore installed, plain `zarr.open` decodes it.
"""
from __future__ import annotations

from functools import cached_property

import numpy as np
from zarr.codecs import BloscCodec, Crc32cCodec

from ..zarr_codec import LatentANSCodec
from .zarr_common import ZarrBackend

LATENTS, MASKS, CENTRES = "latents", "masks", "centres"
INNER_CHUNK_OVERHEAD = 8  # per image: the ANS chunk's u32 word count + the inner crc32c


class ZarrFixedBackend(ZarrBackend):
    modes = ("fixed",)
    payload_arrays = (LATENTS,)

    def create_payload_arrays(self, g) -> None:
        N, S = self.schema.num_slots, self.rows_per_shard
        C, side = self.schema.codec["C"], self.schema.policy["size"]
        h = side // 8
        g.create_array(LATENTS, shape=(N, C, h, h), dtype="uint8", shards=(S, C, h, h), chunks=(1, C, h, h),
                       serializer=LatentANSCodec(freqs=self.schema.codec["freqs"]), compressors=[Crc32cCodec()],
                       fill_value=0)
        # symbol j means centres[j]: plain zarr users write `g["centres"][:][g["latents"][i]]`
        cen = g.create_array(CENTRES, shape=(self.schema.codec["L"],), dtype="float32", chunks=(self.schema.codec["L"],))
        cen[:] = np.asarray(self.schema.codec["centres"], dtype=np.float32)
        if self.schema.has_masks:
            g.create_array(MASKS, shape=(N, side, side), dtype="uint8", shards=(S, side, side),
                           chunks=(1, side, side), compressors=[BloscCodec(cname="zstd", clevel=5)], fill_value=255)

    def extra_arrays(self) -> tuple:
        return (MASKS,) if self.schema.has_masks else ()

    def metadata_files(self) -> list[str]:
        return super().metadata_files() + [f"{CENTRES}/zarr.json", f"{CENTRES}/c/0"]

    def payload_accounting(self, k: int, samples: list) -> tuple[int, int]:
        index = self.shard_reader.shard_index(k) if self.shard_reader is not None else None
        if index is None:
            return 0, 0
        used = index[:, 0] != np.iinfo(np.uint64).max
        return int(index[used, 1].sum()) - INNER_CHUNK_OVERHEAD * int(used.sum()), index.nbytes + 4
    def write_payload(self, g, lo, n, rows, samples) -> None:
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

    def check_array(self, name: str, a) -> list[str]:
        side = self.schema.policy["size"]
        want = {LATENTS: (self.schema.codec["C"], side // 8, side // 8), MASKS: (side, side)}.get(name)
        return [f"shape {a.shape[1:]}, the schema implies {want}"] if want and tuple(a.shape[1:]) != want else []

    # ---- reading
    @cached_property
    def shard_reader(self):
        from .zarr_shards import ShardReader
        return ShardReader.for_store(self.root, np.asarray(self.schema.codec["freqs"], dtype=np.int64))

    def symbols(self, slot: int, checked: bool = False) -> np.ndarray:
        fast = None if checked else self.shard_reader
        return fast.read(slot) if fast is not None else self.group[LATENTS][slot]

    def mask(self, slot: int) -> np.ndarray | None:
        return self.group[MASKS][slot] if self.schema.has_masks else None

    def __getstate__(self):
        d = super().__getstate__()
        d.pop("shard_reader", None)  # file descriptors stay in the process that opened them
        return d
