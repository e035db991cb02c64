"""A converted shard, after its batches are encoded: its Samples, its entropy coding and its commit.

make_samples runs on the main thread at a shard's end; code_and_write on the writer thread, beside the
encoding of the next shard.
"""
from __future__ import annotations

import time

import numpy as np

from ..errors import BadImageError
from ..store.backends import schema_tables, store_coder
from ..store.coders import lane_coder
from ..store.writer import Sample
from .encode import EncodedBatch, Encoder, sample_counts


def code_and_write(writer, k, samples, refs, rejects, counts, stats, enc: Encoder, coder, threads: int):
    """The shard's entropy coding (v2/v3 payloads for every layout; bitstreams for WebDataset and native Zarr),
    then its commit."""
    t0 = time.time()
    schema = writer.schema
    cid = store_coder(schema)
    lane = lane_coder(cid) is not None
    if lane:
        enc.code(samples, refs, threads)
    if schema.kind == "wds" or schema.policy["mode"] == "native":
        if lane:
            for s in samples:
                s.bitstream = enc.bitstream(s)
        else:
            tables = schema_tables(schema, cid)
            futs = [coder.submit(enc.model.pack, s.symbols, s.stored_size, cid, tables) for s in samples]
            for s, f in zip(samples, futs):
                s.bitstream = f.result()
    t1 = time.time()
    writer.write_shard(k, samples, rejects, counts)  # fixed-size Zarr v2/v3: shard files straight from the payloads
    stats["code"] += t1 - t0
    stats["write"] += time.time() - t1


def make_samples(batches: list[EncodedBatch], items, schema, rejects: list, counts: np.ndarray):
    """The shard's Samples, and each one's (batch, row) for its payload; an input whose mask is bad (unreadable,
    not its image's size, a label out of range) becomes a reject with the reason instead, and its symbols leave
    the shard's counts."""
    out, refs = [], []
    for b in batches:
        for i, slot in enumerate(b.slots):
            try:
                out.append(_make_sample((slot, b.host_symbols(i), b.metas[i]), items, schema))
                refs.append((b, i))
            except BadImageError as e:
                rejects.append({"path": items[slot].ref, "reason": f"bad mask ({e})"})
                counts -= sample_counts(b.read_back(i), counts, lane_coder(store_coder(schema)))
    return out, refs


def _make_sample(t, items, schema) -> Sample:
    slot, symbols, meta = t
    it = items[slot]
    size = tuple(int(v) for v in meta["size"])
    mask = None
    if schema.has_masks and it.mask:
        from .masks import load_mask
        mask = load_mask(it.mask, schema.policy["size"], size, it.mask_classes)  # BadImageError: a reject
    return Sample(slot=slot, label=it.label, symbols=symbols, size=size,
                  stored_size=tuple(int(v) for v in meta["stored_size"]), source=it.ref,
                  source_bytes=meta["source_bytes"], mask=mask)
