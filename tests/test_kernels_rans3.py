"""rANS v3 (latentstore.rans3) on Triton (latentstore_kernels.rans3) against the pure-Python reference
(rans3_reference): the decoder returns exactly the reference's symbols and, for damaged payloads, exactly its
error (code, lane) and message; the encoder writes exactly its bytes.

Triton runs on CUDA when there is one, else under the interpreter (TRITON_INTERPRET=1, small shapes)."""
import importlib.util
import os
import re
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if importlib.util.find_spec("triton") is None:  # find_spec: importing triton here would fix its mode too early
    pytest.skip("triton is not installed", allow_module_level=True)

from latentstore.codec.entropy import rans3_reference as ref  # noqa: E402
from latentstore.codec.entropy import rans_v2, rans_v3  # noqa: E402
# v3 payloads have v2's index (K, then the lanes' word counts as varints): v2's test helpers read and rewrite it
# (reindexed writes any counts: the lane boundaries move and the total may change).
from tests.test_rans import _index as index, _reindexed as reindexed  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Triton on the CPU is its interpreter. Set here when absent, unless triton was already imported in compiled
# mode (it cannot switch any more): then the module is skipped.
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1" and "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton kernels on CPU need TRITON_INTERPRET=1", allow_module_level=True)

from latentstore_kernels import rans3 as kr  # noqa: E402


def symbols(shape, L, n, seed):
    """Latent-like symbols: spatially correlated (blurred noise), channels of different spread."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n,) + tuple(shape))
    for ax in (-1, -2):
        z = z + np.roll(z, 1, axis=ax) + np.roll(z, -1, axis=ax)
    z *= rng.uniform(0.2, 1.0, size=(shape[0], 1, 1))
    return np.clip(np.round(z + L / 2 - 0.5), 0, L - 1).astype(np.uint8)


def tables(C, L, seed=0):
    return rans_v3.fit_tables(symbols((C, 6, 7), L, 4, seed + 100), L)


def contents(shape, L, seed):
    """Smooth samples, one symbol everywhere, the top symbol everywhere, and noise."""
    rng = np.random.default_rng(seed)
    return np.concatenate([symbols(shape, L, 2, seed), np.zeros((1,) + shape, np.uint8),
                           np.full((1,) + shape, L - 1, np.uint8),
                           rng.integers(0, L, size=(1,) + shape).astype(np.uint8)])


def reference_error(payload, t, shape):
    """decode_reference's (symbols or None, (code, lane), message)."""
    try:
        return ref.decode_reference(payload, t, shape), (0, 0), ""
    except ValueError as e:
        m = re.fullmatch(r"rANS payload of sample 0 is corrupt: (.*) \(lane (\d+)\)", str(e))
        assert m, str(e)
        return None, (rans_v2.ERRORS.index(m.group(1)), int(m.group(2))), str(e)


def packed_input(payloads):
    data, offsets = rans_v2.pack_payloads(payloads)
    return torch.from_numpy(data.copy()).to(DEVICE), torch.from_numpy(offsets).to(DEVICE)


# (shape, L, lanes): lanes holding whole channels, lanes starting mid-channel, one row a lane, w = 1, h = 1, L = 1
CASES = [((1, 1, 1), 2, None), ((3, 5, 7), 3, 1), ((3, 5, 7), 5, 15), ((5, 6, 6), 6, 7), ((8, 9, 11), 4, 5),
         ((2, 1, 9), 2, 2), ((4, 7, 1), 6, 3), ((2, 3, 4), 1, 2)]


@pytest.mark.parametrize("shape, L, lanes", CASES)
def test_decoder_matches_reference(shape, L, lanes):
    t = tables(shape[0], L, seed=sum(shape))
    sym = contents(shape, L, seed=L + sum(shape))
    payloads = [ref.encode_reference(s, t, lanes) for s in sym]
    got = kr.decode_batch(payloads, t, shape, device=DEVICE)
    assert got.dtype == torch.uint8 and got.shape == sym.shape
    assert np.array_equal(got.cpu().numpy(), sym)


@pytest.mark.parametrize("shape, L, lanes", [((1, 1, 1), 2, None), ((3, 5, 7), 5, 4), ((5, 6, 6), 6, 7),
                                             ((4, 7, 1), 3, 3)])
def test_encoder_matches_reference(shape, L, lanes):
    t = tables(shape[0], L, seed=sum(shape))
    sym = contents(shape, L, seed=2 * L + sum(shape))
    got = kr.encode_batch(torch.from_numpy(sym).to(DEVICE), t, lanes)
    assert got == [ref.encode_reference(s, t, lanes) for s in sym]


def test_mixed_lane_counts_table_forms_and_launch_limit():
    shape, L = (4, 3, 5), 5
    t = tables(4, L, seed=4)
    sym = symbols(shape, L, 3, seed=4)
    payloads = [ref.encode_reference(s, t, k) for s, k in zip(sym, (1, 5, 12))]
    assert np.array_equal(kr.decode_batch(payloads, t, shape, device=DEVICE).cpu().numpy(), sym)
    rows = kr.packed_rows(torch.from_numpy(t.astype(np.int64)))
    assert np.array_equal(rows.numpy(), rans_v3.packed_rows(t).view(np.int64))
    data, offsets = packed_input(payloads)
    for form in (torch.from_numpy(t.astype(np.int64)), rows, torch.from_numpy(rans_v3.packed_rows(t))):
        out, err = kr.decode_packed(data, offsets, form.to(DEVICE), shape, lanes_per_program=16)
        assert np.array_equal(out.cpu().numpy(), sym) and not err.cpu().numpy().any()
    with pytest.raises(ValueError, match=r"sample 1 is corrupt: payload has more lanes than the GPU launch "
                                         r"allows \(max_lanes\) \(lane 0\)"):
        kr.decode_batch(payloads, t, shape, device=DEVICE, max_lanes=4)
    out, err = kr.decode_packed(data, offsets, rows.to(DEVICE), shape, max_lanes=5)
    assert err.cpu().numpy().tolist() == [[0, 0], [0, 0], [8, 0]]
    assert np.array_equal(out.cpu().numpy()[:2], sym[:2])


def test_bad_shapes_and_tables_raise_rans_v3s_messages():
    shape, L = (3, 5, 7), 4
    t = tables(3, L)
    p = [ref.encode_reference(symbols(shape, L, 1, 0)[0], t)]
    bad = [t[:2], t[:, :-1], t.astype(np.int64) * 0, np.concatenate([t[..., :1] + 1, t[..., 1:]], -1)]
    for b in bad:
        with pytest.raises(ValueError) as want:
            rans_v3.prepared(b, 3)
        with pytest.raises(ValueError) as got:
            kr.decode_batch(p, b, shape, device=DEVICE)
        assert str(got.value) == str(want.value)
    with pytest.raises(ValueError, match="empty axis"):
        kr.decode_batch(p, t, (3, 0, 7), device=DEVICE)
    assert kr.decode_batch([], t, shape, device=DEVICE).shape == (0,) + shape


# ------------------------------------------------------------------------------------- damage
def damaged(p, shape, rng):
    K, counts, pos = index(p)
    C, h, _ = shape
    bad = [b"", bytes([0]) + p[1:], bytes([C * h + 1]) + p[1:], bytes([255]) + p[1:], p[:-1], p + b"\0",
           p[:3],  # the index cut short
           p[:1] + b"\xff" * 6 + p[7:],  # an over-long varint
           reindexed(p, [counts[0], -1] + counts[2:]),  # a negative lane length (lane 1)
           reindexed(p, [counts[0] - 1, counts[1] + 1] + counts[2:]),  # a lane boundary moved
           reindexed(p, counts[:2] + [counts[2] + 1, counts[3] - 1] + counts[4:]),
           p[:pos] + bytes(4) + p[pos + 4:],  # lane 0's state zeroed
           bytes([K - 2]) + p[1:]]
    for j in range(12):  # flips in the lanes: states and words
        b = bytearray(p)
        b[int(rng.integers(pos, len(b)))] ^= int(rng.integers(1, 256))
        bad.append(bytes(b))
    for n in (1, 2, 9, 40):  # noise behind a plausible K
        bad.append(bytes([1 + n % 4]) + rng.integers(0, 256, size=n).astype(np.uint8).tobytes())
    return bad


def test_damaged_payloads_give_the_references_errors():
    shape, L, K = (5, 6, 6), 6, 7
    t = tables(5, L, seed=5)
    sym = symbols(shape, L, 1, seed=6)[0]
    p = ref.encode_reference(sym, t, K)
    assert index(p)[0] == K
    bad = damaged(p, shape, np.random.default_rng(3))
    want = [reference_error(b, t, shape) for b in bad]
    codes = np.array([w[1] for w in want])
    assert set(codes[:, 0]) >= {1, 2, 3, 4, 5, 6, 7}, "the damage covers every error the reference reports"
    # all in one launch: a payload's neighbours are other payloads, so a read outside its bytes would show
    data, offsets = packed_input(bad)
    out, err = kr.decode_packed(data, offsets, torch.from_numpy(t.astype(np.int64)).to(DEVICE), shape)
    assert err.cpu().numpy().tolist() == codes.tolist()
    for i, (s, _, _) in enumerate(want):  # damage that went unnoticed decodes as the reference decodes it
        if s is not None:
            assert np.array_equal(out[i].cpu().numpy(), s)
    firsts = {code: i for i, (code, _) in reversed(list(enumerate(codes.tolist()))) if code}
    for i in sorted(firsts.values()):  # the message, through decode_batch: one payload per error code
        with pytest.raises(ValueError) as e:
            kr.decode_batch([bad[i]], t, shape, device=DEVICE)
        assert str(e.value) == want[i][2]
    first = int(np.flatnonzero(codes[:, 0])[0])
    with pytest.raises(ValueError) as e:
        kr.decode_batch(bad, t, shape, device=DEVICE)
    assert str(e.value) == want[first][2].replace("sample 0", f"sample {first}")


# ------------------------------------------------------------------------------ compiled mode
COMPILE = r"""
import sys
import triton
from triton.backends import backends
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
if "nvidia" not in backends:
    print("NO_BACKEND")
    raise SystemExit(0)
from latentstore_kernels import rans as k2, rans3 as k3
ints = dict(N="i32", C="i32", h="i32", w="i32")
encode = dict(sym_ptr="*u8", cum_ptr="*i64", words_ptr="*i32", counts_ptr="*i64", states_ptr="*i64", **ints,
              K="i32", CAP="i32")
KERNELS = {  # (kernel, signature, options as the launcher passes them, L values)
    "rans": [(k2._rans_decode_kernel, dict(data_ptr="*u8", off_ptr="*i64", dtab_ptr="*i16", ftab_ptr="*i64",
                                           out_ptr="*u8", err_ptr="*i64", **ints, KSLOT="i32"), {}, (2, 6, 16)),
             (k2._rans_encode_kernel, dict(encode), {}, (2, 6, 16))],
    "rans3": [(k3._rans3_decode_kernel, dict(data_ptr="*u8", off_ptr="*i64", rows_ptr="*i64", out_ptr="*u8",
                                             err_ptr="*i64", **ints, KSLOT="i32"), dict(num_warps=1, num_stages=1),
               (2, 6)),
              (k3._rans3_encode_kernel, dict(encode), dict(num_warps=1), (2, 6))]}
for fn, sig, opts, Ls in KERNELS[sys.argv[1]]:
    for L in Ls:
        sig.update(L="constexpr", BLOCK="constexpr")
        k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=dict(L=L, BLOCK=32)),
                           target=GPUTarget("cuda", 90, 32), options=opts)
        assert k.asm["cubin"], fn
print("COMPILED")
"""


@pytest.mark.skipif(DEVICE == "cuda", reason="on a GPU the tests (here and in test_rans.py) compile and run them")
@pytest.mark.parametrize("module", ["rans", "rans3"])
def test_kernels_compile_for_an_h100(module, tmp_path):
    """The interpreter accepts things the compiler does not (types of loop-carried values, int widths): compile
    the module's decode and encode kernels (v2's too: they share the jit helpers of kernels/rans.py) to sm_90
    machine code, which needs no GPU (Triton's bundled ptxas), in a fresh process."""
    import subprocess
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    r = subprocess.run([sys.executable, "-c", COMPILE, module], env=env, capture_output=True, text=True,
                       timeout=300)
    if "NO_BACKEND" in r.stdout:
        pytest.skip("Triton has no CUDA backend here")
    assert r.returncode == 0 and "COMPILED" in r.stdout, r.stderr[-3000:]
