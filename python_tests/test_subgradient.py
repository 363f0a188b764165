"""min_norm_subgradient: values and the gradient w.r.t. grad against the float64
reference (every dtype, odd sizes, layouts, empty inputs), special values and a
float64 gradcheck away from the kinks."""
import pytest
import torch

from sdu_ext import ops
from sdu_ext import reference as R
from sdu_testing import DEVICES, DTYPES, check, kink_mask, up, up_grad

SIZES = [1, 7, 33, 1031]


def make_y(rng, shape, dtype, device, layout="contiguous", zero_fraction=0.4):
    """Codes that are exactly 0 or at least 0.1 away from 0."""
    mag = rng.make(shape, torch.float64, "cpu", layout=layout, kind="rand", low=0.1, high=2.0)
    sign = torch.where(torch.rand(shape, generator=rng.gen) < 0.5, -1.0, 1.0).double()
    zero = torch.rand(shape, generator=rng.gen) < zero_fraction
    y = (mag * sign).masked_fill(zero, 0.0)
    out = torch.empty_strided(y.shape, y.stride(), dtype=dtype, device=device)
    return out.copy_(y)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", SIZES)
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.7])
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "strided"])
def test_matches_reference(rng, device, dtype, d, alpha, layout):
    shape = (5, d)
    grad = rng.make(shape, dtype, device, layout=layout).requires_grad_()
    y = make_y(rng, shape, dtype, device, layout=layout)
    out = ops.min_norm_subgradient(grad, y, alpha)
    assert out.shape == shape and out.dtype == dtype and out.device == grad.device

    g64, y64 = up_grad(grad), up(y)
    ref = R.min_norm_subgradient(g64, y64, alpha)
    # grad + alpha sign(y) cancels when grad ~ -alpha sign(y): judge by the terms' size
    scale = float((g64.detach().abs() + alpha).max())
    check(out, ref, dtype, rng, "forward", scale=scale)

    # Upstream gradient zeroed where y == 0 and |grad| is within rounding of alpha.
    dist = torch.where(y64 == 0, g64.detach().abs() - alpha, torch.ones_like(y64))
    up_g = rng.randn(*shape) * kink_mask(dist, dtype, scale=max(alpha, 1.0))
    out.backward(up_g.to(dtype=dtype, device=grad.device))
    (ref_grad,) = torch.autograd.grad(ref, g64, up_g)
    assert grad.grad.shape == shape and grad.grad.dtype == dtype
    check(grad.grad, ref_grad, dtype, rng, "grad w.r.t. grad")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_known_values(device, dtype):
    alpha = 0.5
    grad = torch.tensor([0.25, -0.25, 1.0, -1.0, 0.0, 0.25, -1.0, 2.0], dtype=dtype, device=device)
    y = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 1.0, -3.0, -0.5], dtype=dtype, device=device)
    # y == 0: shrink(grad, alpha); y != 0: grad + alpha sign(y)
    expected = torch.tensor([0.0, 0.0, 0.5, -0.5, 0.0, 0.75, -1.5, 1.5], dtype=dtype, device=device)
    torch.testing.assert_close(ops.min_norm_subgradient(grad, y, alpha), expected, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_alpha_zero_is_identity(rng, device, dtype):
    grad = rng.make((4, 33), dtype, device)
    y = make_y(rng, (4, 33), dtype, device)
    torch.testing.assert_close(ops.min_norm_subgradient(grad, y, 0.0), grad, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_code_propagates(rng, device, dtype):
    grad = rng.make((2, 33), dtype, device)
    y = make_y(rng, (2, 33), dtype, device)
    y[0, 3] = float("nan")
    y[1, 32] = float("nan")
    out = ops.min_norm_subgradient(grad, y, 0.3)
    assert torch.isnan(out[0, 3]) and torch.isnan(out[1, 32])
    mask = ~torch.isnan(y)
    ref = R.min_norm_subgradient(up(grad), up(y), 0.3)
    check(out[mask], ref[mask.cpu()], dtype, rng, "entries next to NaN")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0, 7), (3, 0), (0,), (2, 0, 4)])
def test_empty_inputs(device, dtype, shape):
    grad = torch.empty(shape, dtype=dtype, device=device, requires_grad=True)
    y = torch.empty(shape, dtype=dtype, device=device)
    out = ops.min_norm_subgradient(grad, y, 0.3)
    assert out.shape == shape and out.dtype == dtype
    out.sum().backward()
    assert grad.grad.shape == shape


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_large_input_parallel_path(rng, device, dtype):
    shape = (97, 1031)
    grad = rng.make(shape, dtype, device)
    y = make_y(rng, shape, dtype, device)
    out = ops.min_norm_subgradient(grad, y, 0.3)
    ref = R.min_norm_subgradient(up(grad), up(y), 0.3)
    check(out, ref, dtype, rng, "large forward", scale=float(up(grad).abs().max() + 0.3))


@pytest.mark.parametrize("device", DEVICES)
def test_code_requiring_grad_gets_no_gradient(rng, device):
    # The value is piecewise constant in y: its gradient w.r.t. y is zero (or absent).
    grad = rng.make((3, 7), torch.float64, device).requires_grad_()
    y = make_y(rng, (3, 7), torch.float64, device).requires_grad_()
    ops.min_norm_subgradient(grad, y, 0.3).sum().backward()
    assert grad.grad is not None
    assert y.grad is None or (y.grad == 0).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("alpha", [0.0, 0.3])
@pytest.mark.parametrize("shape", [(4, 9), (2, 3, 5)])
def test_gradcheck_wrt_grad(rng, device, alpha, shape):
    y = make_y(rng, shape, torch.float64, device)
    grad = rng.make(shape, torch.float64, device)
    # keep |grad| at least 1e-3 away from alpha where y == 0 (the dead-zone edges)
    close = (y == 0) & ((grad.abs() - alpha).abs() < 1e-3)
    grad = torch.where(close, grad + torch.sign(grad) * 5e-3, grad)
    if alpha == 0.0:
        grad = torch.where((y == 0) & (grad.abs() < 1e-3), grad + 5e-3, grad)
    grad.requires_grad_()
    assert torch.autograd.gradcheck(lambda g: ops.min_norm_subgradient(g, y, alpha), (grad,))
