"""`latentstore.rans3` (bitstream v3's coder): the numba coder against the pure-Python definition, the
context model, damaged payloads, and the golden payloads every later version must still decode."""
import os

import numpy as np
import pytest

from latentstore.codec.entropy import get_coder, rans_v2, rans_v3
from latentstore.codec.entropy import rans3_kernels_cpu as kc
from latentstore.codec.entropy.rans3_reference import context, decode_reference, encode_reference, lane_order
from latentstore.errors import BitstreamError

V3 = os.path.join(os.path.dirname(__file__), "golden", "v3")
SHAPES = [((1, 1, 1), 1, None), ((3, 5, 7), 6, None), ((4, 9, 3), 4, 3), ((2, 1, 5), 6, 2), ((5, 6, 6), 2, 7),
          ((8, 13, 11), 6, None), ((16, 17, 9), 5, 5), ((3, 4, 1), 6, 12)]


def correlated(rng, shape, L, p=0.5):
    s = rng.integers(0, L, shape)
    for axis in (-1, -2):
        s = np.where(rng.random(shape) < p, np.roll(s, 1, axis=axis), s)
    return s.astype(np.uint8)


def numba_decode(payloads, tables, shape):
    """The numba kernel alone (rans_v3.decode_batch may pick the SIMD extension)."""
    C, h, w = shape
    _, packed, L = rans_v3.prepared(tables, C)
    data, offsets = rans_v2.pack_payloads(payloads)
    out = np.empty(len(payloads) * C * h * w, np.uint8)
    err = np.zeros((len(payloads), 2), np.int64)
    kc.decode_range(data, offsets, packed, L, C, h, w, out, err, 0, len(payloads))
    rans_v2.raise_errors(err)
    return out.reshape((len(payloads),) + tuple(shape))


@pytest.mark.parametrize("shape,L,lanes", SHAPES)
def test_numba_coder_matches_the_reference_bit_for_bit(shape, L, lanes):
    rng = np.random.default_rng(sum(shape) + L)
    s = correlated(rng, (3,) + shape, L)
    tables = rans_v3.fit_tables(s, L)
    payloads = rans_v3.encode_batch(s, tables, lanes)
    for i in range(3):
        assert payloads[i] == encode_reference(s[i], tables, lanes)
        assert np.array_equal(decode_reference(payloads[i], tables, shape), s[i])
    assert np.array_equal(numba_decode(payloads, tables, shape), s)
    assert np.array_equal(rans_v3.decode_batch(payloads, tables, shape, threads=2), s)
    assert rans_v3.encode_batch(s, tables, lanes) == payloads  # deterministic


def test_lanes_own_contiguous_rows_and_contexts_stay_inside_a_lane():
    C, h, w, K = 5, 7, 4, 3
    b = rans_v3.lane_rows(C, h, K)
    assert list(b) == [0, 11, 23, 35]
    order = [lane_order(C, h, w, K, k) for k in range(K)]
    assert sum(len(o) for o in order) == C * h * w
    assert order[1][0] == (1, 4, 0, False)  # row 11 = channel 1, y 4: the lane's first row has no row above
    assert order[1][w] == (1, 5, 0, True)
    rng = np.random.default_rng(0)
    s = correlated(rng, (C, h, w), 6)
    ctx = rans_v3.contexts(s, 6, K)[0]
    for k in range(K):
        for c, y, x, up in order[k]:
            assert ctx[c, y, x] == context(s, c, y, x, up, 6)
    assert ctx[0, 0, 0] == (6 * 7 + 6) * 7 + 6  # nothing known: every neighbour 'none'
    counts = rans_v3.context_counts(s, 6, K)
    assert counts.shape == (C, 343, 6) and counts.sum() == C * h * w


def smooth(rng, shape, L):
    """Blurred noise quantised to L levels: neighbours in both directions predict a symbol, as in latents."""
    f = rng.standard_normal(shape)
    for _ in range(3):
        f = sum(np.roll(np.roll(f, dy, -2), dx, -1) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    return np.digitize(f, np.quantile(f, np.linspace(0, 1, L + 1)[1:-1])).astype(np.uint8)


def test_the_three_neighbour_context_costs_fewer_bits_than_v2_on_smooth_symbols():
    rng = np.random.default_rng(5)
    train, val = smooth(rng, (16, 4, 32, 32), 6), smooth(rng, (4, 4, 32, 32), 6)
    t2 = rans_v2.fit_tables(train, 6)
    t3 = rans_v3.fit_tables(train, 6)
    v2 = sum(len(p) for p in rans_v2.encode_batch(val, t2))
    v3 = sum(len(p) for p in rans_v3.encode_batch(val, t3))
    assert v3 < 0.9 * v2, (v3, v2)  # left is as informative as above here; v2 sees only above
    ideal = rans_v3.ideal_bits(val, t3) / 8
    assert ideal <= v3 < ideal * 1.02 + 16 * len(val)


def test_tables_are_checked_and_alphabets_above_six_are_refused():
    t = rans_v3.fit_tables(np.zeros((1, 2, 3, 3), np.uint8), 4)
    assert t.shape == (2, 125, 4) and (t.astype(int).sum(-1) == 4096).all() and t.min() >= 1
    bad = t.copy()
    bad[1, 7, 0] += 1
    with pytest.raises(ValueError, match="channel 1 context 7 sums to 4097"):
        rans_v3.check_tables(bad, 2, 4)
    with pytest.raises(ValueError, match="expected"):
        rans_v3.encode(np.zeros((2, 3, 3), np.uint8), t[:, :49])
    with pytest.raises(ValueError, match="at most 6 symbols"):
        rans_v3.check_tables(np.ones((1, 512, 7), np.uint16), 1, 7)
    with pytest.raises(ValueError, match="lanes=5 out of range"):
        rans_v3.encode(np.zeros((2, 2, 9), np.uint8), t, lanes=5)  # 4 rows: at most 4 lanes


def test_packed_rows_hold_the_inner_cumulative_frequencies():
    t = rans_v3.fit_tables(correlated(np.random.default_rng(2), (1, 2, 6, 6), 6), 6)
    cum = rans_v3.cumulative(t).reshape(-1, 7)
    packed = rans_v3.packed_rows(t)
    for i in range(1, 6):
        assert np.array_equal((packed >> np.uint64(12 * (i - 1))) & np.uint64(4095), cum[:, i].astype(np.uint64))
    assert (packed >> np.uint64(60)).max() == 0


def _damaged(rng, p: bytes, trial: int) -> bytes:
    b = bytearray(p)
    kind = trial % 4
    if kind == 0:
        return bytes(b[:max(0, len(b) - 1 - trial % 7)])
    if kind == 1:
        b[0] = int(rng.integers(0, 256))  # K
    elif kind == 2:
        b[1 + trial % 3] ^= 1 << int(rng.integers(8))  # the lane index
    else:
        j = int(rng.integers(len(b)))
        b[j] ^= 1 << int(rng.integers(8))
    return bytes(b)


def test_damaged_payloads_get_the_references_error_never_a_crash():
    rng = np.random.default_rng(11)
    shape, L = (6, 5, 7), 6
    s = correlated(rng, shape, L)
    tables = rans_v3.fit_tables(s[None], L)
    p = rans_v3.encode(s, tables, lanes=4)
    seen = set()
    for trial in range(120):
        q = _damaged(rng, p, trial)
        try:
            decode_reference(q, tables, shape)
            want = None
        except ValueError as e:
            want = str(e)
        for decode in (numba_decode, rans_v3.decode_batch):
            try:
                got = decode([q], tables, shape)
                assert want is None, want
            except ValueError as e:
                assert str(e) == want
                seen.add(want.split(": ", 1)[1].split(" (lane")[0])
    assert len(seen) >= 4, seen  # the damage reached several different checks
    with pytest.raises(BitstreamError, match="corrupt"):
        get_coder("latentstore.rans3").decode(p[:-1], tables, shape)


def test_golden_v3_payloads_still_decode_and_encode_to_the_same_bytes():
    for name, lanes in (("a", 3), ("b", None)):
        s = np.load(os.path.join(V3, f"{name}_symbols.npy"))
        tables = np.load(os.path.join(V3, f"{name}_tables.npy"))
        payload = open(os.path.join(V3, f"{name}.rans3"), "rb").read()
        assert np.array_equal(decode_reference(payload, tables, s.shape), s)
        assert np.array_equal(numba_decode([payload], tables, s.shape)[0], s)
        assert np.array_equal(get_coder("latentstore.rans3").decode(payload, tables, s.shape), s)
        assert rans_v3.encode(s, tables, lanes) == payload
        assert np.array_equal(rans_v3.fit_tables(s[None], tables.shape[-1]), tables)  # fitting is deterministic
