"""Zarr v3, native size: every image at its own size, each stored as a complete latentstore bitstream.

    bitstreams (N,) variable-length bytes: header + entropy-coded payload per image
    shapes     (N, 5) int32: C, h, w, H, W - the index of shapes
plus the per-slot arrays of zarr_common. zarr-python's vlen-bytes has no v3 spec yet: other Zarr
implementations may not read `bitstreams`.
"""
from __future__ import annotations

import warnings

import numpy as np
import zarr

from ...errors import StoreError, first_line
from .base import CorruptSampleError
from .zarr_common import ZarrBackend, small_array

BITSTREAMS, SHAPES = "bitstreams", "shapes"


class ZarrNativeBackend(ZarrBackend):
    modes = ("native",)
    payload_arrays = (BITSTREAMS,)

    def create_payload_arrays(self, g) -> None:
        N, S = self.schema.num_slots, self.rows_per_shard
        with warnings.catch_warnings():  # zarr-python's vlen-bytes has no v3 spec yet; zarr-python reads it
            warnings.simplefilter("ignore")
            # no compressor: the bitstreams are entropy-coded already; zstd behind the user's back would make
            # `info` report a rate the bitstream does not have
            g.create_array(BITSTREAMS, shape=(N,), dtype=zarr.dtype.VariableLengthBytes(), chunks=(S,),
                           compressors=None)
        small_array(g, SHAPES, (N, 5), "int32", S, 0)

    def extra_arrays(self) -> tuple:
        return (SHAPES,)

    def write_payload(self, g, lo, n, rows, samples) -> None:
        bits = np.array([b""] * n, dtype=object)
        shapes = np.zeros((n, 5), np.int32)
        for r, s in zip(rows, samples):
            bits[r] = s.bitstream
            shapes[r] = (*s.symbols.shape, *s.size)
        g[BITSTREAMS][lo: lo + n] = bits
        g[SHAPES][lo: lo + n] = shapes

    def bitstream(self, slot: int) -> bytes:
        """The sample's bitstream (its own CRC is checked when it is decoded); a chunk zarr cannot parse is a
        CorruptSampleError naming the sample."""
        try:
            return bytes(self.group[BITSTREAMS][slot: slot + 1][0])
        except StoreError:
            raise
        except Exception as e:  # numcodecs' vlen-bytes raises ValueError ("corrupt buffer") and others
            raise CorruptSampleError(f"{self.sample_where(slot)}: unreadable bitstream chunk "
                                     f"({first_line(e, 200)})", slot) from None
