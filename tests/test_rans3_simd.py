"""The SIMD rANS v3 decoder (the C extension _rans3_simd through rans3_simd.py) against the pure-Python
definition (rans3_reference), on every path it has: LATENTSTORE_RANS_ISA = avx512 / avx2 / scalar forced in
turn (each where this CPU runs it), and numba (rans3_kernels_cpu), the fallback without the extension. Same
symbols, and for damaged payloads the same (error code, lane) as decode_reference, on irregular shapes, every
L, lane counts that do not divide the rows, batches mixing payload sizes and lane counts, and the golden v3
payloads. Payloads come from encode_reference (pure Python): shapes stay small, and each is encoded once."""
import importlib.util
import os
from functools import lru_cache

import numpy as np
import pytest

from latentstore.codec.entropy import rans3_simd as rs
from latentstore.codec.entropy import rans_v2, rans_v3
from latentstore.codec.entropy.rans3_reference import decode_reference, encode_reference
from latentstore.errors import UsageError

V3 = os.path.join(os.path.dirname(__file__), "golden", "v3")
ISAS = ["avx512", "avx2", "scalar", "numba"]


def _have_numba_kernel() -> bool:
    return importlib.util.find_spec("latentstore.codec.entropy.rans3_kernels_cpu") is not None


@pytest.fixture(params=ISAS)
def isa(request, monkeypatch):
    """Every decode in the test runs on this path (skipped where the CPU, the build or the numba kernel lacks it)."""
    if request.param == "numba":
        if not _have_numba_kernel():
            pytest.skip("rans3_kernels_cpu (the numba decoder) is not there yet")
    elif request.param not in rs.supported_isas():
        pytest.skip(f"{request.param}: not built or not run by this CPU ({rs.supported_isas()})")
    monkeypatch.setenv(rs.ENV, request.param)
    assert rs.chosen_isa() == request.param
    return request.param


# ------------------------------------------------------------------------------- payloads
def correlated(rng, shape, L, p=0.6):
    s = rng.integers(0, L, shape)
    for axis in (-1, -2, -3):
        s = np.where(rng.random(shape) < p, np.roll(s, 1, axis=axis), s)
    return s.astype(np.uint8)


CASES = [  # shape, L, lanes (None: default_lanes); lane counts that do not divide C*h included
    ((1, 1, 1), 1, None), ((1, 1, 1), 6, 1), ((3, 5, 7), 6, None), ((3, 5, 7), 6, 2), ((3, 5, 7), 5, 15),
    ((5, 6, 6), 6, 7), ((5, 6, 6), 2, 7), ((8, 13, 11), 4, 16), ((8, 13, 11), 6, 9), ((16, 17, 9), 5, 5),
    ((16, 17, 9), 3, None), ((32, 8, 8), 6, None), ((32, 8, 8), 6, 255), ((3, 4, 1), 6, 12), ((2, 9, 12), 1, 5),
    ((4, 3, 17), 6, 11),
]


@lru_cache(maxsize=None)
def case(shape, L, lanes):
    """(symbols (4, C, h, w), tables, payloads): random, correlated, constant and correlated symbols, the last
    with another lane count where the shape allows (a batch mixing lane counts and payload sizes)."""
    rng = np.random.default_rng(sum(shape) * 7 + L)
    s = np.stack([rng.integers(0, L, shape).astype(np.uint8), correlated(rng, shape, L),
                  np.full(shape, L // 2, np.uint8), correlated(rng, shape, L, 0.8)])
    tables = rans_v3.fit_tables(s[1:2], L)
    K = rans_v3.lanes_for(lanes, *shape)
    other = min(shape[0] * shape[1], 255, K + 3) if K < min(shape[0] * shape[1], 255) else max(1, K - 1)
    payloads = [encode_reference(s[i], tables, lanes if i < 3 else other) for i in range(4)]
    return s, tables, payloads


def flagged(payloads, tables, shape, isa, threads_split=False):
    """rans3_simd.decode_range on one path without raising: (symbols (N, C, h, w), err (N, 2))."""
    C, h, w = shape
    _, packed, L = rans_v3.prepared(tables, C)
    data, offsets = rans_v2.pack_payloads(payloads)
    N = len(payloads)
    out = np.zeros((N, C, h, w), np.uint8)
    err = np.full((N, 2), -1, np.int64)
    if threads_split and N > 1:  # two calls on halves, as decode_batch's threads make them
        rs.decode_range(data, offsets, packed, L, C, h, w, out, err, 0, N // 2, isa)
        rs.decode_range(data, offsets, packed, L, C, h, w, out, err, N // 2, N, isa)
    else:
        rs.decode_range(data, offsets, packed, L, C, h, w, out, err, 0, N, isa)
    return out, err


@lru_cache(maxsize=None)
def reference(payload: bytes, tables_key, shape):
    """decode_reference's verdict: (code, lane, symbols or None)."""
    tables = _TABLES[tables_key]
    try:
        return 0, 0, decode_reference(payload, tables, shape)
    except ValueError as e:
        msg = str(e)
        text, lane = msg.split(": ", 1)[1].rsplit(" (lane ", 1)
        return rans_v2.ERRORS.index(text), int(lane.rstrip(")")), None


_TABLES: dict = {}


def ref(payload, tables, shape):
    key = (tables.shape, tables.tobytes())
    _TABLES.setdefault(key, tables)
    return reference(bytes(payload), key, tuple(shape))


# ------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("shape,L,lanes", CASES)
def test_decodes_reference_payloads_on_every_path(isa, shape, L, lanes):
    s, tables, payloads = case(shape, L, lanes)
    assert np.array_equal(rans_v3.decode_batch(payloads, tables, shape), s)
    assert np.array_equal(rans_v3.decode_batch(payloads, tables, shape, threads=2), s)
    assert np.array_equal(rans_v3.decode_batch(payloads[::-1] * 3, tables, shape), np.concatenate([s[::-1]] * 3))
    for i in range(len(payloads)):  # one at a time (a block of a single sample's lanes)
        assert np.array_equal(rans_v3.decode_batch([payloads[i]], tables, shape)[0], s[i])
    out, err = flagged(payloads, tables, shape, isa, threads_split=True)
    assert np.array_equal(out, s) and not err.any()  # err is written for good samples too: (0, 0)


@lru_cache(maxsize=None)
def expensive_case(shape, L, lanes):
    """Tables fitted on constant symbols (every other symbol gets frequency ~1/4096) and random symbols: ~12
    bits a symbol, so a lane reads a word at almost every step (the decoders' word buffering at its limit)."""
    rng = np.random.default_rng(L)
    tables = rans_v3.fit_tables(np.zeros((1,) + shape, np.uint8), L)
    s = rng.integers(0, L, (3,) + shape).astype(np.uint8)
    s[2, :, ::2] = 0  # cheap rows between expensive ones
    return s, tables, [encode_reference(x, tables, lanes) for x in s]


@pytest.mark.parametrize("shape,L,lanes", [((3, 5, 7), 6, 2), ((8, 13, 11), 6, 16), ((4, 6, 33), 3, 5)])
def test_lanes_reading_a_word_almost_every_step(isa, shape, L, lanes):
    s, tables, payloads = expensive_case(shape, L, lanes)
    assert sum(map(len, payloads)) > 0.7 * s.size  # 6-10 bits a symbol: a word at most steps
    assert np.array_equal(rans_v3.decode_batch(payloads, tables, shape, threads=2), s)
    rng = np.random.default_rng(1)
    bad = damaged_variants(payloads[0], rng)[-12:]  # flipped words, moved lane bounds, garbage lanes
    out, err = flagged(bad, tables, shape, isa)
    for j, q in enumerate(bad):
        code, lane, sym = ref(q, tables, shape)
        assert tuple(err[j]) == (code, lane)
        assert code or np.array_equal(out[j], sym)


def test_a_big_batch_spans_several_chunks_of_lanes(isa):
    """More lanes than the decoder takes in one go (4096): 300 samples of (32, 8, 8) at K = 16."""
    s, tables, payloads = case((32, 8, 8), 6, None)
    many = [payloads[i % 3] for i in range(300)]
    want = s[[i % 3 for i in range(300)]]
    assert np.array_equal(rans_v3.decode_batch(many, tables, (32, 8, 8), threads=2), want)


def test_golden_v3_payloads_decode_on_every_path(isa):
    for name in ("a", "b"):
        want = np.load(os.path.join(V3, f"{name}_symbols.npy"))
        tables = np.load(os.path.join(V3, f"{name}_tables.npy"))
        payload = open(os.path.join(V3, f"{name}.rans3"), "rb").read()
        assert np.array_equal(rans_v3.decode_batch([payload, payload], tables, want.shape), np.stack([want] * 2))


# ------------------------------------------------------------------------------ damage
def damaged_variants(p: bytes, rng) -> list[bytes]:
    """Truncations, padding, flipped bytes (index, states, words), other K, edited lane index varints,
    the bytes after the index replaced (same length: the lanes decode garbage)."""
    K = p[0]
    out = [b"", p[:1], p[:2], p[:len(p) // 2], p[:-1], p[:-2], p + b"\0", p + b"\0\0", bytes([0]) + p[1:],
           bytes([min(255, K + 1)]) + p[1:], bytes([max(1, K - 1)]) + p[1:], bytes([255]) + p[1:],
           p[:1] + b"\x80\x80\x80\x80\x80\x80" + p[2:], p[:1] + b"\x80\x80\x80\x80\x80\x00" + p[2:],
           p[:1] + b"\xff" + p[1:]]
    for pos in sorted({1, 2, min(3, len(p) - 1), len(p) - 1, len(p) // 2, *rng.integers(1, len(p), 6)}):
        for bit in (0x01, 0x80):
            q = bytearray(p)
            q[pos] ^= bit
            out.append(bytes(q))
    q = bytearray(p)  # a lane length moved by one word between lanes 0 and 1 (zigzag +1 / -1)
    if K >= 2 and q[2] < 0x7E:
        q[2] += 2
        out.append(bytes(q))
    index_end = 1 + K  # a lower bound: every varint is >= 1 byte
    body = bytearray(p)
    body[index_end + 8:] = rng.integers(0, 256, max(0, len(p) - index_end - 8), dtype=np.uint8).tobytes()
    out.append(bytes(body))
    return [q for q in out if q != p]


DAMAGE_CASES = [((3, 5, 7), 6, 2), ((5, 6, 6), 6, 7), ((8, 13, 11), 4, 16), ((16, 17, 9), 5, 5),
                ((2, 9, 12), 1, 5), ((32, 8, 8), 6, None)]


@pytest.mark.parametrize("shape,L,lanes", DAMAGE_CASES)
def test_damaged_payloads_give_the_reference_error(isa, shape, L, lanes):
    s, tables, payloads = case(shape, L, lanes)
    rng = np.random.default_rng(L)
    bad = [q for p in payloads[1:3] for q in damaged_variants(p, rng)]
    verdicts = [ref(q, tables, shape) for q in bad]
    assert any(v[0] == 6 for v in verdicts) or any(v[0] == 7 for v in verdicts)
    # every sample's verdict in one batch, good samples in between (blocks mixing damaged and good lanes)
    batch = [x for q in bad for x in (q, payloads[0])]
    out, err = flagged(batch, tables, shape, isa, threads_split=True)
    for j, (code, lane, sym) in enumerate(verdicts):
        assert tuple(err[2 * j]) == (code, lane), (j, bad[j][:12].hex())
        if code == 0:  # damage the format cannot see: the reference's symbols
            assert np.array_equal(out[2 * j], sym)
        assert tuple(err[2 * j + 1]) == (0, 0) and np.array_equal(out[2 * j + 1], s[0])
    # and the message decode_batch raises is the reference's
    for q, (code, lane, sym) in list(zip(bad, verdicts))[::4]:
        if code == 0:
            assert np.array_equal(rans_v3.decode_batch([q], tables, shape)[0], sym)
            continue
        with pytest.raises(ValueError) as e:
            decode_reference(q, tables, shape)
        with pytest.raises(ValueError) as got:
            rans_v3.decode_batch([q], tables, shape)
        assert str(got.value) == str(e.value)
        with pytest.raises(ValueError) as got:
            rans_v3.decode_batch([payloads[0], payloads[1], q], tables, shape, threads=2)
        assert str(got.value) == str(e.value).replace("sample 0", "sample 2")


# ------------------------------------------------------------------------------ the switch
def test_isa_switch_and_its_errors(monkeypatch):
    monkeypatch.setenv(rs.ENV, "bogus")
    with pytest.raises(UsageError, match="expected one of"):
        rs.chosen_isa()
    monkeypatch.setenv(rs.ENV, "auto")
    assert rs.chosen_isa() == (rs.supported_isas()[0] if rs.extension_available() else "numba")
    if rs.extension_available():
        assert "scalar" in rs.supported_isas()
    monkeypatch.setattr(rs, "_ext", None)  # as without a compiler at install time
    assert rs.chosen_isa() == "numba"
    for forced in ("avx512", "avx2", "scalar"):
        monkeypatch.setenv(rs.ENV, forced)
        with pytest.raises(UsageError, match="not built"):
            rs.chosen_isa()


@pytest.mark.skipif(not rs.extension_available(), reason="the C extension is not built")
def test_the_extension_checks_its_arguments():
    s, tables, payloads = case((3, 5, 7), 6, 2)
    _, packed, L = rans_v3.prepared(tables, 3)
    data, offsets = rans_v2.pack_payloads(payloads)
    out = np.zeros((4, 3, 5, 7), np.uint8)
    err = np.zeros((4, 2), np.int64)
    ext = rs._ext
    ext.decode_range(data, offsets, packed, L, 3, 5, 7, out, err, 0, 4, 0)
    assert np.array_equal(out, s)
    for args, what in [((data, offsets, packed, 7, 3, 5, 7, out, err, 0, 4, 0), "alphabet"),
                       ((data, offsets, packed[:-1], L, 3, 5, 7, out, err, 0, 4, 0), "packed"),
                       ((data, offsets, packed, L, 3, 5, 7, out[:3], err, 0, 4, 0), "out is too small"),
                       ((data, offsets, packed, L, 3, 5, 7, out, err[:3], 0, 4, 0), "err is too small"),
                       ((data, offsets[:4], packed, L, 3, 5, 7, out, err, 0, 4, 0), "offsets too short"),
                       ((data[:-1], offsets, packed, L, 3, 5, 7, out, err, 0, 4, 0), "not increasing"),
                       ((data, offsets, packed, L, 3, 5, 7, out, err, 0, 4, 7), "ISA")]:
        with pytest.raises(RuntimeError, match=what):
            ext.decode_range(*args)
    ext.decode_range(data, offsets, packed, L, 3, 5, 7, out, err, 2, 2, 0)  # an empty range is fine
