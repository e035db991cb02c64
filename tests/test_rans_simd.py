"""The SIMD rANS decoder (the C extension _rans_simd through rans_simd.py) against the reference, on every
path it has: LATENTSTORE_RANS_ISA = avx512 / avx2 / scalar forced in turn (each where this CPU runs it),
and numba, the fallback when the extension is absent. Same symbols, and for damaged payloads the same
error naming the same sample and lane, on the golden v2 fixtures and on fuzzed payloads."""
import os
import subprocess
import sys

import numpy as np
import pytest

from latentstore.codec.entropy import rans_kernels_cpu as kc
from latentstore.codec.entropy import rans_reference as rref
from latentstore.codec.entropy import rans_simd as rs
from latentstore.codec.entropy import rans_v2 as r
from latentstore.errors import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V2 = os.path.join(ROOT, "tests", "golden", "v2")
ISAS = ["avx512", "avx2", "scalar", "numba"]


@pytest.fixture(params=ISAS)
def isa(request, monkeypatch):
    """Every decode_batch in the test runs on this path (skipped where the CPU or the build lacks it)."""
    if request.param != "numba" and request.param not in rs.supported_isas():
        pytest.skip(f"{request.param}: not built or not run by this CPU ({rs.supported_isas()})")
    monkeypatch.setenv(rs.ENV, request.param)
    assert rs.chosen_isa() == request.param
    return request.param


def symbols(shape, L, seed, n=None, spread=1.0):
    """Latent-like symbols (smoothed noise, clipped to L values); spread scales the entropy."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=((n,) if n else ()) + tuple(shape))
    for ax in (-1, -2):
        z = z + np.roll(z, 1, axis=ax) + np.roll(z, -1, axis=ax)
    return np.clip(np.round(spread * z + L / 2 - 0.5), 0, L - 1).astype(np.uint8)


def tables(C, L, seed=0):
    return r.fit_tables(symbols((C, 8, 8), L, seed, n=4), L)


def flagged(payloads, t, shape, isa):
    """decode_range on one path without raising: (symbols (N, C, h, w), err (N, 2))."""
    data, offsets = r.pack_payloads(payloads)
    N, n = len(payloads), int(np.prod(shape))
    flat = np.zeros(N * n + shape[1] * shape[2], np.uint8)
    err = np.zeros((N, 2), np.int64)
    (_, (dtab, ftab)), L = r._prepared(t, shape[0])
    rs.decode_range(data, offsets, dtab, ftab, L, *shape, flat, err, 0, N, isa)
    return flat[:N * n].reshape((N,) + tuple(shape)), err


# --------------------------------------------------------------------------------- golden
def test_golden_v2_fixtures_decode_on_every_path(isa):
    from latentstore.codec.zoo import load_codec_file
    from latentstore.store import open_store
    from latentstore.store.zarr_codec import LatentRansNumcodec
    chunk = np.load(os.path.join(V2, "chunk.npy"))
    nc = LatentRansNumcodec(np.load(os.path.join(V2, "tables.npy")), chunk.shape)
    assert np.array_equal(nc.decode(open(os.path.join(V2, "chunk.rans"), "rb").read()), chunk)
    codec = load_codec_file(os.path.join(ROOT, "tests", "golden", "golden-c4.safetensors"))
    header, sym = codec.parse(open(os.path.join(V2, "image.lsb"), "rb").read())
    assert np.array_equal(sym, np.load(os.path.join(V2, "image_symbols.npy")))
    want = np.load(os.path.join(V2, "store_symbols.npy"))
    for name in ("store.zarr", "store_wds"):
        s = open_store(os.path.join(V2, name))
        assert np.array_equal(np.stack([s.symbols(i) for i in range(len(s))]), want)


# ------------------------------------------------------------------------------ round trips
CASES = [  # shape, L, lanes: the scan kernel (L <= 7, one or two channels per column group) and the gather
    ((1, 1, 1), 6, 1), ((3, 5, 7), 6, 2), ((3, 5, 7), 6, 21), ((8, 9, 13), 6, 7), ((8, 9, 13), 6, 104),
    ((5, 2, 3), 2, 4), ((16, 12, 12), 3, None), ((32, 4, 4), 4, 16), ((2, 1, 9), 5, 5), ((4, 70, 6), 7, 3),
    ((8, 33, 8), 8, 4), ((4, 5, 16), 16, 16), ((3, 6, 5), 1, 2), ((32, 32, 32), 6, None), ((4, 37, 40), 6, 16),
    ((1, 3, 255), 6, 255), ((5, 3, 60), 6, 255),  # the most lanes a payload can have, in one and in five channels
]


@pytest.mark.parametrize("shape, L, lanes", CASES)
def test_matches_the_reference_bit_for_bit(isa, shape, L, lanes):
    t = tables(shape[0], L, seed=sum(shape))
    n = 3 if np.prod(shape) > 4000 else 6
    sym = np.concatenate([symbols(shape, L, seed=1, n=n, spread=s)[None] for s in (0.3, 1.0, 3.0)]).reshape(
        (-1,) + shape)
    sym[0] = 0  # one symbol everywhere
    payloads = r.encode_batch(sym, t, lanes)
    if np.prod(shape) <= 600:
        assert payloads[:4] == [rref.encode_reference(s, t, lanes) for s in sym[:4]]
        assert np.array_equal(rref.decode_reference(payloads[1], t, shape), sym[1])
    assert np.array_equal(r.decode_batch(payloads, t, shape), sym)
    assert np.array_equal(r.decode_batch(payloads, t, shape, threads=2), sym)


@pytest.mark.parametrize("shape, L, lanes", [((32, 8, 32), 6, 16), ((4, 37, 40), 6, 16), ((3, 9, 4), 8, 3),
                                             ((8, 6, 7), 2, 5)])
def test_rare_symbols_read_a_word_at_consecutive_steps(isa, shape, L, lanes):
    """Symbols of frequency 1/4096 (12 bits each): lanes read words at consecutive steps, which smooth
    content almost never does (the kernels' two-word buffer is only half used there)."""
    t = np.full((shape[0], L + 1, L), 1, np.uint16)
    t[..., 0] = 4096 - (L - 1)
    rng = np.random.default_rng(L)
    sym = rng.integers(0, L, size=(4,) + shape).astype(np.uint8)
    sym[1] = np.where(rng.random(shape) < 0.7, 0, sym[1])  # rare symbols between likely ones
    payloads = r.encode_batch(sym, t, lanes)
    assert np.array_equal(r.decode_batch(payloads, t, shape), sym)
    if np.prod(shape) <= 600:
        assert payloads == [rref.encode_reference(s, t, lanes) for s in sym]


def test_many_images_mixed_lane_counts_and_runs(isa):
    """More chains than one run holds (2048), K changing mid-batch, damaged images in between."""
    shape, L = (16, 3, 2), 6
    t = tables(16, L, seed=4)
    sym = symbols(shape, L, seed=5, n=150)
    lanes = [16] * 130 + [8, 8, 3, 3, 3, 16, 1, 32, 32, 5] + [16] * 10
    payloads = [r.encode(s, t, k) for s, k in zip(sym, lanes)]
    payloads[131] = payloads[131][:-1]
    payloads[140] = b""
    out, err = flagged(payloads, t, shape, isa)
    want = np.zeros((150, 2), np.int64)
    want[131], want[140] = (5, 0), (1, 0)
    assert np.array_equal(err, want)
    ok = np.ones(150, bool)
    ok[[131, 140]] = False
    assert np.array_equal(out[ok], sym[ok])


# ---------------------------------------------------------------------------------- fuzzing
def _damaged(rng, p, count):
    """Byte flips, truncations, padding, moved lane boundaries and junk of a plausible lane count."""
    out = []
    for i in range(count):
        b = bytearray(p)
        kind = i % 5
        if kind == 0:
            b[int(rng.integers(len(b)))] ^= int(rng.integers(1, 256))
        elif kind == 1:
            b = b[:int(rng.integers(0, len(b)))]
        elif kind == 2:
            b += bytes(int(rng.integers(1, 4)))
        elif kind == 3:
            for _ in range(int(rng.integers(2, 6))):
                b[int(rng.integers(len(b)))] = int(rng.integers(256))
        else:
            b = bytes([int(rng.integers(1, 9))]) + rng.integers(0, 256, size=int(rng.integers(0, 60))).astype(
                np.uint8).tobytes()
        out.append(bytes(b))
    return out


@pytest.mark.parametrize("shape, L, lanes", [((8, 6, 7), 6, 5), ((3, 9, 4), 8, 3), ((16, 4, 4), 6, 16)])
def test_damaged_payloads_give_the_reference_error_and_lane(isa, shape, L, lanes):
    rng = np.random.default_rng(sum(shape) + L)
    t = tables(shape[0], L, seed=2)
    sym = symbols(shape, L, seed=3, n=4)
    bad = [q for s in sym for q in _damaged(rng, r.encode(s, t, lanes), 60)]
    out, err = flagged(bad, t, shape, isa)
    n_err = 0
    for i, q in enumerate(bad):  # one by one: decode (this path) and decode_reference say the same thing
        try:
            want = rref.decode_reference(q, t, shape)
        except ValueError as e:
            n_err += 1
            with pytest.raises(ValueError) as got:
                r.decode(q, t, shape)
            assert str(got.value) == str(e)
            assert str(e).endswith(f"(lane {err[i, 1]})") and err[i, 0] > 0
        else:
            assert np.array_equal(r.decode(q, t, shape), want) and not err[i].any()
            assert np.array_equal(out[i], want)
    assert n_err > len(bad) // 2, "the fuzzing reaches the error paths"
    ref_out, ref_err = flagged(bad, t, shape, "numba")  # the batch, against numba: same codes and lanes
    assert np.array_equal(err, ref_err)
    ok = err[:, 0] == 0
    assert np.array_equal(out[ok], ref_out[ok])
    with pytest.raises(ValueError, match=f"sample {int(np.flatnonzero(err[:, 0])[0])} is corrupt"):
        r.decode_batch(bad, t, shape)


# ------------------------------------------------------------------------- choice and fallback
def test_the_extension_is_built_and_auto_picks_the_best(monkeypatch):
    if not rs.extension_available():
        pytest.skip("the C extension is not built (no compiler at install time): numba decodes")
    monkeypatch.delenv(rs.ENV, raising=False)
    have = rs.supported_isas()
    assert have[-1] == "scalar" and rs.chosen_isa() == have[0]


def test_bad_or_unsupported_choice_is_a_usage_error(monkeypatch):
    monkeypatch.setenv(rs.ENV, "sse9")
    with pytest.raises(UsageError, match="expected one of auto, avx512, avx2, scalar, numba"):
        rs.chosen_isa()
    monkeypatch.setattr(rs, "_ext", None)
    monkeypatch.setenv(rs.ENV, "avx2")
    with pytest.raises(UsageError, match="not built"):
        r.decode(b"\x01", tables(2, 6), (2, 2, 2))


def test_without_the_extension_numba_decodes(monkeypatch):
    monkeypatch.setattr(rs, "_ext", None)
    monkeypatch.delenv(rs.ENV, raising=False)
    assert rs.chosen_isa() == "numba" and rs.supported_isas() == []
    t = tables(8, 6)
    sym = symbols((8, 5, 6), 6, seed=9, n=3)
    assert np.array_equal(r.decode_batch(r.encode_batch(sym, t), t, sym.shape[1:]), sym)


def test_import_without_the_extension_falls_back(tmp_path):
    """A fresh interpreter in which importing _rans_simd fails, as on an install without a compiler."""
    code = ("import sys, importlib.abc\n"
            "class Hide(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.endswith('._rans_simd'): raise ImportError('hidden')\n"
            "sys.meta_path.insert(0, Hide())\n"
            "import numpy as np\n"
            "from latentstore.codec.entropy import rans_simd as rs\n"
            "from latentstore.store.zarr_codec import LatentRansNumcodec\n"
            f"chunk = np.load({os.path.join(V2, 'chunk.npy')!r})\n"
            f"nc = LatentRansNumcodec(np.load({os.path.join(V2, 'tables.npy')!r}), chunk.shape)\n"
            f"got = nc.decode(open({os.path.join(V2, 'chunk.rans')!r}, 'rb').read())\n"
            "print(rs.extension_available(), rs.chosen_isa(), bool((got == chunk).all()))\n")
    env = {k: v for k, v in os.environ.items() if k != rs.ENV}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "numba", "True"]


def test_install_without_a_compiler_still_succeeds(tmp_path):
    """setup.py's build_ext with a compiler that fails: a warning, exit 0, no extension."""
    env = dict(os.environ, CC="false", LDSHARED="false")
    res = subprocess.run([sys.executable, os.path.join(ROOT, "setup.py"), "-q", "build_ext", "--build-lib",
                          str(tmp_path / "lib"), "--build-temp", str(tmp_path / "tmp")],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "SIMD rANS decoder was not built" in res.stdout + res.stderr
    assert not list((tmp_path).rglob("_rans_simd*.so"))


def test_threads_decode_at_once_with_the_gil_released(isa):
    """Loader threads share one decoder: concurrent calls give the same symbols as one call."""
    from concurrent.futures import ThreadPoolExecutor
    t = tables(16, 6, seed=6)
    sym = symbols((16, 16, 16), 6, seed=7, n=24)
    payloads = r.encode_batch(sym, t)
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda a: r.decode_batch(payloads[a:a + 6], t, sym.shape[1:]), range(0, 24, 6)))
    assert np.array_equal(np.concatenate(outs), sym)


def test_numba_kernel_is_unchanged_reference_for_the_fallback():
    """The numba kernel that the fallback runs still decodes like the reference (it is the 'before')."""
    t = tables(4, 6, seed=8)
    sym = symbols((4, 5, 6), 6, seed=8)
    p = rref.encode_reference(sym, t, 3)
    data, offsets = r.pack_payloads([p])
    flat = np.zeros(sym.size + 30, np.uint8)
    err = np.zeros((1, 2), np.int64)
    (_, (dtab, ftab)), L = r._prepared(t, 4)
    kc.decode_range(data, offsets, dtab, ftab, L, 4, 5, 6, flat, err, 0, 1)
    assert np.array_equal(flat[:sym.size].reshape(sym.shape), sym) and not err.any()
