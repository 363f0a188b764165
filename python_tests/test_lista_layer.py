"""lista_layer: values and all five gradients against the float64 reference, theta
broadcasting, layouts, empty batches and a float64 gradcheck over all inputs."""
import pytest
import torch

from sdu_ext import ops
from sdu_ext import reference as R
from sdu_testing import DEVICES, DTYPES, check, kink_mask, theta_shape, up_grad

SHAPES = [(1, 1, 1), (5, 7, 33), (3, 33, 7), (2, 65, 1031), (0, 7, 5), (4, 1, 9)]
THETA_KINDS = ["python", "0d", "row", "col", "full"]
PY_THETA = 0.21


def make_inputs(rng, B, m, n, dtype, device, theta_kind, noncontig=False):
    lay = (lambda two_d: "transposed" if two_d else "strided") if noncontig else (lambda _: "contiguous")
    y = rng.make((B, m), dtype, device, layout=lay(True))
    xs = rng.make((B, n), dtype, device, layout=lay(False))
    # Scaled so the pre-activation is O(1) whatever m and n are.
    W1 = rng.make((m, m), torch.float64, device, layout=lay(True)) / m ** 0.5
    W2 = rng.make((m, n), torch.float64, device, layout=lay(False)) / n ** 0.5
    W1, W2 = W1.to(dtype), W2.to(dtype)
    if noncontig:  # `/` and `.to` keep the layout of their input; make sure
        assert m == 1 or not W1.is_contiguous()
    tshape = theta_shape(theta_kind, (B, m))
    if tshape is None:
        theta = PY_THETA
    else:
        theta = rng.make(tshape, dtype, device, kind="rand", low=0.1, high=0.6).requires_grad_()
    return [t.requires_grad_() for t in (y, xs, W1, W2)] + [theta]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,m,n", SHAPES)
@pytest.mark.parametrize("theta_kind", THETA_KINDS)
@pytest.mark.parametrize("noncontig", [False, True], ids=["contiguous", "noncontiguous"])
def test_matches_reference(rng, device, dtype, B, m, n, theta_kind, noncontig):
    y, xs, W1, W2, theta = make_inputs(rng, B, m, n, dtype, device, theta_kind, noncontig)
    out = ops.lista_layer(y, xs, W1, W2, theta)
    assert out.shape == (B, m) and out.dtype == dtype and out.device == y.device

    y64, xs64, W164, W264 = (up_grad(t) for t in (y, xs, W1, W2))
    th64 = torch.tensor(theta, dtype=dtype).double() if isinstance(theta, float) else up_grad(theta)
    ref = R.lista_layer(y64, xs64, W164, W264, th64)
    with torch.no_grad():
        z = y64 @ W164.T + xs64 @ W264.T
        mag = (y64.abs() @ W164.abs().T + xs64.abs() @ W264.abs().T)
    scale = float(mag.max()) if mag.numel() else 0.0
    check(out, ref, dtype, rng, "forward", scale=scale)

    # Upstream gradient zeroed where the pre-activation sits on a kink (|z| == theta)
    # within the rounding of the low-precision products.
    g = rng.randn(B, m) * kink_mask(z.abs() - th64.detach().expand(B, m), dtype, scale=max(scale, 1.0))
    out.backward(g.to(dtype=dtype, device=y.device))
    leaves = [y64, xs64, W164, W264] + ([th64] if th64.requires_grad else [])
    ref_grads = torch.autograd.grad(ref, leaves, g)
    ga = g.abs()
    active = (ref.detach() != 0).double()
    ga_act = ga * active
    scales = [
        ga_act @ W164.detach().abs(), ga_act @ W264.detach().abs(),
        ga_act.T @ y64.detach().abs(), ga_act.T @ xs64.detach().abs(),
    ]
    for name, t, r, s in zip(("y", "xs", "W1", "W2"), (y, xs, W1, W2), ref_grads, scales):
        assert t.grad is not None and t.grad.shape == t.shape and t.grad.dtype == dtype
        check(t.grad, r, dtype, rng, f"grad {name}", scale=float(s.max()) if s.numel() else 0.0)
    if th64.requires_grad:
        assert theta.grad.shape == theta.shape
        s = ga_act.sum_to_size(th64.shape)
        check(theta.grad, ref_grads[4], dtype, rng, "grad theta",
              scale=float(s.max()) if s.numel() else 0.0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_only_some_inputs_require_grad(rng, device, dtype):
    y, xs, W1, W2, theta = make_inputs(rng, 4, 6, 5, dtype, device, "row")
    for t in (y, xs, theta):
        t.requires_grad_(False)
    out = ops.lista_layer(y, xs, W1, W2, theta)
    out.sum().backward()
    assert y.grad is None and xs.grad is None and theta.grad is None
    assert W1.grad is not None and W2.grad is not None
    assert W1.grad.abs().sum() > 0 or (out == 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_negative_threshold(rng, device):
    y, xs, W1, W2, _ = make_inputs(rng, 3, 8, 6, torch.float64, device, "row")
    theta = torch.full((8,), -0.3, dtype=torch.float64, device=device)
    out = ops.lista_layer(y, xs, W1, W2, theta)
    ref = R.lista_layer(*(t.detach() for t in (y, xs, W1, W2)), theta)
    check(out, ref, torch.float64, rng, "negative theta forward")


# ------------------------------------------------------------------ gradcheck (float64)

def kink_free_inputs(rng, B, m, n, device, theta_kind, margin=1e-3, attempts=200):
    for _ in range(attempts):
        y, xs, W1, W2, theta = make_inputs(rng, B, m, n, torch.float64, device, theta_kind)
        with torch.no_grad():
            z = y @ W1.T + xs @ W2.T
            if (z.abs() - theta.expand(B, m)).abs().min() > margin:
                return y, xs, W1, W2, theta
    raise AssertionError(f"no kink-free draw in {attempts} attempts [{rng!r}]")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("theta_kind", ["0d", "row", "col", "full"])
def test_gradcheck_all_inputs(rng, device, theta_kind):
    inputs = kink_free_inputs(rng, 3, 4, 5, device, theta_kind)
    assert all(t.requires_grad for t in inputs)
    assert torch.autograd.gradcheck(ops.lista_layer, inputs)
