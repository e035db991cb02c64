"""Reading a latent store from the store alone: symbols, labels, masks, and pixels via the embedded codec.

`open_store(path)` returns a LatentStore with random access by sample index (valid samples only, in
slot order), whatever the layout: the layout's own knowledge sits in its backend (store/backends/).
Every read checks what it reads (symbols, read_batch, payloads, decode_rgb): a sample whose bytes fail their
checksum, or whose rANS lanes do not end exactly, raises CorruptSampleError (a StoreError, exit 1), one line
naming the store, shard and sample; it is never returned as data.
"""
from __future__ import annotations

import os
from functools import cached_property

import numpy as np

from ..errors import StoreError
from .backends import Backend, backend_for
from .schema import CODEC_FILE, StoreSchema, read_schema


class LatentStore:
    def __init__(self, path: str, schema: StoreSchema, allow_incomplete: bool = False):
        self.path = path
        self.schema = schema
        if not schema.complete and not allow_incomplete:
            raise StoreError(f"{path}: store is incomplete (conversion interrupted or ranks not merged); "
                             "run `latentstore convert --resume` or `latentstore merge`")
        self.centres = np.asarray(schema.codec["centres"], dtype=np.float32)
        self.backend: Backend = backend_for(path, schema)

    @property
    def kind(self) -> str:
        return self.schema.kind

    @property
    def mode(self) -> str:
        return self.schema.policy["mode"]

    @cached_property
    def slots(self) -> np.ndarray:
        """Slot index of every valid sample, ascending: sample i lives at slot slots[i]."""
        return self.backend.slots()

    def __len__(self) -> int:
        return len(self.slots)

    @cached_property
    def labels(self) -> np.ndarray:
        return self.backend.labels(self.slots)

    # ------------------------------------------------------------------------- per sample
    def bitstream(self, i: int) -> bytes | None:
        return self.backend.bitstream(int(self.slots[i]))

    def symbols(self, i: int, checked: bool = False) -> np.ndarray:
        """(C, h, w) uint8 symbols of sample i, checked. checked=True: through zarr itself where the layout has a
        faster reader of its own (verify's second opinion)."""
        return self.backend.symbols(int(self.slots[i]), checked)

    def read_batch(self, indices) -> np.ndarray:
        """(B, C, h, w) uint8 symbols of samples `indices` (fixed-size stores), decoded in one call where the
        layout allows (bitstream v2 or v3: one decoder call over every payload)."""
        slots = self.slots[np.asarray(indices, dtype=np.int64)]
        out = self.backend.symbols_batch(slots)
        return out if isinstance(out, np.ndarray) else np.stack(out)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of every sample in a fixed-size store."""
        if self.mode != "fixed":
            raise StoreError(f"{self.path}: a native-size store has no single latent shape")
        h = self.schema.policy["size"] // 8
        return self.schema.codec["C"], h, h

    def payloads(self, indices) -> list[bytes]:
        """The v2/v3 payloads of samples `indices` (compressed bytes, no container): what the GPU decoder takes."""
        from .backends import store_coder
        from .coders import lane_coder
        if lane_coder(store_coder(self.schema)) is None or self.mode != "fixed":
            raise StoreError(f"{self.path}: GPU decoding needs a fixed-size bitstream v2 or v3 store "
                             "(`latentstore recode` turns a v1 store into one)")
        return [self.backend.payload(int(self.slots[int(i)])) for i in indices]

    def label(self, i: int) -> int:
        return int(self.labels[i])

    def mask(self, i: int) -> np.ndarray | None:
        return self.backend.mask(int(self.slots[i]))

    def meta(self, i: int) -> dict:
        return self.backend.meta(int(self.slots[i]))

    def dequantize(self, symbols: np.ndarray) -> np.ndarray:
        return self.centres[symbols]

    # ----------------------------------------------------------------------------- pixels
    @cached_property
    def codec(self):
        """The codec embedded in the store (its weights hash is checked against the schema)."""
        from ..codec.zoo import load_codec_file
        from .remote import location_for
        from ..data.imageio import check_regular_file
        path = location_for(self.path).local_copy(CODEC_FILE)
        check_regular_file(path, StoreError)  # a FIFO or a link to /dev/zero would hang safetensors' read
        c = load_codec_file(path)
        if c.hash != self.schema.codec["weights_hash"]:
            raise StoreError(f"{self.path}: embedded codec's hash {c.hash} differs from the schema's")
        return c

    def stored_size(self, i: int) -> tuple[int, int]:
        """Pixels the encoder saw for sample i: S x S in fixed mode, the original size in native mode."""
        if self.mode == "fixed":
            s = self.schema.policy["size"]
            return s, s
        H, W = self.meta(i)["size"]
        return int(H), int(W)

    def decode_rgb(self, i: int) -> np.ndarray:
        """Reconstructed pixels of sample i at the stored resolution (native: the original size). The symbols are
        checked as every read checks them; a native sample's size (from the store's metadata) must also be the
        one its bitstream header carries."""
        from ..codec.api import symbols_to_rgb
        sym, size = self.symbols(i), self.stored_size(i)
        if self.mode == "native":
            data = self.bitstream(i)
            if data is not None:
                from ..codec import bitstream as bs
                from .backends import CorruptSampleError
                header = bs.unpack(data)[0]
                if (header.H, header.W) != size:
                    slot = int(self.slots[i])
                    raise CorruptSampleError(f"{self.backend.sample_where(slot)}: stored size {size[0]}x{size[1]} "
                                             f"differs from its bitstream's {header.H}x{header.W} (damaged)", slot)
        return symbols_to_rgb(self.codec, sym, size)

    def __getstate__(self):  # DataLoader workers reopen lazily what they need
        d = dict(self.__dict__)
        d.pop("codec", None)
        return d


def open_store(path: str, allow_incomplete: bool = False) -> LatentStore:
    """The store at `path` (a folder or an object-store URL). A local store whose seal by `latentstore serve` was
    cut short by a kill is refused in one line saying that `serve` repairs it; a seal under way in a live process is
    waited for (it takes milliseconds). Without a marker this costs one failed open."""
    from .append import interrupted_seal
    from .remote.location import is_remote
    if not is_remote(path) and os.path.isdir(path) and (line := interrupted_seal(path, wait_s=5.0)):
        raise StoreError(line)
    return LatentStore(path, read_schema(path), allow_incomplete)
