"""soft_threshold / soft_threshold_: agreement with the float64 reference (values and
gradients), broadcasting of theta, layouts, empty inputs, NaN/inf, negative
thresholds, the in-place variant and float64 gradchecks."""
import pytest
import torch

from sdu_ext import ops
from sdu_ext import reference as R
from sdu_testing import DEVICES, DTYPES, check, kink_mask, theta_shape, up, up_grad

SIZES = [1, 7, 33, 1031]
THETA_KINDS = ["python", "0d", "one", "row", "row2d", "col", "full", "mid"]
PY_THETA = 0.37


def make_theta(rng, kind, x_shape, dtype, device, low=0.2, high=0.8, requires_grad=True):
    shape = theta_shape(kind, x_shape)
    if shape is None:
        return PY_THETA
    t = rng.make(shape, dtype, device, kind="rand", low=low, high=high)
    return t.requires_grad_(requires_grad)


def ref_theta(theta, dtype):
    """float64 copy of theta as the op sees it (a Python number is rounded to x's dtype)."""
    if isinstance(theta, float):
        return torch.tensor(theta, dtype=dtype).double()
    return up_grad(theta)


def theta_grad_scale(g, y_ref, theta64):
    """Magnitude of each theta-gradient entry: sum of |g| over the entries it collects."""
    mag = g.abs() * (y_ref != 0)
    return float(mag.sum_to_size(theta64.shape).max()) if mag.numel() else 0.0


def run_and_compare(rng, x, theta, dtype, what):
    """Forward and backward of the op against the float64 reference on the same values."""
    x64 = up_grad(x)
    th64 = ref_theta(theta, dtype)
    y = ops.soft_threshold(x, theta)
    assert y.dtype == x.dtype and y.shape == x.shape and y.device == x.device
    y_ref = R.soft_threshold(x64, th64)
    check(y, y_ref, dtype, rng, f"{what}: forward")

    # Upstream gradient, zeroed where |x| is within rounding distance of theta.
    th_b = th64.detach().expand_as(x64)
    g = rng.randn(*x.shape) * kink_mask(x64.detach().abs() - th_b, dtype)
    y.backward(g.to(dtype=dtype, device=x.device))
    wrt = [x64] + ([th64] if th64.requires_grad else [])
    ref_grads = torch.autograd.grad(y_ref, wrt, g)
    assert x.grad.dtype == x.dtype and x.grad.shape == x.shape
    check(x.grad, ref_grads[0], dtype, rng, f"{what}: grad x")
    if th64.requires_grad:
        assert theta.grad.dtype == theta.dtype and theta.grad.shape == theta.shape
        check(theta.grad, ref_grads[1], dtype, rng, f"{what}: grad theta",
              scale=theta_grad_scale(g, y_ref.detach(), th64))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", SIZES)
@pytest.mark.parametrize("theta_kind", THETA_KINDS)
@pytest.mark.parametrize("rank", [2, 3])
def test_matches_reference(rng, device, dtype, d, theta_kind, rank):
    shape = (3, d) if rank == 2 else (2, 3, d)
    x = rng.make(shape, dtype, device).requires_grad_()
    theta = make_theta(rng, theta_kind, shape, dtype, device)
    run_and_compare(rng, x, theta, dtype, f"x{shape} theta={theta_kind}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [7, 33, 1031])
@pytest.mark.parametrize("layout", ["transposed", "strided", "permuted"])
@pytest.mark.parametrize("theta_kind", ["0d", "row", "col", "full"])
def test_noncontiguous_inputs(rng, device, dtype, d, layout, theta_kind):
    shape = (5, d)
    x = rng.make(shape, dtype, device, layout=layout).requires_grad_()
    assert not x.is_contiguous()
    tshape = theta_shape(theta_kind, shape)
    tlayout = layout if len(tshape) == 2 and min(tshape) > 1 else ("strided" if tshape else "contiguous")
    theta = rng.make(tshape, dtype, device, layout=tlayout, kind="rand", low=0.2, high=0.8)
    run_and_compare(rng, x, theta.requires_grad_(), dtype, f"{layout} x, {tlayout} theta={theta_kind}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("theta_kind", ["0d", "row", "col", "full"])
def test_large_input_parallel_path(rng, device, dtype, theta_kind):
    # > 3 * kGrain elements so at::parallel_for splits the work (row tails included).
    shape = (97, 1031)
    x = rng.make(shape, dtype, device).requires_grad_()
    theta = make_theta(rng, theta_kind, shape, dtype, device)
    run_and_compare(rng, x, theta, dtype, f"large theta={theta_kind}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("x_dtype,theta_dtype", [
    (torch.float32, torch.float64), (torch.float64, torch.float32),
    (torch.float16, torch.float32), (torch.bfloat16, torch.float64),
])
@pytest.mark.parametrize("theta_kind", ["0d", "row", "full"])
def test_theta_of_another_dtype(rng, device, x_dtype, theta_dtype, theta_kind):
    shape = (4, 33)
    x = rng.make(shape, x_dtype, device).requires_grad_()
    theta = make_theta(rng, theta_kind, shape, theta_dtype, device)
    y = ops.soft_threshold(x, theta)
    assert y.dtype == x_dtype
    x64, th64 = up_grad(x), up_grad(theta)
    # The kernel compares in x's accumulation dtype; theta rounded to it is the
    # reference's threshold as well.
    acc = torch.promote_types(x_dtype, torch.float32)
    th_used = th64.to(acc).double() if theta_dtype != acc else th64
    y_ref = R.soft_threshold(x64, th_used)
    check(y, y_ref, x_dtype, rng, "mixed dtype forward")
    g = rng.randn(*shape) * kink_mask(x64.detach().abs() - th_used.detach(), x_dtype)
    y.backward(g.to(device=x.device, dtype=x_dtype))
    gx, gt = torch.autograd.grad(y_ref, [x64, th64], g)
    check(x.grad, gx, x_dtype, rng, "mixed dtype grad x")
    assert theta.grad.dtype == theta_dtype and theta.grad.shape == theta.shape
    # theta's gradient is rounded to theta's dtype: judge it by the coarser of the two.
    coarse = max((x_dtype, theta_dtype), key=lambda t: torch.finfo(t).eps)
    check(theta.grad, gt, coarse, rng, "mixed dtype grad theta",
          scale=theta_grad_scale(g, y_ref.detach(), th64))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,theta_kind", [
    ((0, 7), "row"), ((0, 7), "0d"), ((0, 7), "col"), ((3, 0), "row"), ((3, 0), "0d"),
    ((0,), "0d"), ((2, 0, 5), "row"), ((2, 0, 5), "mid"),
])
def test_empty_inputs(rng, device, dtype, shape, theta_kind):
    x = torch.empty(shape, dtype=dtype, device=device, requires_grad=True)
    theta = make_theta(rng, theta_kind, shape, dtype, device)
    y = ops.soft_threshold(x, theta)
    assert y.shape == shape and y.dtype == dtype and y.device == x.device
    y.sum().backward()
    assert x.grad.shape == shape
    assert theta.grad is not None and theta.grad.shape == theta.shape
    assert (theta.grad == 0).all(), "an empty input must give a zero theta gradient"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_zero_dim_input(rng, device, dtype):
    x = torch.tensor(-0.75, dtype=dtype, device=device, requires_grad=True)
    theta = torch.tensor(0.25, dtype=dtype, device=device, requires_grad=True)
    y = ops.soft_threshold(x, theta)
    assert y.shape == () and float(y.detach()) == -0.5
    y.backward()
    assert float(x.grad) == 1.0 and float(theta.grad) == 1.0  # d/dtheta = -sign(y) = +1


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_negative_threshold_known_values(device, dtype):
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0], dtype=dtype, device=device)
    y = ops.soft_threshold(x, -1.0)
    # sign(x) * max(|x| + 1, 0): moves away from zero, 0 stays 0.
    expected = torch.tensor([-3.0, -1.5, 0.0, 1.5, 3.0], dtype=dtype, device=device)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("theta_kind", ["0d", "row", "full"])
def test_negative_threshold_matches_reference(rng, device, dtype, theta_kind):
    shape = (4, 33)
    x = rng.make(shape, dtype, device)
    x = x.masked_fill((torch.rand(shape, generator=rng.gen) < 0.2).to(device), 0.0).requires_grad_()
    theta = make_theta(rng, theta_kind, shape, dtype, device, low=-0.8, high=0.3)
    run_and_compare(rng, x, theta, dtype, f"negative theta={theta_kind}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("theta_kind", ["0d", "row"])
@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
def test_nan_and_inf_propagate(rng, device, dtype, theta_kind, inplace):
    shape = (2, 33)  # index 32 of each row is in the scalar tail after the vector loop
    x = rng.make(shape, dtype, device)
    specials = {(0, 0): float("nan"), (0, 16): float("nan"), (1, 32): float("nan"),
                (0, 32): float("inf"), (1, 3): float("-inf")}
    for idx, v in specials.items():
        x[idx] = v
    theta = make_theta(rng, theta_kind, shape, dtype, device, requires_grad=False)
    expected = R.soft_threshold(up(x), ref_theta(theta, dtype).detach())
    y = ops.soft_threshold_(x.clone(), theta) if inplace else ops.soft_threshold(x, theta)
    for idx, v in specials.items():
        got = float(y[idx])
        if v != v:
            assert got != got, f"NaN at {idx} did not propagate (got {got}) [{rng!r}]"
        else:
            assert got == v, f"{v} at {idx} became {got} [{rng!r}]"
    check(y, expected, dtype, rng, "finite entries next to NaN/inf", equal_nan=True)


# ------------------------------------------------------------------ in place

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "strided"])
@pytest.mark.parametrize("theta_kind", ["python", "0d", "row", "full"])
def test_inplace_writes_into_the_input(rng, device, dtype, layout, theta_kind):
    d = 33
    if layout == "strided":
        base = rng.make((5, 2 * d), dtype, device)
        x = base[:, ::2]
    elif layout == "transposed":
        base = rng.make((d, 5), dtype, device)
        x = base.T
    else:
        base = rng.make((5, d), dtype, device)
        x = base
    before = base.clone()
    theta = make_theta(rng, theta_kind, (5, d), dtype, device, requires_grad=False)
    expected = R.soft_threshold(up(x), ref_theta(theta, dtype).detach())
    ptr = x.data_ptr()
    out = ops.soft_threshold_(x, theta)
    assert out is x and x.data_ptr() == ptr
    check(x, expected, dtype, rng, f"in place ({layout})")
    if layout == "strided":
        torch.testing.assert_close(base[:, 1::2], before[:, 1::2], rtol=0, atol=0,
                                   msg="elements outside the strided view were modified")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_inplace_bumps_version_counter(rng, device, dtype):
    # Autograd relies on the version counter to detect tensors modified after being
    # saved for backward; every in-place op must bump it.
    x = rng.make((4, 33), dtype, device)
    v0 = x._version
    ops.soft_threshold_(x, 0.3)
    assert x._version > v0, f"soft_threshold_ did not bump the version counter of a {dtype} tensor"


@pytest.mark.parametrize("device", DEVICES)
def test_inplace_on_tensor_saved_for_backward_is_detected(device):
    # w * x saves x for the gradient of w; thresholding x in place afterwards must make
    # backward raise (as it does for torch's own in-place ops, e.g. x.relu_()) instead
    # of silently using the modified x.
    w = torch.randn(5, device=device, requires_grad=True)
    x = torch.tensor([1.0, -2.0, 0.1, 3.0, -0.2], device=device)
    loss = (w * x).sum()
    ops.soft_threshold_(x, 0.5)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("theta_kind", ["python", "0d", "row", "col"])
def test_inplace_gradients_match_reference(rng, device, dtype, theta_kind):
    shape = (6, 33)
    x0 = rng.make(shape, dtype, device).requires_grad_()
    theta = make_theta(rng, theta_kind, shape, dtype, device)
    xc = x0 * 1  # non-leaf
    y = ops.soft_threshold_(xc, theta)
    assert y is xc
    x64 = up_grad(x0)
    th64 = ref_theta(theta, dtype)
    y_ref = R.soft_threshold(x64, th64)
    check(y, y_ref, dtype, rng, "in place forward")
    g = rng.randn(*shape) * kink_mask(x64.detach().abs() - th64.detach().expand(shape), dtype)
    y.backward(g.to(dtype=dtype, device=device))
    wrt = [x64] + ([th64] if th64.requires_grad else [])
    ref = torch.autograd.grad(y_ref, wrt, g)
    check(x0.grad, ref[0], dtype, rng, "in place grad x")
    if th64.requires_grad:
        check(theta.grad, ref[1], dtype, rng, "in place grad theta",
              scale=theta_grad_scale(g, y_ref.detach(), th64))


def test_inplace_on_leaf_requiring_grad_raises():
    x = torch.randn(3, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        ops.soft_threshold_(x, 0.1)


def test_inplace_without_grad_mode_on_leaf_requiring_grad(rng):
    x = rng.make((3, 7), torch.float64).requires_grad_()
    expected = R.soft_threshold(up(x), 0.3)
    with torch.no_grad():
        ops.soft_threshold_(x, 0.3)
    check(x, expected, torch.float64, rng, "no_grad in-place")


# ------------------------------------------------------------------ gradcheck (float64)

def away_from_kinks(x, theta_b, margin=1e-3):
    """Moves entries with ||x| - theta| < margin to |x| = theta + 3 margin (same sign)."""
    close = (x.abs() - theta_b).abs() < margin
    pushed = torch.sign(x) * (theta_b.abs() + 3 * margin)
    return torch.where(close & (x != 0), pushed, x)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,theta_kind", [
    ((3, 7), "0d"), ((3, 7), "one"), ((3, 7), "row"), ((3, 7), "row2d"), ((3, 7), "col"),
    ((3, 7), "full"), ((2, 3, 5), "mid"), ((2, 3, 5), "col"), ((2, 3, 5), "row2d"),
])
@pytest.mark.parametrize("wrt", ["both", "x", "theta"])
def test_gradcheck(rng, device, shape, theta_kind, wrt):
    theta = rng.make(theta_shape(theta_kind, shape), torch.float64, device, kind="rand",
                     low=0.2, high=0.8)
    x = away_from_kinks(rng.make(shape, torch.float64, device), theta.expand(shape))
    x.requires_grad_(wrt in ("both", "x"))
    theta.requires_grad_(wrt in ("both", "theta"))
    assert torch.autograd.gradcheck(ops.soft_threshold, (x, theta))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("theta_kind", ["0d", "row", "col"])
def test_gradcheck_inplace_on_non_leaf(rng, device, theta_kind):
    shape = (4, 9)
    theta = rng.make(theta_shape(theta_kind, shape), torch.float64, device, kind="rand",
                     low=0.2, high=0.8).requires_grad_()
    x = away_from_kinks(rng.make(shape, torch.float64, device),
                        theta.detach().expand(shape)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, t: ops.soft_threshold_(a.clone(), t), (x, theta))


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_negative_threshold(rng, device):
    x = rng.make((3, 8), torch.float64, device).requires_grad_()
    theta = rng.make((8,), torch.float64, device, kind="rand", low=-0.5, high=-0.1)
    assert torch.autograd.gradcheck(ops.soft_threshold, (x, theta.requires_grad_()))
