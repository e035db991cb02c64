"""The entropy coders a store's latents can be coded with, and what conversion, the writers and the readers need
of each. v2 and v3 are both interleaved rANS lane coders with tables fitted to the store's own symbols; they
differ in their context and nothing else a store sees, so every store code path takes a `LaneCoder` from here
instead of naming one of them (a new lane coder is one more row in LANE_CODERS).

    --bitstream  coder              schema fields                         tables
    v1           latentstore.ans    codec.freqs (the codec's own counts)  (C, L) counts, per channel
    v2           latentstore.rans   codec.rans_tables, rans_tables_fit    (C, L+1, L): the symbol above
    v3           latentstore.rans3  codec.rans3_tables, rans3_tables_fit  (C, (L+1)**3, L): above, left,
                                                                          above-right; alphabets L <= 6

In a schema and a zarr codec configuration, v2's tables are nested JSON lists (as since v2); v3's, 49 times as
many numbers, are compact: {"shape": [C, n, L], "dtype": "<u2", "zlib_base64": ...} (tables_to_json), 44 KB
instead of 2 MB of JSON for ls-c32, written three times per Zarr store.

Both lane coders share the payload layout (K, the varint lane index, then each lane's state and words), the
container (bitstream.py: magic b"LS" + version byte) and the GPU encoder's lane assembly; each has its own
numba/SIMD coder (codec/entropy/rans_v2.py, rans_v3.py) and Triton kernels (latentstore_kernels.rans, .rans3).
"""
from __future__ import annotations

import base64
import binascii
import importlib
import zlib
from dataclasses import dataclass

import numpy as np

from ..errors import UsageError

ANS_ID = "latentstore.ans"
RANS_ID = "latentstore.rans"
RANS3_ID = "latentstore.rans3"
BITSTREAMS = {"v1": ANS_ID, "v2": RANS_ID, "v3": RANS3_ID}  # --bitstream -> entropy coder


@dataclass(frozen=True)
class LaneCoder:
    id: str
    version: int  # the bitstream version its payloads travel in
    tables_field: str  # the schema's codec field holding the store's fitted tables
    module_name: str  # the CPU coder (numba / SIMD)
    kernels_name: str  # the Triton kernels (GPU, or TRITON_INTERPRET=1)
    context_neighbours: int  # contexts per channel: (L+1)**context_neighbours
    max_L: int  # the largest alphabet it codes
    compact_tables: bool = False  # tables in JSON as zlib + base64 (tables_to_json), not nested lists

    def tables_json(self, tables: np.ndarray):
        """Fitted tables as a schema or codec configuration holds them."""
        return tables_to_json(tables, self.compact_tables)

    @property
    def fit_field(self) -> str:
        """The schema's record of how the tables were fitted (sample size, seed, method)."""
        return self.tables_field + "_fit"

    @property
    def bitstream(self) -> str:
        return f"v{self.version}"

    @property
    def cpu(self):
        """The coder's module: context_counts, tables_from_counts, check_tables, encode_batch, decode_batch, ..."""
        return importlib.import_module(self.module_name)

    @property
    def gpu(self):
        """The Triton kernels: encode_lanes, decode_packed (imports triton)."""
        return importlib.import_module(self.kernels_name)

    def supports(self, L: int) -> bool:
        return 1 <= L <= self.max_L

    def counts_shape(self, C: int, L: int) -> tuple[int, int, int]:
        return C, (L + 1) ** self.context_neighbours, L

    def context_counts(self, symbols: np.ndarray, L: int) -> np.ndarray:
        """(N, C, h, w) or (C, h, w) symbols -> (C, contexts, L) int64 counts, as the coder sees them."""
        return self.cpu.context_counts(symbols, L)

    def tables_from_counts(self, counts: np.ndarray) -> np.ndarray:
        return self.cpu.tables_from_counts(counts)

    def check_tables(self, tables: np.ndarray, C: int, L: int) -> None:
        self.cpu.check_tables(tables, C, L)

    def lanes(self, C: int, h: int, w: int) -> int:
        """The default lane count K for a (C, h, w) latent (what encode_batch uses)."""
        return self.cpu.lanes_for(None, C, h, w)

    def encode_batch(self, symbols: np.ndarray, tables: np.ndarray, threads: int = 1) -> list[bytes]:
        return self.cpu.encode_batch(symbols, tables, threads=threads)

    def decode_batch(self, payloads: list[bytes], tables: np.ndarray, shape) -> np.ndarray:
        """N payloads of one shape -> (N, C, h, w) uint8; damage raises ValueError."""
        return self.cpu.decode_batch(payloads, tables, shape)

    def decode(self, payload: bytes, tables: np.ndarray, shape) -> np.ndarray:
        return self.cpu.decode(payload, tables, shape)

    # ---- on the device (torch tensors)
    def gpu_tables(self, tables):
        """The (C, n, L) frequency tensor -> what decode_packed takes, prepared once per store."""
        if self.id == RANS_ID:
            return self.gpu.decode_tables(tables)
        return self.gpu.packed_rows(tables)

    def context_counts_t(self, sym, L: int):
        """context_counts on the symbols' device: (B, C, h, w) -> (C, contexts, L) int64, one bincount."""
        import torch
        B, C, h, w = sym.shape
        s = sym.to(torch.int64)
        ctx = torch.full_like(s, L)
        ctx[:, :, 1:] = s[:, :, :-1]  # above (v2's context; v3's first digit)
        if self.id == RANS3_ID:  # rans_v3.contexts: no row above at a lane's first row
            starts = self.cpu.lane_rows(C, h, self.lanes(C, h, w))[:-1]
            cs, ys = (torch.as_tensor(v, device=s.device) for v in np.divmod(starts, h))
            ctx[:, cs, ys, :] = L
            above_right = torch.full_like(s, L)
            above_right[:, :, 1:, :-1] = s[:, :, :-1, 1:]
            above_right[:, cs, ys, :] = L
            left = torch.full_like(s, L)
            left[:, :, :, 1:] = s[:, :, :, :-1]
            ctx = (ctx * (L + 1) + left) * (L + 1) + above_right
        n = (L + 1) ** self.context_neighbours
        idx = (torch.arange(C, device=s.device).view(1, C, 1, 1) * n + ctx) * L + s
        return torch.bincount(idx.flatten(), minlength=C * n * L).view(C, n, L)


LANE_CODERS = {c.id: c for c in (
    LaneCoder(RANS_ID, 2, "rans_tables", "latentstore.codec.entropy.rans_v2", "latentstore_kernels.rans", 1, 16),
    LaneCoder(RANS3_ID, 3, "rans3_tables", "latentstore.codec.entropy.rans_v3", "latentstore_kernels.rans3", 3, 6,
              compact_tables=True),
)}
STORE_CODERS = (ANS_ID,) + tuple(LANE_CODERS)  # what a store's schema may name
TABLE_FIELDS = tuple(f for c in LANE_CODERS.values() for f in (c.tables_field, c.fit_field))


def lane_coder(coder_id: str | None) -> LaneCoder | None:
    """The lane coder `coder_id` names, or None (v1's latentstore.ans, or an unknown id)."""
    return LANE_CODERS.get(coder_id)


def coder_for_bitstream(bitstream: str, L: int, codec_name: str = "the codec") -> str:
    """--bitstream v1|v2|v3 -> the coder id, refusing (one line, a UsageError) what the codec's alphabet rules out."""
    coder = BITSTREAMS.get(bitstream)
    if coder is None:
        raise UsageError(f"--bitstream must be one of {', '.join(BITSTREAMS)} (got {bitstream!r})")
    lc = lane_coder(coder)
    if lc is not None and not lc.supports(L):
        raise UsageError(f"--bitstream {bitstream} ({coder}) codes alphabets of at most {lc.max_L} symbols; "
                         f"{codec_name} has L = {L}: use --bitstream v2")
    return coder


MAX_TABLE_ENTRIES = 1 << 26  # a compact table never decompresses past this (C <= 65535 at (L+1)**3 x L <= 2058)


def tables_to_json(tables: np.ndarray, compact: bool):
    """(C, n, L) tables -> nested lists, or (compact) {"shape", "dtype": "<u2", "zlib_base64"}: the uint16 values
    little-endian in C order, zlib level 9, base64."""
    t = np.ascontiguousarray(tables, dtype="<u2")
    if not compact:
        return t.tolist()
    return {"shape": [int(v) for v in t.shape], "dtype": "<u2",
            "zlib_base64": base64.b64encode(zlib.compress(t.tobytes(), 9)).decode("ascii")}


def tables_from_json(value) -> np.ndarray:
    """What tables_to_json wrote (either form) -> an array; a malformed compact table is a ValueError naming what
    is wrong (its decompressed size is bounded by its shape, so a damaged one cannot balloon)."""
    if not isinstance(value, dict):
        return np.asarray(value)
    shape, data = value.get("shape"), value.get("zlib_base64")
    if value.get("dtype") != "<u2" or not isinstance(data, str) or not isinstance(shape, list) or len(shape) != 3 \
            or not all(isinstance(v, int) and 1 <= v <= MAX_TABLE_ENTRIES for v in shape):
        raise ValueError("compact table needs shape [C, n, L], dtype '<u2' and zlib_base64")
    n = int(np.prod(shape, dtype=np.int64))
    if n > MAX_TABLE_ENTRIES:
        raise ValueError(f"compact table of shape {shape} is too large")
    try:
        d = zlib.decompressobj()
        raw = d.decompress(base64.b64decode(data, validate=True), 2 * n + 1)
    except (binascii.Error, zlib.error) as e:
        raise ValueError(f"compact table does not decode ({e})") from None
    if len(raw) > 2 * n:
        raise ValueError(f"compact table of shape {shape} decompresses to more than {2 * n} bytes")
    if not d.eof:
        raise ValueError("compact table is truncated (its zlib stream does not end)")
    if len(raw) != 2 * n:
        raise ValueError(f"compact table of shape {shape} decompresses to {len(raw)} bytes, not {2 * n}")
    return np.frombuffer(raw, dtype="<u2").reshape(shape)
