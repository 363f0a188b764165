"""torch.compile(fullgraph=True) over every op, forward and backward, against eager.

Most tests use the aot_eager backend (traces through the fake kernels and the
registered autograd, no code generation); two use the default inductor backend."""
import pytest
import torch

from sdu_ext import nn as sdu_nn
from sdu_ext import ops
from sdu_testing import DEVICES, FORMS, check

DT = torch.float32


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _codes(rng, shape, device):
    y = rng.make(shape, DT, device)
    return y.masked_fill(y.abs() < 0.5, 0.0)


def _pos(rng, shape, device, low=0.1, high=0.8):
    return rng.make(shape, DT, device, kind="rand", low=low, high=high)


def _weighted_sum(outs, weights):
    """sum_i <outs[i], weights[i]> over the differentiable outputs."""
    assert len(outs) == len(weights)
    return sum((o * w).sum() for o, w in zip(outs, weights) if o.requires_grad)


def run_eager_and_compiled(rng, fn, inputs, backend="aot_eager", dynamic=False):
    """fn(*inputs) eager and compiled; returns after comparing outputs and gradients."""
    diff = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]

    def run(f):
        leaves = [t.detach().clone().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t
                  for t in inputs]
        out = f(*leaves)
        outs = out if isinstance(out, tuple) else (out,)
        grads = []
        if diff:
            loss = _weighted_sum(outs, weights)
            req = [t for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad]
            grads = torch.autograd.grad(loss, req)
        return outs, grads

    probe = fn(*[t.detach() if isinstance(t, torch.Tensor) else t for t in inputs])
    probe = probe if isinstance(probe, tuple) else (probe,)
    weights = [rng.randn(*o.shape).to(dtype=o.dtype, device=o.device) for o in probe]

    eager_out, eager_grads = run(fn)
    compiled = torch.compile(fn, fullgraph=True, backend=backend, dynamic=dynamic)
    comp_out, comp_grads = run(compiled)
    assert len(eager_out) == len(comp_out)
    for i, (a, e) in enumerate(zip(comp_out, eager_out)):
        assert a.shape == e.shape and a.dtype == e.dtype
        check(a, e.double(), DT, rng, f"{backend} output {i}", equal_nan=True)
    assert len(comp_grads) == len(eager_grads) == len(diff)
    for i, (a, e) in enumerate(zip(comp_grads, eager_grads)):
        check(a, e.double(), DT, rng, f"{backend} grad {i}")
    return compiled


# id -> builder(rng, device) -> (fn, inputs)
CASES = {
    "soft_threshold-python-theta": lambda r, d: (
        lambda x: ops.soft_threshold(x, 0.3), [r.make((4, 33), DT, d).requires_grad_()]),
    "soft_threshold-row-theta": lambda r, d: (
        ops.soft_threshold, [r.make((4, 33), DT, d).requires_grad_(), _pos(r, (33,), d).requires_grad_()]),
    "soft_threshold-col-theta": lambda r, d: (
        ops.soft_threshold, [r.make((4, 33), DT, d).requires_grad_(), _pos(r, (4, 1), d).requires_grad_()]),
    "lista_layer": lambda r, d: (
        ops.lista_layer, [r.make((3, 6), DT, d).requires_grad_(), r.make((3, 5), DT, d).requires_grad_(),
                          (r.make((6, 6), DT, d) / 3).requires_grad_(), (r.make((6, 5), DT, d) / 3).requires_grad_(),
                          _pos(r, (6,), d).requires_grad_()]),
    "residual_norms-ref": lambda r, d: (
        ops.residual_norms, [r.make((4, 3, 7), DT, d).requires_grad_(), r.make((3, 7), DT, d).requires_grad_()]),
    "residual_norms-noref": lambda r, d: (
        lambda it: ops.residual_norms(it), [r.make((4, 3, 7), DT, d).requires_grad_()]),
    "min_norm_subgradient": lambda r, d: (
        lambda g, y: ops.min_norm_subgradient(g, y, 0.3), [r.make((4, 33), DT, d).requires_grad_(), _codes(r, (4, 33), d)]),
    "nn.SoftThreshold": lambda r, d: (
        sdu_nn.SoftThreshold(33, init=0.2, device=d), [r.make((4, 33), DT, d).requires_grad_()]),
    "nn.LISTALayer": lambda r, d: (
        sdu_nn.LISTALayer(6, 5, theta_init=0.05, device=d), [r.make((3, 6), DT, d).requires_grad_(),
                                                             r.make((3, 5), DT, d)]),
}
for _f in FORMS:
    CASES[f"descent_violations-{_f}"] = lambda r, d, f=_f: (
        lambda n: ops.descent_violations(n, 0.05, f), [_pos(r, (4, 9), d, 0.1, 2.0).requires_grad_()])
    CASES[f"descent_constraints-{_f}-ref"] = lambda r, d, f=_f: (
        lambda it, ref: ops.descent_constraints(it, ref, 0.05, f, return_norms=True),
        [r.make((4, 5, 7), DT, d).requires_grad_(), r.make((5, 7), DT, d).requires_grad_()])
    CASES[f"descent_constraints-{_f}-noref"] = lambda r, d, f=_f: (
        lambda it: ops.descent_constraints(it, None, 0.2, f),
        [r.make((4, 5, 7), DT, d).requires_grad_()])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(CASES))
def test_aot_eager_fullgraph_matches_eager(rng, device, case):
    fn, inputs = CASES[case](rng, device)
    run_eager_and_compiled(rng, fn, inputs)


@pytest.mark.parametrize("device", DEVICES)
def test_dynamic_shapes(rng, device):
    def fn(x, theta, it):
        v, _, n = ops.descent_constraints(it, None, 0.05, "ratio_of_means", return_norms=True)
        return ops.soft_threshold(x, theta), v, n

    compiled = None
    for B in (3, 5, 9):
        inputs = [rng.make((B, 33), DT, device).requires_grad_(), _pos(rng, (33,), device).requires_grad_(),
                  rng.make((4, B, 7), DT, device).requires_grad_()]
        compiled = run_eager_and_compiled(rng, fn, inputs, dynamic=True)
    assert compiled is not None


# ------------------------------------------------------------------ in place under compile

@pytest.mark.parametrize("device", DEVICES)
def test_inplace_on_internal_buffer_without_grad(rng, device):
    x = rng.make((4, 33), DT, device)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def fn(x):
        y = x * 2
        ops.soft_threshold_(y, 0.3)
        return y

    expected = ops.soft_threshold(x * 2, 0.3)
    check(fn(x), expected.double(), DT, rng, "compiled soft_threshold_ on a temporary")


@pytest.mark.parametrize("device", DEVICES)
def test_inplace_on_graph_input_without_grad(rng, device):
    x = rng.make((4, 33), DT, device)
    expected = ops.soft_threshold(x, 0.3)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def fn(x):
        return ops.soft_threshold_(x, 0.3)

    with torch.no_grad():
        out = fn(x)
    check(x, expected.double(), DT, rng, "graph input thresholded in place")
    check(out, expected.double(), DT, rng, "returned value")


# ------------------------------------------------------------------ inductor (kept to two compiles)

@pytest.mark.parametrize("device", DEVICES)
def test_inductor_soft_threshold_and_descent_constraints(rng, device):
    def fn(x, theta, it, ref):
        y = ops.soft_threshold(x, theta)
        v, _, n = ops.descent_constraints(it, ref, 0.05, "mean_ratio", return_norms=True)
        return y * 2 + 1, v, n.sqrt()

    inputs = [rng.make((4, 33), DT, device).requires_grad_(), _pos(rng, (33,), device).requires_grad_(),
              rng.make((4, 6, 9), DT, device).requires_grad_(), rng.make((6, 9), DT, device).requires_grad_()]
    run_eager_and_compiled(rng, fn, inputs, backend="inductor")


@pytest.mark.parametrize("device", DEVICES)
def test_inductor_backward_with_transposed_theta(rng, device):
    # theta is a transposed (non-contiguous) full-shape tensor, e.g. a view of a
    # parameter; the backward's theta gradient must have the strides the fake kernel
    # announces.
    base = _pos(rng, (33, 4), device).requires_grad_()

    def fn(x, base):
        return ops.soft_threshold(x, base.T) * 3

    run_eager_and_compiled(rng, fn, [rng.make((4, 33), DT, device).requires_grad_(), base],
                           backend="inductor")
