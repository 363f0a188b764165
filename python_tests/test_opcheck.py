"""torch.library.opcheck on every raw sdu op (schema, autograd registration, fake
tensor and AOT-dispatch checks), with requires_grad inputs where the op is
differentiable (the backward ops included: they are differentiable too) so the
autograd-registration and AOT backward checks run."""
import pytest
import torch

from sdu_testing import DEVICES, DTYPES, FORMS

S = torch.ops.sdu


def _codes(rng, shape, dtype, device):
    y = rng.make(shape, dtype, device)
    return y.masked_fill(y.abs() < 0.5, 0.0)


def _pos(rng, shape, dtype, device):
    return rng.make(shape, dtype, device, kind="rand", low=0.1, high=2.0)


def _rg(t):
    return t.requires_grad_()


# id -> (op, builder(rng, dtype, device) -> args)
CASES = {
    # ---- soft_threshold
    "soft_threshold-0d": (S.soft_threshold.default, lambda r, dt, dv: (
        _rg(r.make((4, 7), dt, dv)), _rg(_pos(r, (), dt, dv)))),
    "soft_threshold-row": (S.soft_threshold.default, lambda r, dt, dv: (
        _rg(r.make((4, 7), dt, dv)), _rg(_pos(r, (7,), dt, dv)))),
    "soft_threshold-col": (S.soft_threshold.default, lambda r, dt, dv: (
        _rg(r.make((4, 7), dt, dv)), _rg(_pos(r, (4, 1), dt, dv)))),
    "soft_threshold-full": (S.soft_threshold.default, lambda r, dt, dv: (
        _rg(r.make((4, 33), dt, dv)), _rg(_pos(r, (4, 33), dt, dv)))),
    "soft_threshold-3d-mid": (S.soft_threshold.default, lambda r, dt, dv: (
        _rg(r.make((2, 3, 5), dt, dv)), _rg(_pos(r, (3, 1), dt, dv)))),
    "soft_threshold-noncontig": (S.soft_threshold.default, lambda r, dt, dv: (
        _rg(r.make((5, 9), dt, dv, layout="transposed")),
        _rg(r.make((9,), dt, dv, layout="strided", kind="rand")))),
    "soft_threshold-x-only": (S.soft_threshold.default, lambda r, dt, dv: (
        _rg(r.make((4, 7), dt, dv)), _pos(r, (7,), dt, dv))),
    "soft_threshold-theta-only": (S.soft_threshold.default, lambda r, dt, dv: (
        r.make((4, 7), dt, dv), _rg(_pos(r, (7,), dt, dv)))),
    "soft_threshold-empty": (S.soft_threshold.default, lambda r, dt, dv: (
        _rg(r.make((0, 7), dt, dv)), _rg(_pos(r, (7,), dt, dv)))),
    # ---- soft_threshold_ (mutable; its autograd lives in the Python wrapper)
    "soft_threshold_-row": (S.soft_threshold_.default, lambda r, dt, dv: (
        r.make((4, 7), dt, dv), _pos(r, (7,), dt, dv))),
    "soft_threshold_-0d": (S.soft_threshold_.default, lambda r, dt, dv: (
        r.make((4, 7), dt, dv), _pos(r, (), dt, dv))),
    "soft_threshold_-noncontig": (S.soft_threshold_.default, lambda r, dt, dv: (
        r.make((5, 9), dt, dv, layout="transposed"), _pos(r, (5, 1), dt, dv))),
    # ---- soft_threshold_backward
    "soft_threshold_backward-0d": (S.soft_threshold_backward.default, lambda r, dt, dv: (
        r.make((4, 7), dt, dv), _codes(r, (4, 7), dt, dv), _pos(r, (), dt, dv))),
    "soft_threshold_backward-row": (S.soft_threshold_backward.default, lambda r, dt, dv: (
        r.make((4, 7), dt, dv), _codes(r, (4, 7), dt, dv), _pos(r, (7,), dt, dv))),
    "soft_threshold_backward-full": (S.soft_threshold_backward.default, lambda r, dt, dv: (
        r.make((4, 7), dt, dv), _codes(r, (4, 7), dt, dv), _pos(r, (4, 7), dt, dv))),
    "soft_threshold_backward-full-noncontig-theta": (
        S.soft_threshold_backward.default, lambda r, dt, dv: (
            r.make((4, 7), dt, dv), _codes(r, (4, 7), dt, dv),
            r.make((4, 7), dt, dv, layout="transposed", kind="rand"))),
    "soft_threshold_backward-requires-grad": (S.soft_threshold_backward.default, lambda r, dt, dv: (
        _rg(r.make((4, 7), dt, dv)), _rg(_codes(r, (4, 7), dt, dv)), _rg(_pos(r, (7,), dt, dv)))),
    # ---- lista_layer
    "lista_layer-row": (S.lista_layer.default, lambda r, dt, dv: (
        _rg(r.make((3, 5), dt, dv)), _rg(r.make((3, 4), dt, dv)), _rg(r.make((5, 5), dt, dv)),
        _rg(r.make((5, 4), dt, dv)), _rg(_pos(r, (5,), dt, dv)))),
    "lista_layer-0d": (S.lista_layer.default, lambda r, dt, dv: (
        _rg(r.make((3, 5), dt, dv)), _rg(r.make((3, 4), dt, dv)), _rg(r.make((5, 5), dt, dv)),
        _rg(r.make((5, 4), dt, dv)), _rg(_pos(r, (), dt, dv)))),
    "lista_layer-full": (S.lista_layer.default, lambda r, dt, dv: (
        _rg(r.make((3, 5), dt, dv)), _rg(r.make((3, 4), dt, dv)), _rg(r.make((5, 5), dt, dv)),
        _rg(r.make((5, 4), dt, dv)), _rg(_pos(r, (3, 5), dt, dv)))),
    "lista_layer-noncontig": (S.lista_layer.default, lambda r, dt, dv: (
        _rg(r.make((3, 5), dt, dv, layout="transposed")), _rg(r.make((3, 4), dt, dv, layout="strided")),
        _rg(r.make((5, 5), dt, dv, layout="transposed")), _rg(r.make((5, 4), dt, dv, layout="transposed")),
        _rg(_pos(r, (5,), dt, dv)))),
    "lista_layer-empty-batch": (S.lista_layer.default, lambda r, dt, dv: (
        _rg(r.make((0, 5), dt, dv)), _rg(r.make((0, 4), dt, dv)), _rg(r.make((5, 5), dt, dv)),
        _rg(r.make((5, 4), dt, dv)), _rg(_pos(r, (5,), dt, dv)))),
    # ---- residual_norms (+ backward)
    "residual_norms-ref": (S.residual_norms.default, lambda r, dt, dv: (
        _rg(r.make((3, 4, 33), dt, dv)), _rg(r.make((4, 33), dt, dv)))),
    "residual_norms-noref": (S.residual_norms.default, lambda r, dt, dv: (
        _rg(r.make((3, 4, 33), dt, dv)), None)),
    "residual_norms-noncontig": (S.residual_norms.default, lambda r, dt, dv: (
        _rg(r.make((3, 4, 7), dt, dv, layout="permuted")), _rg(r.make((4, 7), dt, dv, layout="transposed")))),
    "residual_norms-empty-batch": (S.residual_norms.default, lambda r, dt, dv: (
        _rg(r.make((3, 0, 5), dt, dv)), _rg(r.make((0, 5), dt, dv)))),
    "residual_norms_backward-ref": (S.residual_norms_backward.default, lambda r, dt, dv: (
        r.make((3, 4), dt, dv), r.make((3, 4, 7), dt, dv), r.make((4, 7), dt, dv),
        _pos(r, (3, 4), dt, dv))),
    "residual_norms_backward-noref": (S.residual_norms_backward.default, lambda r, dt, dv: (
        r.make((3, 4), dt, dv), r.make((3, 4, 7), dt, dv), None, _pos(r, (3, 4), dt, dv))),
    "residual_norms_backward-requires-grad": (S.residual_norms_backward.default, lambda r, dt, dv: (
        _rg(r.make((3, 4), dt, dv)), _rg(r.make((3, 4, 7), dt, dv)), _rg(r.make((4, 7), dt, dv)),
        _rg(_pos(r, (3, 4), dt, dv)))),
    # reference_grad=False: no reference gradient (an empty second output, not differentiable)
    "residual_norms_backward-ref-no-reference-grad": (S.residual_norms_backward.default, lambda r, dt, dv: (
        r.make((3, 4), dt, dv), r.make((3, 4, 7), dt, dv), r.make((4, 7), dt, dv),
        _pos(r, (3, 4), dt, dv), False)),
    "residual_norms_backward-noref-no-reference-grad": (S.residual_norms_backward.default, lambda r, dt, dv: (
        r.make((3, 4), dt, dv), r.make((3, 4, 7), dt, dv), None, _pos(r, (3, 4), dt, dv), False)),
    "residual_norms_backward-requires-grad-no-reference-grad": (
        S.residual_norms_backward.default, lambda r, dt, dv: (
            _rg(r.make((3, 4), dt, dv)), _rg(r.make((3, 4, 7), dt, dv)), _rg(r.make((4, 7), dt, dv)),
            _rg(_pos(r, (3, 4), dt, dv)), False)),
    # ---- min_norm_subgradient (+ backward)
    "min_norm_subgradient": (S.min_norm_subgradient.default, lambda r, dt, dv: (
        _rg(r.make((4, 33), dt, dv)), _codes(r, (4, 33), dt, dv), 0.3)),
    "min_norm_subgradient-y-requires-grad": (S.min_norm_subgradient.default, lambda r, dt, dv: (
        _rg(r.make((4, 7), dt, dv)), _rg(_codes(r, (4, 7), dt, dv)), 0.3)),
    "min_norm_subgradient-noncontig": (S.min_norm_subgradient.default, lambda r, dt, dv: (
        _rg(r.make((4, 7), dt, dv, layout="transposed")), _codes(r, (4, 7), dt, dv), 0.0)),
    "min_norm_subgradient_backward": (S.min_norm_subgradient_backward.default, lambda r, dt, dv: (
        r.make((4, 7), dt, dv), r.make((4, 7), dt, dv), _codes(r, (4, 7), dt, dv), 0.3)),
    "min_norm_subgradient_backward-requires-grad": (S.min_norm_subgradient_backward.default, lambda r, dt, dv: (
        _rg(r.make((4, 7), dt, dv)), _rg(r.make((4, 7), dt, dv)), _codes(r, (4, 7), dt, dv), 0.3)),
}
for _form in FORMS:
    CASES[f"descent_violations-{_form}"] = (S.descent_violations.default, lambda r, dt, dv, f=_form: (
        _rg(_pos(r, (4, 9), dt, dv)), 0.05, f))
    CASES[f"descent_violations_backward-{_form}"] = (
        S.descent_violations_backward.default, lambda r, dt, dv, f=_form: (
            r.make((3,), dt, dv), _pos(r, (4, 9), dt, dv), 0.05, f))
    CASES[f"descent_violations_backward-{_form}-requires-grad"] = (
        S.descent_violations_backward.default, lambda r, dt, dv, f=_form: (
            _rg(r.make((3,), dt, dv)), _rg(_pos(r, (4, 9), dt, dv)), 0.05, f))
    CASES[f"descent_constraints-{_form}-ref"] = (S.descent_constraints.default, lambda r, dt, dv, f=_form: (
        _rg(r.make((4, 5, 33), dt, dv)), _rg(r.make((5, 33), dt, dv)), 0.05, f))
    CASES[f"descent_constraints-{_form}-noref"] = (S.descent_constraints.default, lambda r, dt, dv, f=_form: (
        _rg(r.make((4, 5, 7), dt, dv)), None, 0.1, f))


def test_every_op_is_covered():
    ops = {name.split("-")[0] for name in CASES}
    schemas = {s.name.split("::")[1] for s in torch._C._jit_get_all_schemas() if s.name.startswith("sdu::")}
    assert schemas, "no sdu ops registered"
    assert ops == schemas, f"opcheck table misses {schemas - ops} / has unknown {ops - schemas}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_opcheck(rng, device, dtype, case):
    op, build = CASES[case]
    args = build(rng, dtype, device)
    result = torch.library.opcheck(op, args)
    assert result and all(v == "SUCCESS" for v in result.values()), result
