"""A store's own v2 coding tables: fitted on a seeded sample of its inputs, before the first shard.

Tables frozen on photos cost bits on any other data (Fashion-MNIST at 64 px: 1.04 bpp for ls-c32);
a first pass over up to FIT_SAMPLES inputs, drawn by a seeded permutation, gives tables fitted to the
store's own symbols at the cost of encoding those inputs twice (0.04% of ImageNet). The sample's
size and seed are recorded in the schema; `latentstore recode` refits them from a store's symbols.
"""
from __future__ import annotations

import numpy as np

from ..codec.entropy.rans_v2 import context_counts, tables_from_counts

FIT_SAMPLES = 512  # inputs encoded for the fit
FIT_SEED = 0  # the permutation that picks them


def fit_sample(n_inputs: int, n: int = FIT_SAMPLES, seed: int = FIT_SEED) -> list[int]:
    """Which inputs the fit encodes: the first n of a seeded permutation, in input order."""
    return sorted(np.random.default_rng(seed).permutation(n_inputs)[:n].tolist())


def fit_store_tables(slots: list[int], decode_batch, encode, C: int, L: int, batch_size: int) -> np.ndarray:
    """Tables from the symbols of `slots`: decode_batch(slots) -> (ok, rejects) as conversion's reader gives
    them, encode(ok) -> ([(slot, symbols, meta)], counts). Rejected inputs are simply left out."""
    counts = np.zeros((C, L + 1, L), np.int64)
    for b0 in range(0, len(slots), batch_size):
        ok, _ = decode_batch(slots[b0: b0 + batch_size])
        encoded, _ = encode(ok)
        for _, sym, _ in encoded:
            counts += context_counts(sym, L)
    return tables_from_counts(counts)


def recorded(n_fit: int) -> dict:
    return {"samples": n_fit, "seed": FIT_SEED, "method": "first samples of a seeded permutation of the inputs"}
