"""The Zarr v3 layout of a latent store.

Fixed-size mode (every image resized and centre-cropped to S):
    latents  (N, C, S/8, S/8) uint8   sharded (shard_size, C, h, w), one image per inner chunk,
                                      inner codecs [latentstore.ans, crc32c]
Native-size mode (variable shapes):
    bitstreams (N,) variable-length bytes: each a complete latentstore bitstream (header + ANS)
    shapes     (N, 5) int32: C, h, w, H, W - the index of shapes
Both:
    labels (N,) int32 (-1 where no sample), valid (N,) bool, sizes (N, 2) int32 original H, W,
    sources (N,) string, and masks (N, S, S) uint8 when the store has masks (fixed mode only).
Small arrays are chunked by shard, so each shard's files belong to one writer.
"""
from __future__ import annotations

import json
import os
import warnings

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from .schema import StoreSchema, write_json_atomic
from .zarr_codec import LatentANSCodec


def _small(g, name, shape, dtype, S, fill):
    return g.create_array(name, shape=shape, dtype=dtype, chunks=(S,) + tuple(shape[1:]), fill_value=fill,
                          compressors=[BloscCodec(cname="zstd", clevel=3)] if dtype not in ("str", str) else None)


def create_arrays(root: str, schema: StoreSchema) -> None:
    N, S = schema.num_slots, schema.shard_size
    C = schema.codec["C"]
    g = zarr.open_group(root, mode="w", zarr_format=3)
    if schema.policy["mode"] == "fixed":
        h = schema.policy["size"] // 8
        g.create_array("latents", shape=(N, C, h, h), dtype="uint8", shards=(S, C, h, h), chunks=(1, C, h, h),
                       serializer=LatentANSCodec(freqs=schema.codec["freqs"]), compressors=[Crc32cCodec()],
                       fill_value=0)
        if schema.has_masks:
            s = schema.policy["size"]
            g.create_array("masks", shape=(N, s, s), dtype="uint8", shards=(S, s, s), chunks=(1, s, s),
                           compressors=[BloscCodec(cname="zstd", clevel=5)], fill_value=255)
    else:
        with warnings.catch_warnings():  # zarr-python's vlen-bytes has no v3 spec yet; zarr-python reads it
            warnings.simplefilter("ignore")
            g.create_array("bitstreams", shape=(N,), dtype=zarr.dtype.VariableLengthBytes(), chunks=(S,))
        _small(g, "shapes", (N, 5), "int32", S, 0)
    _small(g, "labels", (N,), "int32", S, -1)
    _small(g, "valid", (N,), "bool", S, False)
    _small(g, "sizes", (N, 2), "int32", S, 0)
    g.create_array("sources", shape=(N,), dtype=str, chunks=(S,))
    write_root_attrs(root, schema)


def write_root_attrs(root: str, schema: StoreSchema) -> None:
    """Write the schema into the root zarr.json atomically (zarr's own attrs update rewrites it too)."""
    path = os.path.join(root, "zarr.json")
    with open(path) as f:
        meta = json.load(f)
    meta.setdefault("attributes", {})["latentstore"] = schema.to_dict()
    write_json_atomic(meta, path)


def _chunk_file(arr, coords) -> str:
    return os.path.join(arr.store.root, arr.path, arr.metadata.encode_chunk_key(coords))


def write_zarr_shard(root: str, schema: StoreSchema, k: int, slots: range, samples) -> list[str]:
    """Write shard k's rows of every array; returns the files written (for checksums)."""
    g = zarr.open_group(root, mode="r+")
    n = len(slots)
    lo = slots.start
    rows = [s.slot - lo for s in samples]
    labels = np.full(n, -1, np.int32)
    valid = np.zeros(n, bool)
    sizes = np.zeros((n, 2), np.int32)
    sources = np.array([""] * n, dtype=object)
    for r, s in zip(rows, samples):
        labels[r], valid[r], sizes[r], sources[r] = s.label, True, s.size, s.source
    arrays = ["labels", "valid", "sizes", "sources"]
    # remove whatever an interrupted attempt left of this shard: the shard is rewritten whole
    for name in arrays + ["latents", "masks", "bitstreams", "shapes"]:
        if name in g:
            a = g[name]
            f = _chunk_file(a, (k,) + (0,) * (a.ndim - 1))
            if os.path.exists(f):
                os.remove(f)
    if schema.policy["mode"] == "fixed":
        lat = g["latents"]
        block = np.zeros((n,) + lat.shape[1:], np.uint8)
        for r, s in zip(rows, samples):
            block[r] = s.symbols
        lat[lo: lo + n] = block
        arrays.append("latents")
        if schema.has_masks:
            m = np.full((n,) + g["masks"].shape[1:], 255, np.uint8)
            for r, s in zip(rows, samples):
                if s.mask is not None:
                    m[r] = s.mask
            g["masks"][lo: lo + n] = m
            arrays.append("masks")
    else:
        bits = np.array([b""] * n, dtype=object)
        shapes = np.zeros((n, 5), np.int32)
        for r, s in zip(rows, samples):
            bits[r] = s.bitstream
            shapes[r] = (*s.symbols.shape, *s.size)
        g["bitstreams"][lo: lo + n] = bits
        g["shapes"][lo: lo + n] = shapes
        arrays += ["bitstreams", "shapes"]
    g["labels"][lo: lo + n] = labels
    g["valid"][lo: lo + n] = valid
    g["sizes"][lo: lo + n] = sizes
    g["sources"][lo: lo + n] = sources
    files = []
    for name in arrays:
        a = g[name]
        f = _chunk_file(a, (k,) + (0,) * (a.ndim - 1))
        if os.path.exists(f):  # an all-fill chunk is not written at all
            files.append(f)
    return files
