"""Bounds on every schema field a reader acts on, so a damaged or edited schema is refused, never obeyed.

Each limit is far above any real dataset and low enough that no loop over it can hang a reader.
"""
from __future__ import annotations

import math
import re

from ..errors import StoreError

MAX_SLOTS = 1 << 34  # 17 billion inputs
MAX_SHARD_SIZE = 1 << 20  # inputs per shard
MAX_SHARDS = 1 << 24
MAX_CHANNELS = 4096
MAX_ALPHABET = 256  # symbols are uint8
MAX_SIDE = 1 << 16
_HEX16 = re.compile(r"^[0-9a-f]{16}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _int(v, lo: int, hi: int, what: str, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise StoreError(f"{where}: schema field {what} = {v!r} is out of bounds (expected an integer in [{lo}, {hi}])")
    return v


def validate_schema(s, where: str) -> None:
    """Raise StoreError naming the first field that a reader must not trust."""
    _int(s.shard_size, 1, MAX_SHARD_SIZE, "shard_size", where)
    _int(s.num_slots, 0, MAX_SLOTS, "num_slots", where)
    if s.num_shards > MAX_SHARDS:
        raise StoreError(f"{where}: schema claims {s.num_shards} shards (more than {MAX_SHARDS})")
    _int(s.num_samples, 0, s.num_slots, "num_samples", where)
    _int(s.num_rejected, 0, s.num_slots, "num_rejected", where)
    if s.num_samples + s.num_rejected > s.num_slots:
        raise StoreError(f"{where}: schema claims {s.num_samples} samples + {s.num_rejected} rejects in "
                         f"{s.num_slots} slots")
    if s.complete and len(s.rejects) != s.num_rejected:
        raise StoreError(f"{where}: schema lists {len(s.rejects)} rejects but counts {s.num_rejected}")
    c = s.codec
    C = _int(c["C"], 1, MAX_CHANNELS, "codec.C", where)
    L = _int(c["L"], 2, MAX_ALPHABET, "codec.L", where)
    if not isinstance(c["weights_hash"], str) or not _HEX16.match(c["weights_hash"]):
        raise StoreError(f"{where}: schema field codec.weights_hash is not 16 hex digits")
    centres = c["centres"]
    if (not isinstance(centres, list) or len(centres) != L
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in centres)):
        raise StoreError(f"{where}: schema field codec.centres must be {L} finite numbers")
    freqs = c["freqs"]
    if not isinstance(freqs, list) or len(freqs) != C or any(not isinstance(r, list) or len(r) != L for r in freqs):
        raise StoreError(f"{where}: schema field codec.freqs must be a {C} x {L} table")
    for ch, row in enumerate(freqs):
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 or v >= 1 << 40 for v in row):
            raise StoreError(f"{where}: schema field codec.freqs row {ch} holds a count that is not a positive integer")
    from .coders import STORE_CODERS, lane_coder
    coder = c.get("coder", "latentstore.ans")
    if coder not in STORE_CODERS:
        raise StoreError(f"{where}: schema field codec.coder = {coder!r} is not a known entropy coder")
    if lane_coder(coder) is not None:
        _check_rans_tables(lane_coder(coder), c.get(lane_coder(coder).tables_field), C, L, where)
    mode = s.policy.get("mode") if isinstance(s.policy, dict) else None
    if mode not in ("fixed", "native"):
        raise StoreError(f"{where}: schema field policy.mode = {mode!r} (expected fixed or native)")
    if mode == "fixed":
        size = _int(s.policy.get("size"), 8, MAX_SIDE, "policy.size", where)
        if size % 8:
            raise StoreError(f"{where}: schema field policy.size = {size} is not a multiple of 8")
    if not isinstance(s.label_names, list) or not all(isinstance(n, str) for n in s.label_names):
        raise StoreError(f"{where}: schema field label_names must be a list of names")
    if not isinstance(s.name, str) or not s.name or "/" in s.name or s.name.startswith("."):
        raise StoreError(f"{where}: schema field name = {s.name!r} is not a plain file-name prefix")
    if not isinstance(s.checksums, dict):
        raise StoreError(f"{where}: schema field checksums is not a mapping")
    for rel, h in s.checksums.items():
        if rel.startswith("/") or ".." in rel.split("/") or not isinstance(h, str) or not _HEX64.match(h):
            raise StoreError(f"{where}: schema checksum entry {rel!r} is malformed")
    if s.complete and s.num_samples and s.schema_version >= 2 and not s.checksums:
        raise StoreError(f"{where}: schema of a complete store records no checksums")


def _check_rans_tables(coder, t, C: int, L: int, where: str) -> None:
    """A lane coder's tables (v2: codec.rans_tables, v3: codec.rans3_tables) must be ones it can code with."""
    import numpy as np

    from .coders import tables_from_json
    try:
        a = tables_from_json(t)
        if a.dtype == object or a.ndim != 3 or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"not a {coder.counts_shape(C, L)} integer table (shape {a.shape})")
        coder.check_tables(a, C, L)
    except (ValueError, TypeError) as e:
        raise StoreError(f"{where}: schema field codec.{coder.tables_field}: {e}") from None
