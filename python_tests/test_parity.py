"""CPU vs CUDA parity of every op, forward and backward (skipped without a GPU).

The CUDA result is compared with the CPU result of the same inputs under the
tolerances of sdu_testing.TOL."""
import pytest
import torch

from sdu_ext import ops
from sdu_testing import DTYPES, FORMS, HAS_CUDA, check, kink_mask, up

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device visible")]
OTHER = "cuda"  # the device compared against the CPU


def _codes(rng, shape, dtype):
    y = rng.make(shape, dtype)
    return y.masked_fill(y.abs() < 0.5, 0.0)


def _pos(rng, shape, dtype, low=0.1, high=0.8):
    return rng.make(shape, dtype, kind="rand", low=low, high=high)


def _lista_mask(inputs, dtype):
    """Zero weight where the pre-activation is within rounding of the threshold: the
    two backends' GEMMs may round it to different sides of the kink."""
    y, xs, W1, W2, theta = (up(t) for t in inputs)
    z = y @ W1.T + xs @ W2.T
    mag = float((y.abs() @ W1.abs().T + xs.abs() @ W2.abs().T).max())
    return kink_mask(z.abs() - theta, dtype, scale=max(mag, 1.0))


# id -> builder(rng, dtype) -> (fn, cpu inputs, indices of differentiable inputs, weight mask of output 0)
CASES = {
    "soft_threshold-row": lambda r, dt: (
        ops.soft_threshold, [r.make((7, 1031), dt), _pos(r, (1031,), dt)], [0, 1], None),
    "soft_threshold-0d": lambda r, dt: (
        ops.soft_threshold, [r.make((7, 1031), dt), _pos(r, (), dt)], [0, 1], None),
    "soft_threshold-col": lambda r, dt: (
        ops.soft_threshold, [r.make((7, 33), dt), _pos(r, (7, 1), dt)], [0, 1], None),
    "soft_threshold_": lambda r, dt: (
        lambda x, t: ops.soft_threshold_(x * 1, t), [r.make((7, 33), dt), _pos(r, (33,), dt)], [0, 1], None),
    "lista_layer": lambda r, dt: (
        ops.lista_layer, [r.make((5, 33), dt), r.make((5, 7), dt), r.make((33, 33), dt) / 6,
                          r.make((33, 7), dt) / 3, _pos(r, (33,), dt)], [0, 1, 2, 3, 4], _lista_mask),
    "residual_norms-ref": lambda r, dt: (
        ops.residual_norms, [r.make((4, 9, 1031), dt), r.make((9, 1031), dt)], [0, 1], None),
    "residual_norms-noref": lambda r, dt: (
        lambda it: ops.residual_norms(it), [r.make((4, 9, 33), dt)], [0], None),
    "min_norm_subgradient": lambda r, dt: (
        lambda g, y: ops.min_norm_subgradient(g, y, 0.25), [r.make((7, 1031), dt), _codes(r, (7, 1031), dt)],
        [0], None),
}
for _f in FORMS:
    CASES[f"descent_violations-{_f}"] = lambda r, dt, f=_f: (
        lambda n: ops.descent_violations(n, 0.05, f), [_pos(r, (5, 1031), dt, 0.1, 2.0)], [0], None)
    CASES[f"descent_constraints-{_f}"] = lambda r, dt, f=_f: (
        lambda it, ref: ops.descent_constraints(it, ref, 0.05, f, return_norms=True),
        [r.make((5, 33, 65), dt), r.make((33, 65), dt)], [0, 1], None)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_cpu_cuda_parity(rng, dtype, case):
    fn, inputs, diff, mask = CASES[case](rng, dtype)
    probe = fn(*[t.clone() for t in inputs])
    probe = probe if isinstance(probe, tuple) else (probe,)
    weights = [rng.randn(*o.shape) for o in probe]
    if mask is not None:
        weights[0] = weights[0] * mask(inputs, dtype)

    def run(device):
        leaves = [t.detach().to(device).requires_grad_(i in diff) for i, t in enumerate(inputs)]
        out = fn(*leaves)
        outs = out if isinstance(out, tuple) else (out,)
        loss = sum((o * w.to(dtype=o.dtype, device=device)).sum() for o, w in zip(outs, weights)
                   if o.requires_grad)
        grads = torch.autograd.grad(loss, [leaves[i] for i in diff])
        return outs, grads

    cpu_out, cpu_grads = run("cpu")
    dev_out, dev_grads = run(OTHER)
    assert len(dev_out) == len(cpu_out) and len(dev_grads) == len(cpu_grads) == len(diff)
    for i, (g, c) in enumerate(zip(dev_out, cpu_out)):
        assert g.device.type == OTHER and g.dtype == c.dtype and g.shape == c.shape
        check(g, up(c), dtype, rng, f"{case} output {i}", equal_nan=True)
    for i, (g, c) in enumerate(zip(dev_grads, cpu_grads)):
        assert g.device.type == OTHER and g.dtype == c.dtype and g.shape == c.shape
        check(g, up(c), dtype, rng, f"{case} grad {i}")
