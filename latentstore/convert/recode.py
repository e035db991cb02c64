"""`latentstore recode SRC DST`: a store re-entropy-coded from its symbols alone (v1 -> v2, v2 -> v3, v3 -> v2, or a
refit of v2 / v3).

Images are not touched: every sample's symbols, label, size, source and mask are read from SRC and
written to DST with the new coder, at the same slots and shards, so DST decodes to exactly SRC's
symbols. v2 and v3 tables are refitted on a seeded sample of SRC's symbols (as conversion fits them on its
inputs), so DST's latent bytes depend on SRC's symbols alone: v2 -> v3 -> v2 gives the latent bytes of a v2 -> v2
recode (and of the converted v2 store itself, up to FIT_SAMPLES inputs, where both fits take every sample).
Rejects and notes carry over; totals of the sources are SRC's.
"""
from __future__ import annotations

import os
from dataclasses import replace

import numpy as np

from ..errors import UsageError
from ..store import open_store
from ..store.backends import schema_tables
from ..store.coders import BITSTREAMS, TABLE_FIELDS, coder_for_bitstream, lane_coder
from ..store.schema import CODEC_FILE
from ..store.writer import Sample, StoreWriter, finalize_store
from .tables import fit_sample, recorded

CODERS = BITSTREAMS  # --bitstream -> entropy coder


def recode(src: str, dst: str, bitstream: str = "v2", fmt: str | None = None, progress: bool = True) -> dict:
    if bitstream not in CODERS:
        raise UsageError(f"--bitstream must be one of {', '.join(CODERS)} (got {bitstream!r})")
    s = open_store(src)
    sch = s.schema
    coder = coder_for_bitstream(bitstream, sch.codec["L"], f"store {src}'s codec {sch.codec['id']}")
    codec = s.codec  # the store's own codec: it packs the bitstreams of WebDataset / native stores
    codec_entry = {k: v for k, v in sch.codec.items() if k not in TABLE_FIELDS}
    codec_entry["coder"] = coder
    new = replace(sch, kind=fmt or sch.kind, codec=codec_entry, complete=False, num_samples=0, num_rejected=0,
                  rejects=[], totals={}, checksums={}, schema_sha256="")
    lane = lane_coder(coder)
    if lane is not None:
        L = sch.codec["L"]
        pick = fit_sample(len(s))
        ctx = np.zeros(lane.counts_shape(sch.codec["C"], L), np.int64)
        for i in pick:
            ctx += lane.context_counts(s.symbols(i), L)
        codec_entry[lane.tables_field] = lane.tables_json(lane.tables_from_counts(ctx))
        codec_entry[lane.fit_field] = {**recorded(len(pick)), "of": "the source store's samples"}
    writer = StoreWriter.open(dst, new, os.path.join(src, CODEC_FILE), resume=False)
    try:
        if sch.notes:
            writer.record_notes(sch.notes)
        by_shard: dict[int, list[int]] = {}
        for i, slot in enumerate(s.slots):
            by_shard.setdefault(int(slot) // sch.shard_size, []).append(i)
        tables = schema_tables(writer.schema, coder)
        # the source files are not at hand: SRC's source bytes are spread evenly, so DST's total equals SRC's
        share, extra = divmod(int(sch.totals.get("source_bytes", 0)), max(len(s), 1))
        bar = _bar(progress, len(s))
        for k in range(sch.num_shards):
            samples = [_sample(s, i, codec, coder, tables, writer.schema, share + (i < extra)) for i in by_shard.get(k, [])]
            writer.write_shard(k, samples, sch.rejects if k == 0 else [])  # rejects have no slot: shard 0 keeps them
            if bar:
                bar.update(len(samples))
        if bar:
            bar.close()
        schema = finalize_store(dst)
    finally:
        writer.close()
    return {"samples": schema.num_samples, "coder": coder, "src": src, "dst": dst}


def _sample(s, i: int, codec, coder: str, tables, schema, source_bytes: int) -> Sample:
    sym = s.symbols(i)
    meta = s.meta(i)
    size = tuple(int(v) for v in meta["size"])
    stored = s.stored_size(i)
    bitstream = b""
    if schema.kind == "wds" or schema.policy["mode"] == "native":
        bitstream = codec.pack(sym, stored, coder, tables)
    return Sample(slot=int(s.slots[i]), label=s.label(i), symbols=np.ascontiguousarray(sym), size=size,
                  stored_size=stored, source=str(meta.get("source", "")), source_bytes=source_bytes, bitstream=bitstream,
                  mask=s.mask(i))


def _bar(enabled: bool, total: int):
    if not enabled or not total:
        return None
    from tqdm import tqdm
    return tqdm(total=total, unit="sample", desc="recode")
