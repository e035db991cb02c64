"""`decode_on="gpu"`: DataLoader workers only read compressed bytes; the GPU decodes, crops, flips, dequantizes.

A worker's batch (LatentMapDataset(output="payload") + collate) is one uint8 tensor of v2 or v3 payloads
back to back, their (B+1,) offsets, and each sample's augmentation (y, x, crop h, crop w, flip) drawn
from the same seeded generator as the CPU path, so both paths give the same samples. The Triton
decoder of the store's coder (latentstore_kernels.rans or .rans3, one lane per program element) writes
(B, C, h, w) uint8 symbols on the device; crop and flip are one gather; the centres lookup makes the floats the
model reads.
Checks: the workers check each payload's CRC as they read it (store/backends); the decoder here checks every
lane's final state, and a lane that does not end exactly is a CorruptSampleError naming the store, shard, sample.
"""
from __future__ import annotations

import numpy as np
import torch

from ..store.backends import CorruptSampleError


class DeviceDecoder:
    """Turns a payload batch into {'latent': (B, C, ch, cw) floats or uint8 symbols, 'label'} on `device`."""

    def __init__(self, store, device: str | torch.device, output: str = "float", max_lanes: int | None = None):
        from ..store.backends import schema_tables, store_coder
        from ..store.coders import lane_coder
        coder = store_coder(store.schema)
        self.coder = lane_coder(coder)
        if self.coder is None or store.mode != "fixed":
            store.payloads([])  # the one-line StoreError of a store without a GPU path
        self.device, self.output, self.shape = torch.device(device), output, store.latent_shape
        tables = torch.from_numpy(schema_tables(store.schema, coder).astype(np.int32)).to(self.device)
        self.tables = self.coder.gpu_tables(tables)  # prepared once: every batch reuses them
        self.centres = torch.as_tensor(store.centres, device=self.device)
        self.max_lanes = max_lanes  # None: read each batch's largest lane count (one tiny device-to-host copy)
        self.store = store  # names a corrupt sample's store, shard and slot

    def __call__(self, batch: dict) -> dict:
        from ..codec.entropy.rans_v2 import ERRORS  # v3's decoders give v2's error codes
        data = batch["payload"].to(self.device, non_blocking=True)
        offsets = batch["offsets"].to(self.device, non_blocking=True)
        sym, err = self.coder.gpu.decode_packed(data, offsets, self.tables, self.shape, self.max_lanes)
        bad = torch.nonzero(err[:, 0]).flatten()
        if bad.numel():  # one sync per batch, only to name the culprit
            i = int(bad[0])
            code, lane = (int(v) for v in err[i])
            slot = int(self.store.slots[int(batch["index"][i])])
            raise CorruptSampleError(f"{self.store.backend.sample_where(slot)}: rANS payload is corrupt: "
                                     f"{ERRORS[code]} (lane {lane})", slot)
        sym = crop_flip(sym, batch["augment"].to(self.device))
        latent = self.centres[sym.long()] if self.output == "float" else sym
        return {"latent": latent, "label": batch["label"].to(self.device, non_blocking=True), "index": batch["index"]}


def crop_flip(sym: torch.Tensor, aug: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) and per-sample (y, x, ch, cw, flip) -> (B, C, ch, cw); every crop has one size in a batch."""
    B, C = sym.shape[:2]
    ch, cw = int(aug[0, 2]), int(aug[0, 3])
    rows = aug[:, 0:1] + torch.arange(ch, device=sym.device)  # (B, ch)
    cols = torch.arange(cw, device=sym.device).expand(B, cw)
    cols = torch.where(aug[:, 4:5].bool(), cw - 1 - cols, cols) + aug[:, 1:2]  # flipped: read right to left
    b = torch.arange(B, device=sym.device)[:, None, None, None]
    c = torch.arange(C, device=sym.device)[None, :, None, None]
    return sym[b, c, rows[:, None, :, None], cols[:, None, None, :]]
