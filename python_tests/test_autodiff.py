"""Autodiff of every op beyond first-order backward: double backward (gradgradcheck and
against the float64 reference), forward mode (torch.func.jvp, torch.autograd.forward_ad,
finite differences), torch.func grad/jacrev/jacfwd/hessian/vmap against the reference
composition, functional_call on the nn modules, ratio derivatives at extreme norms,
in-place overlap errors, and errors (never zeros) from the raw ops where a transform is
not supported."""
import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.utils._python_dispatch import TorchDispatchMode

from sdu_ext import nn as sdu_nn
from sdu_ext import ops, reference
from sdu_testing import DEVICES, DTYPES, FORMS, TOL, check, up

F64 = torch.float64


def _away(rng, x, theta, margin):
    """x (float64) with every entry at least `margin` from the kink |x| == theta: the entries
    within `margin` of it are redrawn from `rng` (standard normal) until none is.

    Redrawing keeps the draw normal away from the kink, so both sides of it stay populated
    (entries in the dead zone |x| < theta catch a backward that forgets to mask them). A
    shift instead of a redraw (x +- 3 * margin once, also off x == 0) put bfloat16 entries
    from near 0 onto the kink (0.3 into theta's range [0.1, 0.5]): x rounded to theta
    exactly in ~1% of seeds, where the op's derivative 0 and the reference clamp's 1 are
    both valid subgradients and the comparison failed. x == 0 is no kink: theta > 0 puts it
    inside the flat dead zone."""
    theta = torch.as_tensor(theta, dtype=x.dtype).expand_as(x)
    while True:
        near = (x.abs() - theta).abs() < margin
        if not near.any():
            return x
        x = torch.where(near, rng.randn(*x.shape), x)


def _margin(dtype):
    """Distance from a kink, large against the dtype's rounding: rounding x and theta (both
    < 0.6 near the kink |x| == theta <= 0.5) to nearest moves each by at most
    0.6 * 2**-p (p = 8 significand bits in bfloat16: 2.3e-3; p = 11 in float16: 2.9e-4),
    so an entry `margin` off the kink stays on its side of it after rounding (bfloat16:
    0.1 > 20 * 4.7e-3). float64 and float32 keep gradcheck's finite differences (eps 1e-6)
    on one side."""
    return {torch.float64: 1e-3, torch.float32: 1e-2, torch.float16: 5e-2, torch.bfloat16: 1e-1}[dtype]


def _lista_inputs(rng, dtype, device):
    y, xs = rng.make((3, 5)), rng.make((3, 4))
    W1, W2 = rng.make((5, 5)) / 2, rng.make((5, 4)) / 2
    z = y @ W1.T + xs @ W2.T
    # one threshold per column, in the middle of the widest gap between the column's |z|
    # values (and 0), so low-precision rounding of z cannot cross a kink
    a = torch.cat([torch.zeros(1, z.shape[1], dtype=z.dtype), z.abs()]).sort(dim=0).values
    i = (a[1:] - a[:-1]).argmax(dim=0, keepdim=True)
    theta = ((a.gather(0, i) + a.gather(0, i + 1)) / 2).squeeze(0)
    return [t.to(dtype=dtype, device=device) for t in (y, xs, W1, W2, theta)]


def _st_inputs(rng, dtype, device):
    theta = rng.rand(7, low=0.1, high=0.5)
    x = _away(rng, rng.make((4, 7)), theta, _margin(dtype))
    return [x.to(dtype=dtype, device=device), theta.to(dtype=dtype, device=device)]


def _mns_inputs(rng, dtype, device):
    y = rng.make((4, 7))
    y = y.masked_fill(y.abs() < 0.5, 0.0)
    g = _away(rng, rng.make((4, 7)), 0.3, _margin(dtype))
    return [g.to(dtype=dtype, device=device), y.to(dtype=dtype, device=device)]


def _values_and_norms(out):
    return (out[0], out[2]) if len(out) == 3 else (out[0],)


# id -> (public fn, reference fn, inputs builder, indices of the differentiable inputs).
# Both functions return a tuple of the differentiable outputs.
OPS = {
    "soft_threshold": (
        lambda x, t: (ops.soft_threshold(x, t),),
        lambda x, t: (reference.soft_threshold(x, t),),
        _st_inputs, (0, 1)),
    "soft_threshold_": (
        lambda x, t: (ops.soft_threshold_(x * 1, t),),
        lambda x, t: (reference.soft_threshold(x, t),),
        _st_inputs, (0, 1)),
    "lista_layer": (
        lambda *a: (ops.lista_layer(*a),),
        lambda *a: (reference.lista_layer(*a),),
        _lista_inputs, (0, 1, 2, 3, 4)),
    "residual_norms-ref": (
        lambda it, ref: (ops.residual_norms(it, ref),),
        lambda it, ref: (reference.residual_norms(it, ref),),
        lambda r, dt, dv: [r.make((3, 4, 5), dt, dv), r.make((4, 5), dt, dv)], (0, 1)),
    # a fixed reference (the trainer's y*): no gradient for it, so the backward skips it
    "residual_norms-fixedref": (
        lambda it, ref: (ops.residual_norms(it, ref),),
        lambda it, ref: (reference.residual_norms(it, ref),),
        lambda r, dt, dv: [r.make((3, 4, 5), dt, dv), r.make((4, 5), dt, dv)], (0,)),
    "residual_norms-noref": (
        lambda it: (ops.residual_norms(it),),
        lambda it: (reference.residual_norms(it),),
        lambda r, dt, dv: [r.make((3, 4, 5), dt, dv)], (0,)),
    "min_norm_subgradient": (
        lambda g, y: (ops.min_norm_subgradient(g, y, 0.3),),
        lambda g, y: (reference.min_norm_subgradient(g, y, 0.3),),
        _mns_inputs, (0,)),
}
for _f in FORMS:
    OPS[f"descent_violations-{_f}"] = (
        lambda n, f=_f: (ops.descent_violations(n, 0.05, f)[0],),
        lambda n, f=_f: (reference.descent_violations(n, 0.05, f)[0],),
        lambda r, dt, dv: [r.make((4, 6), dt, dv, kind="rand", low=0.5, high=2.0)], (0,))
    OPS[f"descent_constraints-{_f}"] = (
        lambda it, ref, f=_f: _values_and_norms(ops.descent_constraints(it, ref, 0.05, f, return_norms=True)),
        lambda it, ref, f=_f: (reference.descent_constraints(it, ref, 0.05, f)[0],
                               reference.residual_norms(it, ref)),
        lambda r, dt, dv: [r.make((4, 3, 5), dt, dv), r.make((3, 5), dt, dv)], (0, 1))
    OPS[f"descent_constraints-{_f}-fixedref"] = OPS[f"descent_constraints-{_f}"][:3] + ((0,),)


def _leaves(inputs, diff):
    return [t.detach().clone().requires_grad_(i in diff) for i, t in enumerate(inputs)]


def _weights(rng, outs):
    return [rng.make(o.shape, F64) for o in outs]


def _loss(outs, weights):
    return sum((o.double() * w.to(o.device)).sum() for o, w in zip(outs, weights))


def _double_backward(fn, inputs, diff, weights, directions):
    """d/dinputs <grad_inputs <fn(inputs), weights>, directions> (a Hessian-vector product)."""
    leaves = _leaves(inputs, diff)
    req = [leaves[i] for i in diff]
    grads = torch.autograd.grad(_loss(fn(*leaves), weights), req, create_graph=True)
    inner = sum((g.double() * d.to(g.device)).sum() for g, d in zip(grads, directions))
    if not inner.requires_grad:  # first derivative constant in the inputs (difference form)
        return grads, [torch.zeros_like(t) for t in req]
    return grads, torch.autograd.grad(inner, req, allow_unused=True, materialize_grads=True)


def _tol(dtype):
    # second derivatives pass through a few more roundings than the first-order tests
    return {k: 4 * v for k, v in TOL[dtype].items()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(OPS))
def test_gradcheck_and_gradgradcheck_float64(rng, device, name):
    fn, _, build, diff = OPS[name]
    leaves = _leaves(build(rng, F64, device), diff)
    assert torch.autograd.gradcheck(fn, leaves)
    assert torch.autograd.gradgradcheck(fn, leaves)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(OPS))
def test_double_backward_matches_reference(rng, device, dtype, name):
    fn, ref, build, diff = OPS[name]
    inputs = build(rng, dtype, device)
    probe = ref(*[up(t) for t in inputs])
    weights = _weights(rng, probe)
    directions = [rng.make(inputs[i].shape, F64) for i in diff]
    # every derivative must come from a registered formula: a missing one warns
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grads, second = _double_backward(fn, inputs, diff, weights, directions)
    ref_grads, ref_second = _double_backward(ref, [up(t) for t in inputs], diff, weights, directions)
    for i, (a, e) in enumerate(zip(grads, ref_grads)):
        check(a, e, dtype, rng, f"{name} first derivative {i}", tol=_tol(dtype))
    for i, (a, e) in enumerate(zip(second, ref_second)):
        scale = max(float(e.abs().max()), 1.0)
        check(a, e, dtype, rng, f"{name} second derivative {i}", scale=scale, tol=_tol(dtype))


def _partial(fn, inputs, diff):
    """fn as a function of the differentiable inputs only (the others fixed)."""
    def f(*values):
        args = list(inputs)
        for i, v in zip(diff, values):
            args[i] = v
        return fn(*args)
    return f


def _jvp_reference(ref, inputs, diff, tangents):
    cpu = [up(t) for t in inputs]
    return torch.func.jvp(_partial(ref, cpu, diff), tuple(cpu[i] for i in diff),
                          tuple(up(t) for t in tangents))[1]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(OPS))
def test_jvp_matches_reference(rng, device, dtype, name):
    fn, ref, build, diff = OPS[name]
    inputs = build(rng, dtype, device)
    tangents = [rng.make(inputs[i].shape, dtype, device) for i in diff]
    expected = _jvp_reference(ref, inputs, diff, tangents)

    # a tangent cancels in some outputs (the difference form's mean of cur - keep * prev):
    # scale by the O(1) magnitude of its terms (randn tangents), not by the smaller result,
    # as the second derivatives do (float16 seed 314: an error of 1.5e-3 on -0.038 failed
    # against a scale of 0.116)
    scales = [max(float(e.abs().max()), 1.0) for e in expected]
    _, got = torch.func.jvp(_partial(fn, inputs, diff), tuple(inputs[i] for i in diff), tuple(tangents))
    for k, (a, e) in enumerate(zip(got, expected)):
        assert a.dtype == inputs[0].dtype
        check(a, e, dtype, rng, f"{name} torch.func.jvp output {k}", scale=scales[k], tol=_tol(dtype))

    with fwAD.dual_level():
        args = list(inputs)
        for i, t in zip(diff, tangents):
            args[i] = fwAD.make_dual(inputs[i], t)
        outs = fn(*args)
        got = [fwAD.unpack_dual(o).tangent for o in outs]
    for k, (a, e) in enumerate(zip(got, expected)):
        assert a is not None, f"{name}: forward_ad gave no tangent for output {k}"
        check(a, e, dtype, rng, f"{name} forward_ad output {k}", scale=scales[k], tol=_tol(dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(OPS))
def test_jvp_matches_finite_differences(rng, device, name):
    fn, _, build, diff = OPS[name]
    inputs = build(rng, F64, device)
    tangents = [rng.make(inputs[i].shape, F64, device) for i in diff]
    h = 1e-6
    f = _partial(fn, inputs, diff)
    primals = tuple(inputs[i] for i in diff)
    plus = f(*[p + h * t for p, t in zip(primals, tangents)])
    minus = f(*[p - h * t for p, t in zip(primals, tangents)])
    fd = [(a - b) / (2 * h) for a, b in zip(plus, minus)]
    _, got = torch.func.jvp(f, primals, tuple(tangents))
    for k, (a, e) in enumerate(zip(got, fd)):
        torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-6, msg=lambda m: f"{name} output {k} [{rng!r}]: {m}")


def _scalar(fn, weights):
    return lambda *args: _loss(fn(*args), weights)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(OPS))
def test_func_grad_jacrev_jacfwd_hessian(rng, device, name):
    fn, ref, build, diff = OPS[name]
    inputs = build(rng, F64, device)
    weights = _weights(rng, ref(*[up(t) for t in inputs]))
    argnums = tuple(diff)
    cpu_inputs = [up(t) for t in inputs]
    got = torch.func.grad(_scalar(fn, weights), argnums=argnums)(*inputs)
    exp = torch.func.grad(_scalar(ref, weights), argnums=argnums)(*cpu_inputs)
    for k, (a, e) in enumerate(zip(got, exp)):
        check(a, e, F64, rng, f"{name} func.grad {k}")
    for transform in (torch.func.jacrev, torch.func.jacfwd):
        got = transform(lambda *a: fn(*a)[0], argnums=argnums)(*inputs)
        exp = transform(lambda *a: ref(*a)[0], argnums=argnums)(*cpu_inputs)
        for k, (a, e) in enumerate(zip(got, exp)):
            check(a, e, F64, rng, f"{name} {transform.__name__} {k}")
    got = torch.func.hessian(_scalar(fn, weights), argnums=argnums[0])(*inputs)
    exp = torch.func.hessian(_scalar(ref, weights), argnums=argnums[0])(*cpu_inputs)
    check(got, exp, F64, rng, f"{name} hessian", scale=max(float(exp.abs().max()), 1.0))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(OPS))
def test_vmap_uses_batching_rule_and_matches_reference(rng, device, dtype, name):
    fn, ref, build, diff = OPS[name]
    samples = [build(rng, dtype, device) for _ in range(3)]
    stacked = [torch.stack(ts) for ts in zip(*samples)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the per-sample fallback warns
        got = torch.vmap(fn)(*stacked)
        # an unbatched argument (the last one) shared by every sample
        shared = torch.vmap(fn, in_dims=(0,) * (len(stacked) - 1) + (None,))(
            *stacked[:-1], samples[0][-1]) if len(stacked) > 1 else None
    for k, a in enumerate(got):
        e = torch.stack([ref(*[up(t) for t in s])[k] for s in samples])
        check(a, e, dtype, rng, f"{name} vmap output {k}", tol=_tol(dtype))
    if shared is not None:
        for k, a in enumerate(shared):
            e = torch.stack([ref(*[up(t) for t in s[:-1]], up(samples[0][-1]))[k] for s in samples])
            check(a, e, dtype, rng, f"{name} vmap (shared last input) output {k}", tol=_tol(dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(OPS))
def test_per_sample_gradients_vmap_of_grad_and_grad_of_vmap(rng, device, name):
    fn, ref, build, diff = OPS[name]
    samples = [build(rng, F64, device) for _ in range(3)]
    stacked = [torch.stack(ts) for ts in zip(*samples)]
    weights = _weights(rng, ref(*[up(t) for t in samples[0]]))
    argnums = tuple(diff)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = torch.vmap(torch.func.grad(_scalar(fn, weights), argnums=argnums))(*stacked)
        got_outer = torch.func.grad(lambda *a: _loss(torch.vmap(fn)(*a), [w.expand(3, *w.shape) for w in weights]),
                                    argnums=argnums)(*stacked)
    for s, sample in enumerate(samples):
        exp = torch.func.grad(_scalar(ref, weights), argnums=argnums)(*[up(t) for t in sample])
        for k, e in enumerate(exp):
            check(got[k][s], e, F64, rng, f"{name} vmap(grad) sample {s} input {k}")
            check(got_outer[k][s], e, F64, rng, f"{name} grad(vmap) sample {s} input {k}")


@pytest.mark.parametrize("device", DEVICES)
def test_functional_call_grad_on_modules(rng, device):
    layer = sdu_nn.LISTALayer(5, 4, theta_init=0.05, device=device, dtype=F64)
    shrink = sdu_nn.SoftThreshold(5, init=0.1, device=device, dtype=F64)
    y, xs = rng.make((3, 5), F64, device), rng.make((3, 4), F64, device)
    params = {**{f"layer.{k}": v.detach() for k, v in layer.named_parameters()},
              **{f"shrink.{k}": v.detach() for k, v in shrink.named_parameters()}}
    model = torch.nn.ModuleDict({"layer": layer, "shrink": shrink})

    def loss(p, fn_layer, fn_shrink):
        lp = {k[6:]: v for k, v in p.items() if k.startswith("layer.")}
        sp = {k[7:]: v for k, v in p.items() if k.startswith("shrink.")}
        h = fn_layer(lp, (y, xs))
        return (fn_shrink(sp, (h,)) ** 2).sum()

    call = torch.func.functional_call
    got = torch.func.grad(loss)(params, lambda p, a: call(model["layer"], p, a),
                                lambda p, a: call(model["shrink"], p, a))

    def ref_layer(p, a):
        return reference.lista_layer(a[0], a[1], p["W1"], p["W2"], p["theta"])

    def ref_shrink(p, a):
        return reference.soft_threshold(a[0], p["theta"])

    names = {n for n, _ in layer.named_parameters()} | {n for n, _ in shrink.named_parameters()}
    assert {"W1", "W2", "theta"} <= names, names
    exp = torch.func.grad(loss)(params, ref_layer, ref_shrink)
    for k in params:
        check(got[k], exp[k], F64, rng, f"functional_call grad {k}")
    per_sample = torch.vmap(torch.func.grad(lambda p, yy, xx: (call(model["layer"], p, (yy, xx)) ** 2).sum()),
                            in_dims=(None, 0, 0))({k[6:]: v for k, v in params.items() if k.startswith("layer.")},
                                                  y.unsqueeze(1), xs.unsqueeze(1))
    assert per_sample["W1"].shape == (3, 5, 5)


# ------------------------------------------------------------------ no reference gradient

S = torch.ops.sdu


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 33, 1031])
def test_residual_norms_backward_without_reference_grad(rng, device, dtype, m):
    """reference_grad=False: the same iterates gradient, bit for bit, as with the reference
    gradient (and as the float64 reference), and an empty (0,) tensor in its place."""
    L1, B = 4, 5
    it, ref, g = rng.make((L1, B, m), dtype, device), rng.make((B, m), dtype, device), rng.make((L1, B), dtype, device)
    norms = ops.residual_norms(it, ref)
    g_it, g_ref = S.residual_norms_backward(g, it, ref, norms)
    g_it_only, empty = S.residual_norms_backward(g, it, ref, norms, False)
    assert empty.shape == (0,) and empty.dtype == dtype and empty.device == it.device
    assert g_ref.shape == (B, m)
    assert torch.equal(g_it_only, g_it), "iterates gradient changed with reference_grad=False"

    it64, ref64 = up(it).requires_grad_(), up(ref).requires_grad_()
    e_it, e_ref = torch.autograd.grad(reference.residual_norms(it64, ref64), (it64, ref64), up(g))
    mag = (up(g) / up(norms)).abs().unsqueeze(-1) * (it64 - ref64).detach().abs()
    check(g_it_only, e_it, dtype, rng, "grad iterates (reference_grad=False)", scale=float(mag.max()))
    check(g_ref, e_ref, dtype, rng, "grad reference (reference_grad=True)", scale=float(mag.sum(0).max()))
    # without a reference the flag changes nothing
    a = S.residual_norms_backward(g, it, None, ops.residual_norms(it))
    b = S.residual_norms_backward(g, it, None, ops.residual_norms(it), False)
    assert torch.equal(a[0], b[0]) and a[1].shape == b[1].shape == (0,)


class _RecordReferenceGrad(TorchDispatchMode):
    """Records the reference_grad argument of every sdu::residual_norms_backward call."""

    def __init__(self):
        super().__init__()
        self.flags = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is S.residual_norms_backward.default:
            self.flags.append(args[4] if len(args) > 4 else kwargs.get("reference_grad", True))
        return func(*args, **kwargs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["residual_norms", "descent_constraints"])
def test_backward_skips_reference_gradient_it_does_not_need(rng, device, dtype, op):
    """A reference that does not require grad is called for with reference_grad=False, and the
    iterates gradient is the same, bit for bit, as when the reference requires grad."""
    def run(it, ref):
        if op == "residual_norms":
            return ops.residual_norms(it, ref)
        values, _, norms = ops.descent_constraints(it, ref, 0.05, "mean_ratio", return_norms=True)
        return torch.cat([values, norms.flatten()])

    it, ref = rng.make((4, 5, 33), dtype, device), rng.make((5, 33), dtype, device)
    w = rng.make(run(it, ref).shape, dtype, device)
    grads = {}
    for ref_grad in (True, False):
        a, b = it.clone().requires_grad_(), ref.clone().requires_grad_(ref_grad)
        out = run(a, b)
        with _RecordReferenceGrad() as mode:
            out.backward(w)
        assert mode.flags == [ref_grad], f"residual_norms_backward called with {mode.flags}"
        assert (b.grad is not None) == ref_grad
        grads[ref_grad] = a.grad
    assert torch.equal(grads[False], grads[True])


# ------------------------------------------------------------------ extreme norms (float32)

@pytest.mark.parametrize("scale", [1e19, 3e37, 1e-30])
@pytest.mark.parametrize("form", ["mean_ratio", "ratio_of_means"])
def test_ratio_gradient_at_extreme_norms_float32(rng, form, scale):
    base = rng.rand(4, 5, low=0.5, high=2.0)
    norms = (base * scale).float()
    leaf = norms.clone().requires_grad_()
    w = rng.randn(3).float()
    values, _ = ops.descent_violations(leaf, 0.05, form)
    (values * w).sum().backward()
    ref_leaf = up(norms).requires_grad_()
    (reference.descent_violations(ref_leaf, 0.05, form)[0] * w.double()).sum().backward()
    expected = ref_leaf.grad
    assert torch.isfinite(leaf.grad).all()
    assert (leaf.grad != 0).any() or (expected == 0).all()
    # relative to each entry: a flush to zero or an overflow would be caught
    torch.testing.assert_close(leaf.grad.double(), expected, rtol=1e-5, atol=float(expected.abs().max()) * 1e-6)
    tangent = rng.randn(4, 5).float() * scale
    _, got = torch.func.jvp(lambda n: ops.descent_violations(n, 0.05, form)[0], (norms,), (tangent,))
    _, exp = torch.func.jvp(lambda n: reference.descent_violations(n, 0.05, form)[0], (up(norms),), (up(tangent),))
    torch.testing.assert_close(got.double(), exp, rtol=1e-5, atol=1e-6)


def test_issue_example_large_norms():
    r = torch.tensor([[3e19, 3e19], [2e19, 2e19]], requires_grad=True)
    v, _ = ops.descent_violations(r, 0.05, "mean_ratio")
    v.sum().backward()
    expected = torch.tensor([[-0.5 * 2e19 / 9e38] * 2, [0.5 / 3e19] * 2], dtype=F64)
    torch.testing.assert_close(r.grad.double(), expected, rtol=1e-6, atol=0)


# ------------------------------------------------------------------ in place: overlap and transforms

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ["row", "column", "same", "scalar-view"])
def test_inplace_rejects_theta_overlapping_x(rng, device, case):
    x = rng.make((4, 7), torch.float32, device)
    theta = {"row": lambda: x[0], "column": lambda: x[:, 3:4], "same": lambda: x,
             "scalar-view": lambda: x[1, 2]}[case]()
    before = x.clone()
    with pytest.raises(RuntimeError, match="theta: expected memory separate from x"):
        ops.soft_threshold_(x, theta)
    assert torch.equal(x, before)


@pytest.mark.parametrize("device", DEVICES)
def test_inplace_rejects_internally_overlapping_x(device):
    x = torch.ones(7, device=device).expand(4, 7)
    with pytest.raises(RuntimeError, match="x: expected a tensor whose elements occupy distinct memory"):
        ops.soft_threshold_(x, 0.1)


@pytest.mark.parametrize("device", DEVICES)
def test_inplace_accepts_separate_views_of_one_buffer(rng, device):
    base = rng.make((5, 7), torch.float32, device)
    x, theta = base[:4], base[4].abs()
    expected = reference.soft_threshold(up(x), up(theta))
    ops.soft_threshold_(x, theta)
    check(x, expected, torch.float32, rng, "soft_threshold_ on a view beside theta")


# ------------------------------------------------------------------ raw ops: errors, never zeros

@pytest.mark.parametrize("transform", ["grad", "jvp", "jacrev", "jacfwd"])
def test_raw_op_under_func_transform_raises_naming_op_and_transform(rng, transform):
    x = rng.make((4, 7))
    theta = torch.tensor(0.1, dtype=F64)
    f = lambda x: torch.ops.sdu.soft_threshold(x, theta)  # noqa: E731
    run = {"grad": lambda: torch.func.grad(lambda x: f(x).sum())(x),
           "jvp": lambda: torch.func.jvp(f, (x,), (x,)),
           "jacrev": lambda: torch.func.jacrev(f)(x),
           "jacfwd": lambda: torch.func.jacfwd(f)(x)}[transform]
    word = "jvp" if transform in ("jvp", "jacfwd") else "grad"
    with pytest.raises(RuntimeError, match=rf"torch\.ops\.sdu\.soft_threshold: the torch\.func {word}"):
        run()


def test_raw_ops_support_autograd_forward_ad_and_vmap(rng):
    x = rng.make((4, 7)).requires_grad_()
    theta = torch.tensor(0.1, dtype=F64)
    y = torch.ops.sdu.soft_threshold(x, theta)
    (g,) = torch.autograd.grad((y ** 2).sum(), x, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), x)
    check(h, 2.0 * (y != 0).double(), F64, rng, "raw op double backward")
    with fwAD.dual_level():
        out = torch.ops.sdu.soft_threshold(fwAD.make_dual(x.detach(), torch.ones_like(x)), theta)
        check(fwAD.unpack_dual(out).tangent, (y != 0).double(), F64, rng, "raw op forward AD")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = torch.vmap(torch.ops.sdu.soft_threshold, in_dims=(0, None))(x.detach(), theta)
    check(got, reference.soft_threshold(x.detach(), theta), F64, rng, "raw op vmap")


def test_raw_inplace_op_with_grad_raises(rng):
    x = rng.make((4, 7)).requires_grad_() * 1
    with pytest.raises(RuntimeError, match=r"torch\.ops\.sdu\.soft_threshold_: autograd"):
        torch.ops.sdu.soft_threshold_(x, torch.tensor(0.1, dtype=F64))


# ------------------------------------------------------------------ export

def test_export_public_ops(rng):
    class M(torch.nn.Module):
        def forward(self, x, theta, it, ref, y, xs, W1, W2, g):
            v, _, n = ops.descent_constraints(it, ref, 0.05, "mean_ratio", return_norms=True)
            w, _ = ops.descent_violations(n, 0.1, "ratio_of_means")
            z = ops.soft_threshold(x, theta)
            ops.soft_threshold_(z, 0.05)
            return (z, v, n, w, ops.residual_norms(it), ops.lista_layer(y, xs, W1, W2, theta[:5]),
                    ops.min_norm_subgradient(g, z, 0.3))

    f32 = torch.float32
    args = (rng.make((4, 7), f32), rng.make((7,), f32, kind="rand"), rng.make((3, 4, 5), f32),
            rng.make((4, 5), f32), rng.make((3, 5), f32), rng.make((3, 2), f32), rng.make((5, 5), f32),
            rng.make((5, 2), f32), rng.make((4, 7), f32))
    ep = torch.export.export(M(), args)
    for k, (a, e) in enumerate(zip(ep.module()(*args), M()(*args))):
        check(a, e.double(), f32, rng, f"exported program output {k}")


def test_raw_inplace_op_vmap_writes_each_sample(rng):
    x, theta = rng.make((3, 4, 5)), rng.rand(3, 5)
    expected = reference.soft_threshold(x, theta.unsqueeze(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.vmap(lambda a, t: torch.ops.sdu.soft_threshold_(a, t), out_dims=None)(x, theta)
    check(x, expected, F64, rng, "vmap of the raw in-place op")
