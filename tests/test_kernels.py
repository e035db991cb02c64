"""Triton kernels against the plain-PyTorch reference. CPU: TRITON_INTERPRET=1 (set by `make test`)."""
import os

import pytest
import torch

import latentstore_kernels as K
from latentstore_kernels._common import KernelConfig, autotune_enabled, pack_width, reduce_partials, tiling
from latentstore_kernels._tuning import (candidate_configs, candidate_rows, default_config, interpreter_config, search,
                                         tuned_config)
from latentstore_kernels.fused_quantize import quantize_backward, quantize_forward, quantize_fused
from latentstore_kernels.fused_symbols import symbols_fused

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton kernels on CPU need TRITON_INTERPRET=1", allow_module_level=True)

SHAPES = [(1, 3, 5, 7), (3, 17, 9, 13), (2, 32, 28, 28)]
LS = [2, 5, 6, 8, 16]
DTYPES = [torch.float32, torch.bfloat16]
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}
POISON = {torch.float32: float("nan"), torch.bfloat16: float("nan")}


def _inputs(shape, L, dtype, sigma=2.0, seed=0):
    g = torch.Generator().manual_seed(seed + L + shape[1])
    centres = torch.sort(torch.randn(L, generator=g) * 1.5).values
    z = (torch.randn(shape, generator=g) * 1.5).to(dtype)
    return z.to(DEVICE), centres.to(DEVICE)


def _poisoned(z):
    return torch.full_like(z, POISON[z.dtype]), torch.full(z.shape, 255, dtype=torch.uint8, device=z.device)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("L", LS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_matches_reference(shape, L, dtype):
    if shape == (2, 32, 28, 28) and L not in (6, 16):
        pytest.skip("the large shape runs at the shipped L and the largest one (interpreter time)")
    z, c = _inputs(shape, L, dtype)
    zq_buf, sym_buf = _poisoned(z)
    got = quantize_forward(z, c, 2.0, z_q=zq_buf, symbols=sym_buf)
    ref = K.quantize_reference(z, c, 2.0)
    assert not torch.isnan(got["z_q"].float()).any(), "an output element was never written"
    assert torch.equal(got["symbols"], ref["symbols"])
    assert torch.equal(got["hard_hist"].cpu(), ref["hard_hist"].cpu())
    assert int(got["hard_hist"].sum()) == z.numel()
    torch.testing.assert_close(got["z_q"].float(), ref["z_q"].float(), **TOL[dtype])
    torch.testing.assert_close(got["soft_hist"], ref["soft_hist"], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(K.entropy_bits(got["soft_hist"]), K.entropy_bits(ref["soft_hist"]), rtol=1e-5, atol=1e-5)


def _ref_grads(z, c, sigma, gy, gH):
    z_ = z.detach().clone().requires_grad_(True)
    c_ = c.detach().clone().requires_grad_(True)
    r = K.quantize_reference(z_, c_, sigma)
    (r["z_q"].float() * gy.float()).sum().backward(inputs=[z_, c_], retain_graph=True)
    gz1, gc1 = z_.grad.clone(), c_.grad.clone()
    z_.grad = None
    c_.grad = None
    (r["soft_hist"] * gH).sum().backward(inputs=[z_, c_])
    return gz1 + z_.grad, gc1 + c_.grad


@pytest.mark.parametrize("shape", SHAPES[:2] + [(2, 8, 7, 9)])
@pytest.mark.parametrize("L", LS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_matches_reference_autograd(shape, L, dtype):
    z, c = _inputs(shape, L, dtype, seed=1)
    g = torch.Generator().manual_seed(7)
    gy = torch.randn(shape, generator=g).to(dtype).to(DEVICE)
    gH = (torch.randn((shape[1], L), generator=g) * 1e-3).to(DEVICE)
    gz_buf = torch.full_like(z, float("nan"))
    gz, gc = quantize_backward(z, c, 2.0, gy, gH, grad_z=gz_buf)
    rz, rc = _ref_grads(z, c, 2.0, gy, gH)
    assert not torch.isnan(gz.float()).any()
    torch.testing.assert_close(gz.float(), rz.float(), **TOL[dtype])
    torch.testing.assert_close(gc, rc, rtol=1e-3, atol=1e-3 * max(1.0, rc.abs().max().item()))


def test_autograd_function_through_entropy():
    """The module path: loss = MSE-like term + entropy of the soft histogram, both gradients."""
    z, c = _inputs((2, 5, 6, 7), 6, torch.float32, seed=3)
    z.requires_grad_(True)
    c1 = c.clone().requires_grad_(True)
    out = quantize_fused(z, c1, 3.0)
    loss = (out["z_q"] ** 2).mean() + K.entropy_bits(out["soft_hist"])
    gz, gc = torch.autograd.grad(loss, [z, c1])
    z2 = z.detach().clone().requires_grad_(True)
    c2 = c.clone().requires_grad_(True)
    ref = K.quantize_reference(z2, c2, 3.0)
    loss2 = (ref["z_q"] ** 2).mean() + K.entropy_bits(ref["soft_hist"])
    rz, rc = torch.autograd.grad(loss2, [z2, c2])
    torch.testing.assert_close(gz, rz, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gc, rc, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("sigma", [1.0, 1e4])
@pytest.mark.parametrize("dtype", DTYPES)
def test_ties_and_extreme_sigma(sigma, dtype):
    # z exactly between two centres ties; also z exactly on centres and far outside the range.
    c = torch.tensor([-1.0, 0.0, 1.0, 2.0], device=DEVICE)
    vals = torch.tensor([-0.5, 0.5, 1.5, 0.0, 1.0, -3.0, 5.0, 0.25, -0.75, 1.5, 0.5, -1.0], device=DEVICE)
    z = vals.view(1, 2, 2, 3).to(dtype)
    got = quantize_forward(z, c, sigma)
    ref = K.quantize_reference(z, c, sigma)
    assert torch.equal(got["symbols"], ref["symbols"])
    assert got["symbols"].flatten()[0].item() == 0  # -0.5 ties between -1 and 0: the lower index wins
    assert torch.equal(got["hard_hist"].cpu(), ref["hard_hist"].cpu())
    torch.testing.assert_close(got["z_q"].float(), ref["z_q"].float(), **TOL[dtype])
    torch.testing.assert_close(got["soft_hist"], ref["soft_hist"], rtol=1e-4, atol=1e-4)
    gy = torch.ones_like(z)
    gH = torch.full((2, 4), 0.01, device=DEVICE)
    gz, gc = quantize_backward(z, c, sigma, gy, gH)
    rz, rc = _ref_grads(z, c, sigma, gy, gH)
    assert torch.isfinite(gz.float()).all() and torch.isfinite(gc).all()
    torch.testing.assert_close(gz.float(), rz.float(), rtol=2e-2, atol=2e-2 * max(1.0, rz.abs().max().item()))
    torch.testing.assert_close(gc, rc, rtol=2e-2, atol=2e-2 * max(1.0, rc.abs().max().item()))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("L", [2, 6, 16])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_symbols_kernel_matches_reference(shape, L, dtype, with_bias):
    z, c = _inputs(shape, L, dtype, seed=5)
    bias = torch.randn(shape[1]).to(DEVICE) if with_bias else None
    sym_buf = torch.full(z.shape, 255, dtype=torch.uint8, device=DEVICE)
    got = symbols_fused(z, c, bias, symbols=sym_buf)
    ref = K.symbols_reference(z, c, bias)
    assert (got["symbols"] < L).all(), "an output element was never written"
    assert torch.equal(got["symbols"], ref["symbols"])
    assert torch.equal(got["hard_hist"].cpu(), ref["hard_hist"].cpu())


def test_dispatch_switch(monkeypatch):
    z, c = _inputs((1, 2, 3, 3), 6, torch.float32)
    monkeypatch.setenv("LATENTSTORE_KERNELS", "reference")
    assert K.backend_for(z) == "reference"
    monkeypatch.setenv("LATENTSTORE_KERNELS", "triton")
    assert K.backend_for(z) == "triton"
    assert torch.equal(K.quantize(z, c, 1.0)["symbols"], K.quantize_reference(z, c, 1.0)["symbols"])
    monkeypatch.setenv("LATENTSTORE_KERNELS", "bogus")
    with pytest.raises(ValueError):
        K.backend_for(z)


# ------------------------------------------------------------------ the redesigned launch paths
# Pinned configurations that exercise what the interpreter's default (one whole-row block, the
# whole batch per program) does not: several column blocks with a ragged last one (HW not a
# multiple of BLOCK), batch groups with a ragged last one (B not a multiple of ROWS), several
# partial-histogram rows per channel, several elements per thread with the packed per-thread
# count sums (V > 1), and both histogram modes.
MULTI = [
    # shape, L, config: blocks x batch groups per channel, and what they cover
    ((5, 2, 5, 7), 5, KernelConfig(16, 2, 1)),      # HW=35: 3 blocks, last 3/16; B=5: groups 2+2+1; V=1
    ((3, 2, 8, 16), 16, KernelConfig(64, 2, 1)),    # HW=128: 2 blocks; B=3: 2+1; 2 elements/thread, V=2; L=16: 2 words
    ((2, 2, 16, 16), 9, KernelConfig(256, 4, 1)),   # 8 elements/thread, V=4 (fp32) / 8 (bf16); ROWS > B
]


@pytest.mark.parametrize("case", range(len(MULTI)))
@pytest.mark.parametrize("dtype,hist", [(torch.float32, "partial"), (torch.bfloat16, "partial"),
                                        (torch.float32, "atomic")])  # the histogram write is dtype-blind
def test_multi_row_programs_match_reference(case, dtype, hist, monkeypatch):
    shape, L, cfg = MULTI[case]
    monkeypatch.setenv("LATENTSTORE_HIST", hist)
    t = tiling(cfg, shape[0], shape[1], shape[2] * shape[3])
    assert t.NHB * cfg.BLOCK >= shape[2] * shape[3] and t.NBG * cfg.ROWS >= shape[0]
    z, c = _inputs(shape, L, dtype, seed=11)
    zq_buf, sym_buf = _poisoned(z)
    got = quantize_forward(z, c, 2.0, z_q=zq_buf, symbols=sym_buf, config=cfg)
    ref = K.quantize_reference(z, c, 2.0)
    assert got["z_q"].dtype == dtype and not torch.isnan(got["z_q"].float()).any()
    assert torch.equal(got["symbols"], ref["symbols"])
    assert got["hard_hist"].dtype == torch.int64 and torch.equal(got["hard_hist"].cpu(), ref["hard_hist"].cpu())
    torch.testing.assert_close(got["z_q"].float(), ref["z_q"].float(), **TOL[dtype])
    torch.testing.assert_close(got["soft_hist"], ref["soft_hist"], rtol=1e-4, atol=1e-3)

    g = torch.Generator().manual_seed(3)
    gy = torch.randn(shape, generator=g).to(dtype).to(DEVICE)
    gH = (torch.randn((shape[1], L), generator=g) * 1e-3).to(DEVICE)
    gz, gc = quantize_backward(z, c, 2.0, gy, gH, grad_z=torch.full_like(z, float("nan")), config=cfg)
    rz, rc = _ref_grads(z, c, 2.0, gy, gH)
    assert gz.dtype == dtype and not torch.isnan(gz.float()).any()
    torch.testing.assert_close(gz.float(), rz.float(), **TOL[dtype])
    torch.testing.assert_close(gc, rc, rtol=1e-3, atol=1e-3 * max(1.0, rc.abs().max().item()))

    bias = torch.randn(shape[1]).to(DEVICE)
    s = symbols_fused(z, c, bias, symbols=torch.full(z.shape, 255, dtype=torch.uint8, device=DEVICE), config=cfg)
    r = K.symbols_reference(z, c, bias)
    assert torch.equal(s["symbols"], r["symbols"]) and torch.equal(s["hard_hist"].cpu(), r["hard_hist"].cpu())


@pytest.mark.parametrize("L,per_group", [(6, 3), (16, 600)])
def test_partial_histogram_reduction(L, per_group):
    """The second pass alone: groups of partial rows summed in order; several BLOCK_P steps at L=16."""
    g = torch.Generator().manual_seed(L)
    groups = 3
    soft = torch.rand((groups * per_group, L), generator=g).to(DEVICE)
    hard = torch.randint(0, 1000, (groups * per_group, L), generator=g, dtype=torch.int32).to(DEVICE)
    so = torch.full((groups, L), float("nan"), device=DEVICE)
    ho = torch.full((groups, L), -1, dtype=torch.int64, device=DEVICE)
    reduce_partials(soft, hard, groups, per_group, L, so, ho)
    torch.testing.assert_close(so, soft.view(groups, per_group, L).sum(1), rtol=1e-5, atol=1e-4)
    assert torch.equal(ho, hard.view(groups, per_group, L).long().sum(1))
    so2 = torch.empty_like(so)
    reduce_partials(soft, None, groups, per_group, L, so2, None)  # soft only (the centre gradient)
    assert torch.equal(so2, so)


def test_histograms_are_deterministic_and_modes_agree(monkeypatch):
    z, c = _inputs((3, 2, 5, 7), 6, torch.float32, seed=4)
    cfg = KernelConfig(16, 2, 1)
    a = quantize_forward(z, c, 1.5, config=cfg)
    b = quantize_forward(z, c, 1.5, config=cfg)
    assert torch.equal(a["soft_hist"], b["soft_hist"])  # partial mode: fixed summation order
    monkeypatch.setenv("LATENTSTORE_HIST", "atomic")
    d = quantize_forward(z, c, 1.5, config=cfg)
    assert torch.equal(d["hard_hist"], a["hard_hist"])
    torch.testing.assert_close(d["soft_hist"], a["soft_hist"], rtol=1e-6, atol=1e-5)
    monkeypatch.setenv("LATENTSTORE_HIST", "bogus")
    with pytest.raises(ValueError):
        quantize_forward(z, c, 1.5, config=cfg)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_symbols_take_low_precision_z_through_dispatch(dtype, monkeypatch):
    """K.symbols(z, centres, bias) with z in the encoder's autocast dtype, no fp32 copy by the caller."""
    z, c = _inputs((2, 5, 6, 7), 6, dtype, seed=9)
    bias = torch.randn(5).to(DEVICE)
    monkeypatch.setenv("LATENTSTORE_KERNELS", "triton")
    got = K.symbols(z, c, bias)
    monkeypatch.setenv("LATENTSTORE_KERNELS", "reference")
    ref = K.symbols(z, c, bias)
    assert got["symbols"].dtype == torch.uint8 and torch.equal(got["symbols"], ref["symbols"])
    assert torch.equal(got["hard_hist"].cpu(), ref["hard_hist"].cpu())


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's inf - inf inside the interpreter
def test_non_finite_z_propagates_like_the_reference():
    c = torch.tensor([-1.0, 0.0, 1.0], device=DEVICE)
    z = torch.tensor([0.2, float("nan"), float("inf"), -float("inf"), 0.9, -2.0], device=DEVICE).view(1, 1, 2, 3)
    got = quantize_forward(z, c, 2.0, config=KernelConfig(16, 1, 1))
    ref = K.quantize_reference(z, c, 2.0)
    assert torch.equal(got["symbols"], ref["symbols"])
    assert torch.equal(torch.isnan(got["z_q"]), torch.isnan(ref["z_q"]))
    fin = torch.isfinite(ref["z_q"])
    torch.testing.assert_close(got["z_q"][fin], ref["z_q"][fin])


def test_empty_batch():
    z = torch.zeros((0, 3, 4, 4), device=DEVICE)
    c = torch.linspace(-1, 1, 4, device=DEVICE)
    out = quantize_forward(z, c, 1.0)
    assert out["z_q"].shape == z.shape and out["soft_hist"].shape == (3, 4) and int(out["hard_hist"].sum()) == 0
    gz, gc = quantize_backward(z, c, 1.0, z, torch.zeros(3, 4, device=DEVICE))
    assert gz.shape == z.shape and torch.equal(gc, torch.zeros_like(gc))
    assert symbols_fused(z, c)["hard_hist"].shape == (3, 4)


SWEEP = [(1, 1, 1), (1, 3, 35), (3, 17, 117), (16, 32, 1024), (64, 32, 1024), (256, 32, 784), (512, 32, 1024),
         (2, 8, 4096), (1, 192, 16384)]


@pytest.mark.parametrize("kind", ["forward", "backward", "symbols"])
def test_default_and_candidate_configs_are_valid(kind):
    """Autotuning off: default_config() must be a valid launch for any shape; the tuner's space too."""
    for B, C, HW in SWEEP:
        for L in (2, 6, 16):
            for es in (2, 4):
                d = default_config(kind, L, B, C, HW, es)
                cands = candidate_configs(kind, L, B, C, HW, es, 132)
                assert cands[0] == d and len(set(cands)) == len(cands) <= 10
                rows = candidate_rows(cands[-1], B, C, HW, 132)
                assert 1 <= len(rows) <= 6
                for cfg in cands + rows:
                    t = tiling(cfg, B, C, HW)
                    assert t.NHB * cfg.BLOCK >= HW and t.NBG * cfg.ROWS >= B
                    assert cfg.BLOCK >= 32 * cfg.num_warps or cfg.num_warps == 1
                    assert cfg.ROWS * pack_width(cfg, HW, es) <= 255  # packed per-thread counts cannot overflow
                if HW >= 1024 and B * C >= 2048:  # training sizes: enough rows per program to amortise
                    assert d.ROWS >= 4 and t.programs >= 132


def test_autotune_switch_and_default_config_run(monkeypatch):
    z, c = _inputs((3, 2, 6, 6), 6, torch.float32, seed=2)
    monkeypatch.setenv("LATENTSTORE_AUTOTUNE", "0")
    assert not autotune_enabled(z.device)
    monkeypatch.setenv("LATENTSTORE_AUTOTUNE", "1")
    assert autotune_enabled(z.device)
    monkeypatch.delenv("LATENTSTORE_AUTOTUNE")
    assert autotune_enabled(z.device) == (z.is_cuda and os.environ.get("TRITON_INTERPRET") != "1")
    if os.environ.get("TRITON_INTERPRET") == "1":  # the interpreter never times configurations
        assert tuned_config("forward", z, 6, run=None) == interpreter_config(3, 36)
    cfg = default_config("forward", 6, 3, 2, 36, 4)
    got = quantize_forward(z, c, 2.0, config=cfg)
    ref = K.quantize_reference(z, c, 2.0)
    assert torch.equal(got["symbols"], ref["symbols"]) and torch.equal(got["hard_hist"].cpu(), ref["hard_hist"].cpu())
    torch.testing.assert_close(got["soft_hist"], ref["soft_hist"], rtol=1e-4, atol=1e-3)


def test_tuner_search_picks_the_fastest_of_both_stages():
    """The GPU tuner's control flow with a fake clock: stage 1 over (BLOCK, num_warps), stage 2 over ROWS."""
    B, C, HW = 64, 32, 1024
    ran = []

    def run(cfg, warm=False):
        assert not warm
        ran.append(cfg)
        return cfg

    def fake_time(fn):  # pretend 256-wide blocks with 2 warps and 16 rows are fastest
        cfg = fn()
        return abs(cfg.BLOCK - 256) + 10 * abs(cfg.num_warps - 2) + abs(cfg.ROWS - 16) / 100

    best = search("forward", 6, B, C, HW, 2, 132, run, fake_time)
    assert best == KernelConfig(256, 16, 2)
    assert len(set(ran)) == len(ran) <= 16  # each candidate timed once


def test_tuner_plumbing_with_a_fake_clock(monkeypatch, tmp_path):
    """tuned_config() as on a GPU (the interpreter stands in for the device, a counter for do_bench):
    the search runs once per shape bucket, its choice is cached in memory and on disk, and a new
    process (emptied memory cache) reads it back instead of timing again."""
    import triton.testing

    import latentstore_kernels._tuning as common
    calls = []

    def fake_do_bench(fn, **kw):
        fn()
        calls.append(1)
        return 1.0 / len(calls)  # the later candidate is "faster"

    monkeypatch.setattr(common, "interpreting", lambda: False)
    monkeypatch.setattr(common, "TUNE_MIN_ELEMENTS", 0)
    monkeypatch.setattr(common, "sm_count", lambda device: 1)  # a one-SM "GPU": several candidates even here
    monkeypatch.setattr(common, "_TUNED", {})
    monkeypatch.setattr(common, "_DISK", None)
    monkeypatch.setattr(triton.testing, "do_bench", fake_do_bench)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "FakeGPU")
    monkeypatch.setenv("LATENTSTORE_AUTOTUNE", "1")
    monkeypatch.setenv("LATENTSTORE_TUNE_CACHE", str(tmp_path / "tune.json"))
    z, c = _inputs((4, 1, 4, 4), 6, torch.float32, seed=1)
    got = quantize_forward(z, c, 2.0)  # tunes (the precompile step fails quietly off-GPU), then launches
    ref = K.quantize_reference(z, c, 2.0)
    assert torch.equal(got["symbols"], ref["symbols"])
    n = len(calls)
    assert n >= 2 and len(common.tuned_configs()) == 1
    chosen = next(iter(common.tuned_configs().values()))
    quantize_forward(z, c, 2.0)
    assert len(calls) == n  # cached in memory
    assert (tmp_path / "tune.json").exists()
    monkeypatch.setattr(common, "_TUNED", {})
    monkeypatch.setattr(common, "_DISK", None)
    quantize_forward(z, c, 2.0)
    assert len(calls) == n and next(iter(common.tuned_configs().values())) == chosen  # read back from disk
