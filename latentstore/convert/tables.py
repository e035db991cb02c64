"""A store's own v2 or v3 coding tables: fitted on a seeded sample of its inputs, before the first shard.

Tables frozen on photos cost bits on any other data (Fashion-MNIST at 64 px: 1.04 bpp for ls-c32);
a first pass over up to FIT_SAMPLES inputs gives tables fitted to the store's own symbols. Conversion
draws them as whole batches of its own (fit_batches: a seeded permutation of the batches), so the
main run reuses the fit's symbols instead of encoding those inputs twice (on the CPU that second
encoding was 13% of a 4,000-input conversion). The sample's size, seed and method are recorded in the
schema; `latentstore recode` refits them from a store's symbols (fit_sample: single inputs). v2 and v3 fit
the same way on the same sample, each counting its own contexts (store/coders.py).
"""
from __future__ import annotations

import numpy as np

from ..store.coders import RANS_ID, LaneCoder, lane_coder

FIT_SAMPLES = 512  # inputs encoded for the fit
FIT_SEED = 0  # the permutation that picks them


def fit_sample(n_inputs: int, n: int = FIT_SAMPLES, seed: int = FIT_SEED) -> list[int]:
    """Which inputs the fit encodes: the first n of a seeded permutation, in input order."""
    return sorted(np.random.default_rng(seed).permutation(n_inputs)[:n].tolist())


def fit_batches(n_inputs: int, batch: int, shard_size: int, n: int = FIT_SAMPLES, seed: int = FIT_SEED) -> list[list[int]]:
    """The fit's inputs as conversion batches ([shard start + j * batch, ...), never across a shard, as the main
    run cuts them): every batch when there are at most n inputs, else the first ceil(n / batch) of a seeded
    permutation of the batches, in input order."""
    batches = [list(range(b0, min(b0 + batch, k0 + shard_size, n_inputs)))
               for k0 in range(0, n_inputs, shard_size) for b0 in range(k0, min(k0 + shard_size, n_inputs), batch)]
    if n_inputs <= n:
        return batches
    pick = np.random.default_rng(seed).permutation(len(batches))[: -(-n // batch)]
    return [batches[i] for i in sorted(pick.tolist())]


def fit_store_tables(batches: list[list[int]], decode_batch, encode, C: int, L: int,
                     coder: LaneCoder | None = None) -> np.ndarray:
    """`coder`'s tables (default v2's) from the symbols of `batches` (lists of slots): decode_batch(slots) ->
    (ok, rejects) as conversion's reader gives them, encode(ok) -> ([(slot, symbols, meta)], counts). Rejected
    inputs are simply left out."""
    coder = coder or lane_coder(RANS_ID)
    counts = np.zeros(coder.counts_shape(C, L), np.int64)
    for b in batches:
        ok, _ = decode_batch(b)
        encoded, _ = encode(ok)
        for _, sym, _ in encoded:
            counts += coder.context_counts(sym, L)
    return coder.tables_from_counts(counts)


def recorded(n_fit: int, method: str = "first samples of a seeded permutation of the inputs") -> dict:
    return {"samples": n_fit, "seed": FIT_SEED, "method": method}


BATCH_METHOD = "every input, or the first whole conversion batches of a seeded permutation of its batches"
