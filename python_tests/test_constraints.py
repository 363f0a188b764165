"""residual_norms, descent_violations and the fused descent_constraints: values and
gradients against the float64 reference (every form, with/without reference, every
dtype, odd sizes, layouts, empty batches), the division floor, and gradchecks."""
import pytest
import torch

from sdu_ext import ops
from sdu_ext import reference as R
from sdu_testing import DEVICES, DTYPES, FORMS, assert_finite, check, up, up_grad

SIZES = [1, 7, 33, 1031]


def values_scale(norms64, eps, form):
    """Magnitude of the terms whose difference is a constraint value (before cancellation)."""
    keep = 1.0 - eps
    n = norms64.detach()
    prev, cur = n[:-1], n[1:]
    if n.shape[1] == 0 or n.shape[0] < 2:
        return 0.0
    if form == "difference":
        mag = cur.abs().mean(1) + keep * prev.abs().mean(1)
    elif form == "mean_ratio":
        mag = (cur / prev.clamp_min(R.RATIO_FLOOR)).abs().mean(1) + keep
    else:
        mag = cur.mean(1).abs() / prev.mean(1).clamp_min(R.RATIO_FLOOR) + keep
    return float(mag.max())


def per_sample_scale(norms64, eps, form):
    n = norms64.detach()
    if n.shape[1] == 0 or n.shape[0] < 2:
        return 0.0
    prev, cur = n[:-1], n[1:]
    if form == "difference":
        return float((cur.abs() + (1 - eps) * prev.abs()).max())
    return float((cur / prev.clamp_min(R.RATIO_FLOOR)).abs().max() + 1)


def make_iterates(rng, L1, B, m, dtype, device, layout="contiguous", with_ref=True):
    """(iterates, reference) whose residual norms lie in [0.5, 2] (before rounding to dtype).

    Ratios of residuals are then in [1/4, 4], so every value and gradient of the ratio
    forms is representable in float16; zero and tiny residuals are tested separately.
    """
    it = rng.make((L1, B, m), torch.float64, "cpu", layout=layout)
    ref = rng.make((B, m), torch.float64) if with_ref else torch.zeros(B, m, dtype=torch.float64)
    d = it - ref
    radius = rng.rand(L1, B, 1, low=0.5, high=2.0)
    vals = ref + d / d.norm(dim=-1, keepdim=True) * radius
    out = torch.empty_strided(it.shape, it.stride(), dtype=dtype, device=device).copy_(vals)
    return out, (ref.to(dtype=dtype, device=device) if with_ref else None)


# ------------------------------------------------------------------ residual_norms

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", SIZES)
@pytest.mark.parametrize("with_ref", [False, True], ids=["noref", "ref"])
@pytest.mark.parametrize("layout", ["contiguous", "permuted", "transposed", "strided"])
def test_residual_norms_matches_reference(rng, device, dtype, m, with_ref, layout):
    L1, B = 4, 5
    it = rng.make((L1, B, m), dtype, device, layout=layout).requires_grad_()
    ref = rng.make((B, m), dtype, device, layout="strided" if layout != "contiguous" else "contiguous")
    ref = ref.requires_grad_() if with_ref else None
    norms = ops.residual_norms(it, ref)
    assert norms.shape == (L1, B) and norms.dtype == dtype and norms.device == it.device

    it64 = up_grad(it)
    ref64 = up_grad(ref) if with_ref else None
    n64 = R.residual_norms(it64, ref64)
    check(norms, n64, dtype, rng, "norms")

    g = rng.randn(L1, B)
    norms.backward(g.to(dtype=dtype, device=it.device))
    leaves = [it64] + ([ref64] if with_ref else [])
    grads = torch.autograd.grad(n64, leaves, g)
    assert it.grad.shape == it.shape and it.grad.dtype == dtype
    check(it.grad, grads[0], dtype, rng, "grad iterates")
    if with_ref:
        diff = (it64 - ref64).detach()
        nz = n64.detach()
        inv = torch.where(nz > 0, 1 / nz, torch.zeros_like(nz))  # zero norms give zero gradient
        mag = ((g.abs() * inv).unsqueeze(-1) * diff.abs()).sum(0)
        check(ref.grad, grads[1], dtype, rng, "grad reference", scale=float(mag.max()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_ref", [False, True], ids=["noref", "ref"])
def test_residual_norms_large_parallel_path(rng, device, dtype, with_ref):
    L1, B, m = 3, 64, 1031
    it = rng.make((L1, B, m), dtype, device).requires_grad_()
    ref = rng.make((B, m), dtype, device).requires_grad_() if with_ref else None
    norms = ops.residual_norms(it, ref)
    it64 = up_grad(it)
    ref64 = up_grad(ref) if with_ref else None
    n64 = R.residual_norms(it64, ref64)
    check(norms, n64, dtype, rng, "norms (large)")
    g = rng.randn(L1, B)
    norms.backward(g.to(dtype=dtype, device=it.device))
    grads = torch.autograd.grad(n64, [it64] + ([ref64] if with_ref else []), g)
    check(it.grad, grads[0], dtype, rng, "grad iterates (large)")
    if with_ref:
        check(ref.grad, grads[1], dtype, rng, "grad reference (large)", scale=float(grads[1].abs().max()) * 4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 0, 5), (3, 4, 0), (1, 4, 5), (0 + 1, 0, 0)])
@pytest.mark.parametrize("with_ref", [False, True], ids=["noref", "ref"])
def test_residual_norms_empty_and_degenerate(rng, device, dtype, shape, with_ref):
    L1, B, m = shape
    it = rng.make(shape, dtype, device).requires_grad_()
    ref = rng.make((B, m), dtype, device).requires_grad_() if with_ref else None
    norms = ops.residual_norms(it, ref)
    assert norms.shape == (L1, B)
    n64 = R.residual_norms(up(it), up(ref) if with_ref else None)
    check(norms, n64, dtype, rng, "norms")
    norms.sum().backward()
    assert it.grad.shape == shape
    assert_finite(it.grad, "grad iterates", rng)
    if m == 0:
        assert (norms == 0).all()
    if with_ref:
        assert ref.grad.shape == (B, m)
        assert_finite(ref.grad, "grad reference", rng)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_residual_norms_zero_residual_has_zero_gradient(rng, device, dtype):
    it = rng.make((3, 4, 7), dtype, device)
    ref = rng.make((4, 7), dtype, device)
    with torch.no_grad():
        it[1] = ref          # layer 1 equals the reference: norm 0
        it[2, 0] = ref[0]    # one sample of layer 2 too
    it.requires_grad_()
    ref.requires_grad_()
    norms = ops.residual_norms(it, ref)
    assert (norms[1] == 0).all() and norms[2, 0] == 0
    norms.sum().backward()
    assert_finite(it.grad, "grad iterates", rng)
    assert_finite(ref.grad, "grad reference", rng)
    assert (it.grad[1] == 0).all() and (it.grad[2, 0] == 0).all()


# ------------------------------------------------------------------ descent_violations

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("B", SIZES)
@pytest.mark.parametrize("eps", [0.0, 0.05, 0.5])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_descent_violations_matches_reference(rng, device, dtype, form, B, eps, layout):
    L1 = 4
    norms = rng.make((L1, B), dtype, device, layout=layout, kind="rand", low=0.1, high=2.0)
    norms.requires_grad_()
    values, per_sample = ops.descent_violations(norms, eps, form)
    assert values.shape == (L1 - 1,) and per_sample.shape == (L1 - 1, B)
    assert values.dtype == dtype and per_sample.dtype == dtype
    assert not per_sample.requires_grad, "per_sample is documented as non-differentiable"

    n64 = up_grad(norms)
    v64, p64 = R.descent_violations(n64, eps, form)
    check(values, v64, dtype, rng, f"{form} values", scale=values_scale(n64, eps, form))
    check(per_sample, p64, dtype, rng, f"{form} per-sample", scale=per_sample_scale(n64, eps, form))

    g = rng.randn(L1 - 1)
    values.backward(g.to(dtype=dtype, device=norms.device))
    (g64,) = torch.autograd.grad(v64, n64, g)
    assert norms.grad.shape == norms.shape and norms.grad.dtype == dtype
    check(norms.grad, g64, dtype, rng, f"{form} grad norms")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", FORMS)
def test_descent_violations_empty_batch_is_nan(rng, device, dtype, form):
    norms = torch.empty(4, 0, dtype=dtype, device=device, requires_grad=True)
    values, per_sample = ops.descent_violations(norms, 0.05, form)
    assert values.shape == (3,) and per_sample.shape == (3, 0)
    assert torch.isnan(values).all(), f"empty batch should give NaN like torch.mean, got {values}"
    values.sum().backward()
    assert norms.grad.shape == (4, 0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", FORMS)
def test_descent_violations_single_layer_gives_no_constraints(rng, device, dtype, form):
    norms = rng.make((1, 6), dtype, device, kind="rand", low=0.1, high=1.0).requires_grad_()
    values, per_sample = ops.descent_violations(norms, 0.05, form)
    assert values.shape == (0,) and per_sample.shape == (0, 6)
    (values.sum() + norms.sum()).backward()
    assert torch.equal(norms.grad, torch.ones_like(norms))


ZERO_PATTERNS = {
    # (L+1, B) residuals with zeros where a ratio would divide by zero or 0/0
    "all_zero": [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
    "current_zero": [[1.0, 0.5, 2.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
    "some_zero": [[1.0, 0.0, 2.0], [0.0, 0.0, 0.5], [0.25, 0.0, 0.0]],
}
ZERO_PREV_PATTERNS = {
    # a zero previous residual followed by a non-zero one: the floor makes the ratio large
    # (1e12 * r) but it must stay finite
    "previous_zero": [[0.0, 0.0, 0.0], [1.0, 0.5, 2.0], [0.5, 0.25, 1.0]],
    "layer_zero_then_up": [[1.0, 0.5, 2.0], [0.0, 0.0, 0.0], [0.5, 0.1, 1.0]],
}


def _zero_residual_case(rng, device, dtype, form, rows):
    norms = torch.tensor(rows, dtype=dtype, device=device, requires_grad=True)
    values, per_sample = ops.descent_violations(norms, 0.05, form)
    assert_finite(values, f"{form} values", rng)
    assert_finite(per_sample, f"{form} per-sample", rng)
    g = torch.ones(values.shape, dtype=dtype, device=device)
    values.backward(g)
    assert_finite(norms.grad, f"{form} grad", rng)
    n64 = up_grad(norms)
    v64, p64 = R.descent_violations(n64, 0.05, form)
    check(values, v64, dtype, rng, f"{form} values")
    check(per_sample, p64, dtype, rng, f"{form} per-sample")
    (gr,) = torch.autograd.grad(v64, n64, g.double().cpu())
    check(norms.grad, gr, dtype, rng, f"{form} grad")


# float16 tops out at 65504: a ratio over the 1e-12 floor cannot be represented
# there (documented in ops.descent_violations), so it is checked separately below.
FINITE_FLOOR_DTYPES = [d for d in DTYPES if d.values[0] != torch.float16]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FINITE_FLOOR_DTYPES)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("pattern", list(ZERO_PATTERNS))
def test_descent_violations_zero_residuals_are_finite(rng, device, dtype, form, pattern):
    _zero_residual_case(rng, device, dtype, form, ZERO_PATTERNS[pattern])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FINITE_FLOOR_DTYPES)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("pattern", list(ZERO_PREV_PATTERNS))
def test_descent_violations_zero_previous_residual_is_finite(rng, device, dtype, form, pattern):
    _zero_residual_case(rng, device, dtype, form, ZERO_PREV_PATTERNS[pattern])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("form", ["mean_ratio", "ratio_of_means"])
def test_float16_ratio_over_floor_saturates_to_inf_not_nan(device, form):
    norms = torch.tensor([[0.0, 1.0], [1.0, 1.0]], dtype=torch.float16, device=device)
    values, per_sample = ops.descent_violations(norms, 0.05, form)
    assert torch.isposinf(per_sample[0, 0]), per_sample
    assert torch.isfinite(per_sample[0, 1]) and abs(float(per_sample[0, 1]) - 0.05) < 1e-3
    assert not torch.isnan(values).any(), values
    if form == "mean_ratio":  # the mean of the per-sample ratios overflows too
        assert torch.isposinf(values[0]), values
    else:  # mean 1 over mean 0.5: finite
        assert abs(float(values[0]) - 1.05) < 1e-2, values


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("form", FORMS)
def test_per_sample_sign_is_descent_indicator(rng, device, form):
    # With eps = 0, per-sample value < 0 exactly when the residual went down.
    norms = rng.make((5, 64), torch.float64, device, kind="rand", low=0.1, high=2.0)
    _, per_sample = ops.descent_violations(norms, 0.0, form)
    descended = norms[1:] < norms[:-1]
    assert torch.equal(per_sample < 0, descended), f"[{rng!r}]"


# ------------------------------------------------------------------ descent_constraints

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("with_ref", [False, True], ids=["noref", "ref"])
@pytest.mark.parametrize("m", [1, 33, 1031])
@pytest.mark.parametrize("grad_through", ["values", "norms", "both"])
def test_descent_constraints_matches_reference(rng, device, dtype, form, with_ref, m, grad_through):
    L1, B, eps = 4, 7, 0.05
    layout = "permuted" if m == 33 else "contiguous"
    it, ref = make_iterates(rng, L1, B, m, dtype, device, layout, with_ref)
    it.requires_grad_()
    if with_ref:
        ref.requires_grad_()
    values, per_sample, norms = ops.descent_constraints(it, ref, eps, form, return_norms=True)
    assert values.shape == (L1 - 1,) and per_sample.shape == (L1 - 1, B) and norms.shape == (L1, B)
    assert values.dtype == per_sample.dtype == norms.dtype == dtype
    assert not per_sample.requires_grad

    it64 = up_grad(it)
    ref64 = up_grad(ref) if with_ref else None
    n64 = R.residual_norms(it64, ref64)
    v64, p64 = R.descent_violations(n64, eps, form)
    v64b, p64b = R.descent_constraints(it64, ref64, eps, form)
    torch.testing.assert_close(v64, v64b, rtol=0, atol=0)  # reference composes the same way
    check(norms, n64, dtype, rng, "norms")
    check(values, v64, dtype, rng, "values", scale=values_scale(n64, eps, form))
    check(per_sample, p64, dtype, rng, "per-sample", scale=per_sample_scale(n64, eps, form))

    gv = rng.randn(L1 - 1) if grad_through in ("values", "both") else torch.zeros(L1 - 1, dtype=torch.float64)
    gn = rng.randn(L1, B) if grad_through in ("norms", "both") else torch.zeros(L1, B, dtype=torch.float64)
    to = dict(dtype=dtype, device=it.device)
    if grad_through == "values":
        values.backward(gv.to(**to))
    elif grad_through == "norms":
        norms.backward(gn.to(**to))
    else:
        torch.autograd.backward([values, norms], [gv.to(**to), gn.to(**to)])
    leaves = [it64] + ([ref64] if with_ref else [])
    grads = torch.autograd.grad([v64, n64], leaves, [gv, gn], retain_graph=True)
    # magnitude of the gradient terms (before any cancellation between them)
    (dv,) = torch.autograd.grad(v64, n64, gv, retain_graph=True)
    diff = (it64 - ref64 if with_ref else it64).detach()
    nz = n64.detach()
    inv = torch.where(nz > 0, 1 / nz, torch.zeros_like(nz))  # zero norms give zero gradient
    mag = ((dv.abs() + gn.abs()) * inv).unsqueeze(-1) * diff.abs()
    assert it.grad.shape == it.shape and it.grad.dtype == dtype
    check(it.grad, grads[0], dtype, rng, "grad iterates", scale=float(mag.max()))
    if with_ref:
        check(ref.grad, grads[1], dtype, rng, "grad reference", scale=float(mag.sum(0).max()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("with_ref", [False, True], ids=["noref", "ref"])
def test_descent_constraints_equals_composition(rng, device, dtype, form, with_ref):
    it, ref = make_iterates(rng, 5, 9, 33, dtype, device, with_ref=with_ref)
    values, per_sample = ops.descent_constraints(it, ref, 0.1, form)
    norms = ops.residual_norms(it, ref)
    v2, p2 = ops.descent_violations(norms, 0.1, form)
    n64 = up(norms)
    check(values, v2, dtype, rng, "fused vs composed values", scale=values_scale(n64, 0.1, form))
    check(per_sample, p2, dtype, rng, "fused vs composed per-sample",
          scale=per_sample_scale(n64, 0.1, form))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("shape", [(3, 0, 5), (3, 4, 0), (1, 4, 5)])
def test_descent_constraints_empty_and_degenerate(rng, device, dtype, form, shape):
    L1, B, m = shape
    it = rng.make(shape, dtype, device).requires_grad_()
    values, per_sample, norms = ops.descent_constraints(it, None, 0.05, form, return_norms=True)
    assert values.shape == (L1 - 1,) and per_sample.shape == (L1 - 1, B) and norms.shape == (L1, B)
    v64, p64 = R.descent_constraints(up(it), None, 0.05, form)
    check(values, v64, dtype, rng, "values", equal_nan=True)
    if B == 0:
        assert torch.isnan(values).all()
    else:
        assert_finite(values, "values", rng)  # m == 0: all residuals are 0, floored
    (values.nan_to_num().sum() + norms.sum()).backward()
    assert it.grad.shape == shape
    assert_finite(it.grad, "grad iterates", rng)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", FORMS)
def test_descent_constraints_iterates_at_reference_are_finite(rng, device, dtype, form):
    ref = rng.make((6, 17), dtype, device)
    it = torch.stack([ref] * 4).requires_grad_()  # every residual is exactly 0
    values, per_sample, norms = ops.descent_constraints(it, ref, 0.05, form, return_norms=True)
    assert (norms == 0).all()
    assert_finite(values, "values", rng)
    assert_finite(per_sample, "per-sample", rng)
    values.sum().backward()
    assert_finite(it.grad, "grad iterates", rng)
    expected = R.descent_constraints(up(it), up(ref), 0.05, form)[0]
    check(values, expected, dtype, rng, "values at the reference")


# ------------------------------------------------------------------ gradcheck (float64)

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_ref", [False, True], ids=["noref", "ref"])
def test_gradcheck_residual_norms(rng, device, with_ref):
    it = rng.make((3, 4, 5), torch.float64, device).requires_grad_()
    ref = rng.make((4, 5), torch.float64, device).requires_grad_() if with_ref else None
    assert torch.autograd.gradcheck(ops.residual_norms, (it, ref))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("eps", [0.0, 0.05, 0.3])
def test_gradcheck_descent_violations(rng, device, form, eps):
    norms = rng.make((4, 5), torch.float64, device, kind="rand", low=0.2, high=2.0).requires_grad_()
    assert torch.autograd.gradcheck(lambda n: ops.descent_violations(n, eps, form)[0], (norms,))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("with_ref", [False, True, "fixed"], ids=["noref", "ref", "fixedref"])
@pytest.mark.parametrize("return_norms", [False, True], ids=["values", "values+norms"])
def test_gradcheck_descent_constraints(rng, device, form, with_ref, return_norms):
    """fixedref: a reference that does not require grad (the trainer's y*), whose gradient
    the backward skips (reference_grad=False)."""
    it = rng.make((4, 3, 5), torch.float64, device).requires_grad_()
    ref = rng.make((3, 5), torch.float64, device).requires_grad_(with_ref is True) if with_ref else None

    def fn(it, ref):
        out = ops.descent_constraints(it, ref, 0.05, form, return_norms=return_norms)
        assert len(out) == (3 if return_norms else 2)
        return (out[0], out[2]) if return_norms else out[0]

    assert torch.autograd.gradcheck(fn, (it, ref))
    assert torch.autograd.gradgradcheck(fn, (it, ref))
