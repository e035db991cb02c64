"""rANS v2 (latentstore.rans): the numba coder, the pure-Python reference and the Triton kernels agree
bit for bit; tables are valid and optimal; damaged payloads raise ValueError, never hang or crash.

Triton runs on CUDA when there is one, else under the interpreter (TRITON_INTERPRET=1, tiny shapes)."""
import itertools
import os
import sys

import numpy as np
import pytest
import torch

from latentstore.codec.entropy import rans_reference as rref
from latentstore.codec.entropy import rans_v2 as r

L = 6
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


# Triton on the CPU is its interpreter (the suite runs as TRITON_INTERPRET=1 pytest). Set here when absent,
# unless another module already imported triton in compiled mode: it cannot switch modes any more.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
if DEVICE == "cpu" and not INTERPRETED and "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = INTERPRETED = "1"
needs_triton = pytest.mark.skipif(DEVICE == "cpu" and not INTERPRETED,
                                  reason="Triton on the CPU needs TRITON_INTERPRET=1 (triton was imported without it)")


def _import_triton_rans():
    from latentstore_kernels import rans as kr
    return kr


def smooth_symbols(shape, seed=0, n=None):
    """Latent-like symbols: spatially correlated (blurred noise), channels of different spread."""
    rng = np.random.default_rng(seed)
    full = ((n,) if n else ()) + tuple(shape)
    z = rng.normal(size=full)
    for ax in (-1, -2):
        z = z + np.roll(z, 1, axis=ax) + np.roll(z, -1, axis=ax)
    z *= rng.uniform(0.2, 1.0, size=(shape[0], 1, 1))
    return np.clip(np.round(z + L / 2 - 0.5), 0, L - 1).astype(np.uint8)


@pytest.fixture(scope="module")
def tables16():
    return r.fit_tables(smooth_symbols((16, 12, 12), seed=1, n=8), L)


def tables_for(C, seed=0):
    return r.fit_tables(smooth_symbols((C, 8, 8), seed=seed, n=4), L)


# ----------------------------------------------------------------------------------- tables
def test_fit_tables_rows_sum_to_4096_with_every_symbol_codable():
    sym = smooth_symbols((8, 10, 10), n=3)
    sym[:, 2] = np.minimum(sym[:, 2], 2)  # channel 2 never uses symbols 3..5: still codable
    t = r.fit_tables(sym, L)
    assert t.shape == (8, L + 1, L) and t.dtype == np.uint16
    assert (t.astype(np.int64).sum(-1) == 4096).all() and t.min() >= 1
    r.check_tables(t, 8, L)
    assert t[2, :, 3:].max() < 8, "unseen symbols get (almost) nothing"
    assert np.array_equal(t, r.fit_tables(sym.copy(), L)), "fitting is deterministic"


@pytest.mark.parametrize("shape", [(3, 16, 32, 32), (1, 5, 1, 7), (2, 3, 17, 9), (16, 1, 1)])
@pytest.mark.parametrize("L_", [2, 6, 11])
def test_context_counts_kernel_matches_its_reference(shape, L_):
    """The numba counting kernel against the numpy definition, on odd shapes, int64 and non-contiguous input."""
    rng = np.random.default_rng(sum(shape) + L_)
    sym = rng.integers(0, L_, size=shape)
    want = r.context_counts_reference(sym, L_)
    assert np.array_equal(r.context_counts(sym, L_), want)
    assert np.array_equal(r.context_counts(sym.astype(np.uint8), L_), want)
    flipped = sym[..., ::-1]  # a view with a negative stride
    assert np.array_equal(r.context_counts(flipped, L_), r.context_counts_reference(np.ascontiguousarray(flipped), L_))
    assert r.context_counts(sym, L_).sum() == sym.size


def test_context_counts_refuses_symbols_outside_the_alphabet():
    with pytest.raises(ValueError, match="out of range"):
        r.context_counts(np.full((2, 3, 4), 6, np.uint8), 6)
    with pytest.raises(ValueError, match="out of range"):
        r.context_counts(np.full((2, 3, 4), -1, np.int64), 6)


def test_fit_tables_uses_the_context():
    """Symbols that repeat the one above: the 'same as above' entry dominates each row."""
    sym = np.repeat(np.random.default_rng(0).integers(0, L, size=(50, 4, 1, 16)), 6, axis=2).astype(np.uint8)
    t = r.fit_tables(sym, L)
    for ctx in range(L):
        assert t[:, ctx, ctx].min() > 4000


def test_quantize_row_is_optimal():
    """Brute force over every composition of a small total: nothing beats the fitted row."""
    rng = np.random.default_rng(0)
    for _ in range(30):
        w = rng.integers(0, 50, size=3).astype(float) * rng.integers(0, 2, size=3)
        got = r.quantize_row(w, total=20)
        assert got.sum() == 20 and got.min() >= 1
        best = max(sum(wi * np.log(fi) for wi, fi in zip(w, f))
                   for f in itertools.product(range(1, 19), repeat=3) if sum(f) == 20)
        assert sum(wi * np.log(fi) for wi, fi in zip(w, got)) >= best - 1e-9


@pytest.mark.parametrize("change, message", [
    (lambda t: t.__setitem__((3, 2, 0), t[3, 2, 0] - 1), "channel 3 context 2 sums to 4095, not 4096"),
    (lambda t: t.__setitem__((1, 6, 4), 0), "channel 1 context 6 gives symbol 4 frequency 0"),
])
def test_check_tables_names_the_bad_row(change, message):
    t = tables_for(4).astype(np.int64)
    change(t)
    with pytest.raises(ValueError, match=message):
        r.check_tables(t, 4, L)
    with pytest.raises(ValueError, match=message):
        r.decode(r.encode(smooth_symbols((4, 3, 3)), tables_for(4)), t, (4, 3, 3))


def test_check_tables_shape_and_dtype():
    t = tables_for(4)
    with pytest.raises(ValueError, match="shape"):
        r.check_tables(t[:, :L], 4, L)
    with pytest.raises(ValueError, match="dtype"):
        r.check_tables(t.astype(np.float64), 4, L)
    with pytest.raises(ValueError, match="shape"):
        r.encode(smooth_symbols((3, 4, 4)), t)


def test_ideal_bits_is_the_context_cross_entropy():
    sym = smooth_symbols((2, 3, 4))
    t = tables_for(2)
    want = sum(-np.log2(t[c, sym[c, y - 1, x] if y else L, sym[c, y, x]] / 4096)
               for c in range(2) for y in range(3) for x in range(4))
    assert r.ideal_bits(sym, t) == pytest.approx(want, rel=1e-12)


# ----------------------------------------------------------------------------- round trips
CASES = [  # shape, lanes: odd shapes, C not divisible by K, one lane per column, more lanes than channels
    ((1, 1, 1), 1), ((3, 5, 7), 1), ((3, 5, 7), 2), ((3, 5, 7), 21), ((8, 9, 13), 7), ((8, 9, 13), 104),
    ((5, 2, 3), 4), ((16, 12, 12), None), ((32, 4, 4), 16), ((2, 1, 9), 5),
]


def _contents(shape, seed):
    yield smooth_symbols(shape, seed)
    yield np.zeros(shape, np.uint8)
    yield np.full(shape, L - 1, np.uint8)  # one symbol everywhere
    yield np.random.default_rng(seed).integers(0, L, size=shape).astype(np.uint8)  # no structure at all


@pytest.mark.parametrize("shape, lanes", CASES)
def test_numba_matches_reference_bit_for_bit(shape, lanes):
    t = tables_for(shape[0], seed=len(shape) + shape[0])
    for i, sym in enumerate(_contents(shape, seed=sum(shape))):
        ref = rref.encode_reference(sym, t, lanes)
        fast = r.encode(sym, t, lanes)
        assert fast == ref, f"content {i}: numba and reference payloads differ"
        assert np.array_equal(r.decode(fast, t, shape), sym)
        assert np.array_equal(rref.decode_reference(fast, t, shape), sym)
        assert ref[0] == (lanes or r.default_lanes(*shape))


def test_batch_matches_single_and_threads(tables16, monkeypatch):
    sym = smooth_symbols((16, 12, 12), seed=5, n=9)
    payloads = r.encode_batch(sym, tables16)
    assert payloads == [r.encode(s, tables16) for s in sym]
    assert payloads == r.encode_batch(sym.copy(), tables16), "deterministic"
    monkeypatch.setattr(r, "ENCODE_CHUNK", 2)
    assert payloads == r.encode_batch(sym, tables16, threads=3) == r.encode_batch(sym, tables16)
    assert np.array_equal(r.decode_batch(payloads, tables16, sym.shape[1:]), sym)
    assert np.array_equal(r.decode_batch(payloads, tables16, sym.shape[1:], threads=3), sym)
    assert r.encode_batch(sym[:0], tables16) == []
    assert r.decode_batch([], tables16, sym.shape[1:]).shape == (0,) + sym.shape[1:]


def _decode_flagged(payloads, t, shape):
    """The numba decoder without raising: (symbols, err (N, 2))."""
    from latentstore.codec.entropy import rans_kernels_cpu as kc
    data, offsets = r.pack_payloads(payloads)
    N, n = len(payloads), int(np.prod(shape))
    flat = np.empty(N * n + shape[1] * shape[2], np.uint8)
    err = np.zeros((N, 2), np.int64)
    kc.decode_range(data, offsets, *r._prepared(t, shape[0])[0][1], L, *shape, flat, err, 0, N)
    return flat[:N * n].reshape((N,) + shape), err


def test_images_decoded_together_stay_apart():
    """Images with K < 8 share the eight-lane kernel; mixed K and a damaged image split the bundles."""
    shape = (3, 4, 5)
    t = tables_for(3, seed=9)
    sym = smooth_symbols(shape, seed=12, n=12)
    lanes = [1, 1, 2, 2, 2, 2, 2, 3, 1, 1, 1, 4]
    payloads = [r.encode(s, t, k) for s, k in zip(sym, lanes)]
    payloads[4] = payloads[4][:-1]
    out, err = _decode_flagged(payloads, t, shape)
    assert err[4, 0] == 5 and not np.delete(err, 4, axis=0).any()
    assert np.array_equal(np.delete(out, 4, axis=0), np.delete(sym, 4, axis=0))


def test_size_is_close_to_ideal(tables16):
    """Index, final states and coding loss together: within 2% of the ideal code length (+ a few bytes)."""
    sym = smooth_symbols((16, 32, 32), seed=7, n=4)
    t = r.fit_tables(sym, L)
    for s in sym:
        p = r.encode(s, t)
        assert 8 * len(p) <= 1.02 * r.ideal_bits(s, t) + 8 * 4, (len(p), r.ideal_bits(s, t) / 8)


def test_default_lanes():
    assert [r.default_lanes(C, 32, 32) for C in (8, 16, 32)] == [4, 8, 16]
    assert r.default_lanes(32, 2, 2) == 1 and r.default_lanes(1, 1, 1) == 1
    assert r.default_lanes(32, 135, 240) == 16


def test_encode_rejects_bad_arguments():
    t = tables_for(3)
    sym = smooth_symbols((3, 4, 5))
    with pytest.raises(ValueError, match="< L"):
        r.encode(sym + L, t)
    with pytest.raises(ValueError, match="lanes=16 out of range"):
        r.encode(sym, t, lanes=16)
    with pytest.raises(ValueError, match="lanes=0"):
        r.encode(sym, t, lanes=0)


# ---------------------------------------------------------------------------------- bad input
def _sample():
    shape = (8, 6, 7)
    t = tables_for(8, seed=3)
    sym = smooth_symbols(shape, seed=11)
    return shape, t, sym, r.encode(sym, t, lanes=5)


def _raises(payload, t, shape, match=""):
    with pytest.raises(ValueError, match=match):
        r.decode(payload, t, shape)
    with pytest.raises(ValueError, match=match):
        rref.decode_reference(payload, t, shape)


def _index(p):
    """(K, word counts, header length) of a payload."""
    K, pos, counts = p[0], 1, []
    for _ in range(K):
        v, shift = 0, 0
        while True:
            v |= (p[pos] & 0x7F) << shift
            pos, shift = pos + 1, shift + 7
            if p[pos - 1] < 0x80:
                break
        counts.append(v if not counts else counts[-1] + ((v >> 1) ^ -(v & 1)))
    return K, counts, pos


def _reindexed(p, counts):
    """The payload's lane bytes behind another index of word counts: lane boundaries move (and, when the counts
    sum differently, the total length no longer matches)."""
    K, _, pos = _index(p)
    deltas = (rref._varint(rref._zigzag(b - a)) for a, b in zip(counts, counts[1:]))
    index = bytes([K]) + rref._varint(counts[0]) + b"".join(deltas)
    return index + p[pos:]


def test_damaged_index_and_truncation_raise():
    shape, t, sym, p = _sample()
    _raises(b"", t, shape, "empty")
    _raises(bytes([0]) + p[1:], t, shape, "lane count")
    _raises(bytes([57]) + p[1:], t, shape, "lane count")  # 8 * 7 = 56 columns at most
    _raises(p[:-1], t, shape, "payload length")  # a truncated last lane
    _raises(p[:-2], t, shape, "payload length")
    _raises(p + b"\0\0", t, shape, "payload length")
    _raises(p[:3], t, shape, "corrupt")
    K, counts, _ = _index(p)
    assert _reindexed(p, counts) == p
    _raises(_reindexed(p, [counts[0] + 1] + counts[1:]), t, shape, "payload length")  # lane 0 one word longer
    for k in range(K - 1):  # a wrong lane offset: the boundary between lanes k and k+1 moves by one word
        moved = counts[:k] + [counts[k] + 1, counts[k + 1] - 1] + counts[k + 2:]
        _raises(_reindexed(p, moved), t, shape, "unread words|final state")
    _raises(p[:1] + b"\xff" * 6 + p[7:], t, shape, "varint")


def test_random_bytes_never_crash():
    shape, t, _, _ = _sample()
    rng = np.random.default_rng(0)
    for i in range(300):
        junk = rng.integers(0, 256, size=int(rng.integers(0, 80))).astype(np.uint8).tobytes()
        if i % 3 == 0 and junk:
            junk = bytes([1 + i % 5]) + junk[1:]  # a plausible lane count, so decoding gets further
        try:
            out = r.decode(junk, t, shape)
        except ValueError as e:
            assert "corrupt" in str(e) and "\n" not in str(e)
        else:
            assert out.shape == shape and out.max() < L


def test_byte_flips_raise_or_stay_in_range():
    shape, t, sym, p = _sample()
    rng = np.random.default_rng(1)
    flipped = []
    for _ in range(300):
        b = bytearray(p)
        i = int(rng.integers(len(b)))
        b[i] ^= int(rng.integers(1, 256))
        flipped.append(bytes(b))
    caught = 0
    for q in flipped:
        try:
            out = r.decode(q, t, shape)
        except ValueError:
            caught += 1
        else:
            assert out.shape == shape and out.max() < L
    assert caught > 150, "the final-state and length checks catch most damage"


# ------------------------------------------------------------------------------------ Triton
TRITON_CASES = [((1, 1, 1), 1), ((3, 5, 7), 2), ((3, 5, 7), 21), ((8, 9, 13), 7), ((2, 1, 9), 5)]


@needs_triton
@pytest.mark.parametrize("shape, lanes", TRITON_CASES)
def test_triton_matches_numba(shape, lanes):
    kr = _import_triton_rans()
    t = tables_for(shape[0], seed=shape[0])
    sym = np.stack(list(_contents(shape, seed=2)))
    payloads = r.encode_batch(sym, t, lanes)
    got = kr.decode_batch(payloads, t, shape, device=DEVICE)
    assert got.dtype == torch.uint8 and np.array_equal(got.cpu().numpy(), sym)


@needs_triton
@pytest.mark.parametrize("shape, lanes", [((1, 1, 1), 1), ((3, 5, 7), 4), ((2, 1, 9), 5)])
def test_triton_encoder_matches_numba(shape, lanes):
    kr = _import_triton_rans()
    t = tables_for(shape[0], seed=shape[0])
    sym = np.stack(list(_contents(shape, seed=3)))
    assert kr.encode_batch(torch.from_numpy(sym).to(DEVICE), t, lanes) == r.encode_batch(sym, t, lanes)


@needs_triton
def test_triton_mixed_lane_counts_and_tables():
    kr = _import_triton_rans()
    shape = (4, 3, 5)
    t = tables_for(4)
    sym = smooth_symbols(shape, seed=4, n=3)
    payloads = [r.encode(s, t, k) for s, k in zip(sym, (1, 6, 20))]
    assert np.array_equal(kr.decode_batch(payloads, t, shape, device=DEVICE).cpu().numpy(), sym)
    with pytest.raises(ValueError, match="more lanes than the GPU launch"):
        kr.decode_batch(payloads, t, shape, device=DEVICE, max_lanes=4)
    dtab, ftab = kr.decode_tables(torch.from_numpy(t.astype(np.int64)))
    want = r._prepared(t, 4)[0][1]
    assert np.array_equal(dtab.numpy().view(np.uint16), want[0]) and np.array_equal(ftab.numpy(), want[1])


@needs_triton
def test_triton_reports_the_same_errors_as_numba():
    kr = _import_triton_rans()
    shape, t, sym, p = _sample()
    rng = np.random.default_rng(2)
    K, counts, _ = _index(p)
    moved = _reindexed(p, [counts[0] - 1, counts[1] + 1] + counts[2:])
    bad = [b"", p[:-1], bytes([0]) + p[1:], moved, p[:1] + b"\xff" * 6 + p[7:]]
    for _ in range(6):
        b = bytearray(p)
        b[int(rng.integers(len(b)))] ^= 0x5A
        bad.append(bytes(b))
    for n in (1, 2, 9, 40):
        bad.append(bytes([1 + n % 4]) + rng.integers(0, 256, size=n).astype(np.uint8).tobytes())
    out_cpu, cpu_err = _decode_flagged(bad, t, shape)
    data, offsets = r.pack_payloads(bad)
    tabs = kr.decode_tables(torch.from_numpy(t.astype(np.int64)).to(DEVICE))
    out, err = kr.decode_packed(torch.from_numpy(data.copy()).to(DEVICE), torch.from_numpy(offsets).to(DEVICE),
                                tabs, shape)
    assert np.array_equal(err.cpu().numpy(), cpu_err)
    assert (cpu_err[:5, 0] != 0).all()
    ok = cpu_err[:, 0] == 0  # damage that went unnoticed decodes identically on both
    assert np.array_equal(out.cpu().numpy()[ok], out_cpu[ok])
