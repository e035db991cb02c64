"""Triton kernels against the plain-PyTorch reference. CPU: TRITON_INTERPRET=1 (set by `make test`)."""
import os

import pytest
import torch

import latentstore_kernels as K
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
