"""Bad inputs: the messages of the C++ checks (eager, through the public wrappers) and
of the fake kernels (FakeTensorMode / torch.compile) name the argument, what was
expected and what was received, and agree with each other."""
import re
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from sdu_ext import ops
from sdu_testing import HAS_CUDA

S = torch.ops.sdu
f32, f64, i64 = torch.float32, torch.float64, torch.int64


def z(*shape, dtype=f32):
    return torch.zeros(shape, dtype=dtype)


def o(*shape, dtype=f32):
    return torch.ones(shape, dtype=dtype)


@dataclass
class Case:
    wrapper: Callable          # eager call through sdu_ext.ops (C++ checks)
    op: object                 # raw op for the fake path
    args: tuple                # raw op arguments (real tensors; faked for the fake path)
    exc: type
    match: str                 # regex both messages must match


def lit(s):
    return "^" + re.escape(s) + "$"


X47 = z(4, 7)
IT = z(3, 4, 5)
CASES = {
    # ---- theta broadcasting
    "soft_threshold-theta-not-broadcastable": Case(
        lambda: ops.soft_threshold(X47, o(5)), S.soft_threshold, (X47, o(5)), RuntimeError,
        lit("theta: expected shape broadcastable to x (4, 7), got (5,)")),
    "soft_threshold-theta-too-many-dims": Case(
        lambda: ops.soft_threshold(X47, o(1, 4, 7)), S.soft_threshold, (X47, o(1, 4, 7)), RuntimeError,
        lit("theta: expected shape broadcastable to x (4, 7), got (1, 4, 7)")),
    "soft_threshold-theta-wrong-leading-dim": Case(
        lambda: ops.soft_threshold(X47, o(3, 1)), S.soft_threshold, (X47, o(3, 1)), RuntimeError,
        lit("theta: expected shape broadcastable to x (4, 7), got (3, 1)")),
    "soft_threshold_-theta-not-broadcastable": Case(
        lambda: ops.soft_threshold_(z(4, 7), o(5)), S.soft_threshold_, (z(4, 7), o(5)), RuntimeError,
        lit("theta: expected shape broadcastable to x (4, 7), got (5,)")),
    # ---- dtypes
    "soft_threshold-integer-x": Case(
        lambda: ops.soft_threshold(z(4, 7, dtype=i64), o()), S.soft_threshold, (z(4, 7, dtype=i64), o()),
        RuntimeError, r"^x: expected dtype float32, float64, float16 or bfloat16, got "),
    "soft_threshold-integer-theta": Case(
        lambda: ops.soft_threshold(X47, o(7, dtype=i64)), S.soft_threshold, (X47, o(7, dtype=i64)),
        RuntimeError, r"^theta: expected dtype float32, float64, float16 or bfloat16, got "),
    "soft_threshold_-integer-x": Case(
        lambda: ops.soft_threshold_(z(4, 7, dtype=i64), o()), S.soft_threshold_, (z(4, 7, dtype=i64), o()),
        RuntimeError, r"^x: expected dtype float32, float64, float16 or bfloat16, got "),
    "residual_norms-integer-iterates": Case(
        lambda: ops.residual_norms(z(3, 4, 5, dtype=i64)), S.residual_norms, (z(3, 4, 5, dtype=i64), None),
        RuntimeError, r"^iterates: expected dtype float32, float64, float16 or bfloat16, got "),
    "descent_violations-integer-norms": Case(
        lambda: ops.descent_violations(o(3, 4, dtype=i64)), S.descent_violations,
        (o(3, 4, dtype=i64), 0.05, "mean_ratio"),
        RuntimeError, r"^norms: expected dtype float32, float64, float16 or bfloat16, got "),
    "min_norm_subgradient-integer-grad": Case(
        lambda: ops.min_norm_subgradient(z(3, 4, dtype=i64), z(3, 4), 0.1), S.min_norm_subgradient,
        (z(3, 4, dtype=i64), z(3, 4), 0.1),
        RuntimeError, r"^grad: expected dtype float32, float64, float16 or bfloat16, got "),
    # ---- lista_layer shapes
    "lista_layer-W1-shape": Case(
        lambda: ops.lista_layer(z(3, 5), z(3, 4), z(6, 5), z(5, 4), o(5)), S.lista_layer,
        (z(3, 5), z(3, 4), z(6, 5), z(5, 4), o(5)), RuntimeError,
        lit("W1: expected shape (5, 5) = (m, m) with m from y, got (6, 5)")),
    "lista_layer-W2-shape": Case(
        lambda: ops.lista_layer(z(3, 5), z(3, 4), z(5, 5), z(5, 3), o(5)), S.lista_layer,
        (z(3, 5), z(3, 4), z(5, 5), z(5, 3), o(5)), RuntimeError,
        lit("W2: expected shape (5, 4) = (m, n) with m from y and n from xs, got (5, 3)")),
    "lista_layer-W2-1d": Case(
        lambda: ops.lista_layer(z(3, 5), z(3, 4), z(5, 5), z(20), o(5)), S.lista_layer,
        (z(3, 5), z(3, 4), z(5, 5), z(20), o(5)), RuntimeError,
        lit("W2: expected shape (5, 4) = (m, n) with m from y and n from xs, got (20,)")),
    "lista_layer-xs-batch": Case(
        lambda: ops.lista_layer(z(3, 5), z(2, 4), z(5, 5), z(5, 4), o(5)), S.lista_layer,
        (z(3, 5), z(2, 4), z(5, 5), z(5, 4), o(5)), RuntimeError,
        lit("xs: expected shape (3, 4) = (B, n) with B from y, got (2, 4)")),
    "lista_layer-xs-3d": Case(
        lambda: ops.lista_layer(z(3, 5), z(3, 4, 1), z(5, 5), z(5, 4), o(5)), S.lista_layer,
        (z(3, 5), z(3, 4, 1), z(5, 5), z(5, 4), o(5)), RuntimeError,
        lit("xs: expected a 2-D tensor (B, n), got shape (3, 4, 1)")),
    "lista_layer-y-1d": Case(
        lambda: ops.lista_layer(z(5), z(3, 4), z(5, 5), z(5, 4), o(5)), S.lista_layer,
        (z(5), z(3, 4), z(5, 5), z(5, 4), o(5)), RuntimeError,
        lit("y: expected a 2-D tensor (B, m), got shape (5,)")),
    "lista_layer-theta": Case(
        lambda: ops.lista_layer(z(3, 5), z(3, 4), z(5, 5), z(5, 4), o(4)), S.lista_layer,
        (z(3, 5), z(3, 4), z(5, 5), z(5, 4), o(4)), RuntimeError,
        r"^theta: expected shape broadcastable to \w+ \(3, 5\), got \(4,\)$"),
    "lista_layer-W1-dtype": Case(
        lambda: ops.lista_layer(z(3, 5), z(3, 4), z(5, 5, dtype=f64), z(5, 4), o(5)), S.lista_layer,
        (z(3, 5), z(3, 4), z(5, 5, dtype=f64), z(5, 4), o(5)), RuntimeError,
        r"^W1: expected dtype \S+ \(same as y\), got \S+$"),
    # ---- iterates / reference
    "residual_norms-iterates-2d": Case(
        lambda: ops.residual_norms(z(3, 4)), S.residual_norms, (z(3, 4), None), RuntimeError,
        lit("iterates: expected a 3-D tensor (L+1, B, m), got shape (3, 4)")),
    "residual_norms-iterates-4d": Case(
        lambda: ops.residual_norms(z(3, 4, 5, 1)), S.residual_norms, (z(3, 4, 5, 1), None), RuntimeError,
        lit("iterates: expected a 3-D tensor (L+1, B, m), got shape (3, 4, 5, 1)")),
    "residual_norms-no-layers": Case(
        lambda: ops.residual_norms(z(0, 2, 3)), S.residual_norms, (z(0, 2, 3), None), RuntimeError,
        r"^iterates: expected .*, got shape \(0, 2, 3\)$"),
    "residual_norms-reference-shape": Case(
        lambda: ops.residual_norms(IT, z(4, 6)), S.residual_norms, (IT, z(4, 6)), RuntimeError,
        lit("reference: expected shape (4, 5) = (B, m) of iterates, got (4, 6)")),
    "residual_norms-reference-1d": Case(
        lambda: ops.residual_norms(IT, z(5)), S.residual_norms, (IT, z(5)), RuntimeError,
        lit("reference: expected shape (4, 5) = (B, m) of iterates, got (5,)")),
    "residual_norms-reference-3d": Case(
        lambda: ops.residual_norms(IT, z(1, 4, 5)), S.residual_norms, (IT, z(1, 4, 5)), RuntimeError,
        lit("reference: expected shape (4, 5) = (B, m) of iterates, got (1, 4, 5)")),
    "residual_norms-reference-dtype": Case(
        lambda: ops.residual_norms(IT, z(4, 5, dtype=f64)), S.residual_norms, (IT, z(4, 5, dtype=f64)),
        RuntimeError, r"^reference: expected dtype \S+ \(same as iterates\), got \S+$"),
    "descent_constraints-iterates-2d": Case(
        lambda: ops.descent_constraints(z(3, 4), None), S.descent_constraints,
        (z(3, 4), None, 0.05, "mean_ratio"), RuntimeError,
        lit("iterates: expected a 3-D tensor (L+1, B, m), got shape (3, 4)")),
    "descent_constraints-reference-shape": Case(
        lambda: ops.descent_constraints(IT, z(5, 4)), S.descent_constraints,
        (IT, z(5, 4), 0.05, "mean_ratio"), RuntimeError,
        lit("reference: expected shape (4, 5) = (B, m) of iterates, got (5, 4)")),
    "descent_violations-norms-1d": Case(
        lambda: ops.descent_violations(o(3)), S.descent_violations, (o(3), 0.05, "mean_ratio"), RuntimeError,
        lit("norms: expected a 2-D tensor (L+1, B), got shape (3,)")),
    "descent_violations-no-layers": Case(
        lambda: ops.descent_violations(o(0, 4)), S.descent_violations, (o(0, 4), 0.05, "mean_ratio"),
        RuntimeError, r"^norms: expected .*, got shape \(0, 4\)$"),
    # ---- form and eps
    "descent_violations-unknown-form": Case(
        lambda: ops.descent_violations(o(3, 4), 0.05, "ratio"), S.descent_violations, (o(3, 4), 0.05, "ratio"),
        ValueError, lit("form: expected one of 'mean_ratio', 'ratio_of_means', 'difference', got 'ratio'")),
    "descent_constraints-unknown-form": Case(
        lambda: ops.descent_constraints(IT, None, 0.05, "Mean_Ratio"), S.descent_constraints,
        (IT, None, 0.05, "Mean_Ratio"), ValueError,
        lit("form: expected one of 'mean_ratio', 'ratio_of_means', 'difference', got 'Mean_Ratio'")),
    "descent_violations-eps-1": Case(
        lambda: ops.descent_violations(o(3, 4), 1.0), S.descent_violations, (o(3, 4), 1.0, "mean_ratio"),
        ValueError, r"^eps: expected a value in \[0, 1\), got 1(\.0)?$"),
    "descent_violations-eps-negative": Case(
        lambda: ops.descent_violations(o(3, 4), -0.1), S.descent_violations, (o(3, 4), -0.1, "mean_ratio"),
        ValueError, lit("eps: expected a value in [0, 1), got -0.1")),
    "descent_constraints-eps-1": Case(
        lambda: ops.descent_constraints(IT, None, 1.0), S.descent_constraints, (IT, None, 1.0, "mean_ratio"),
        ValueError, r"^eps: expected a value in \[0, 1\), got 1(\.0)?$"),
    "descent_constraints-eps-negative": Case(
        lambda: ops.descent_constraints(IT, None, -0.1), S.descent_constraints, (IT, None, -0.1, "difference"),
        ValueError, lit("eps: expected a value in [0, 1), got -0.1")),
    # ---- min_norm_subgradient
    "min_norm_subgradient-negative-alpha": Case(
        lambda: ops.min_norm_subgradient(z(3, 4), z(3, 4), -0.5), S.min_norm_subgradient,
        (z(3, 4), z(3, 4), -0.5), ValueError, lit("alpha: expected a non-negative value, got -0.5")),
    "min_norm_subgradient-alpha-minus-one": Case(
        lambda: ops.min_norm_subgradient(z(3, 4), z(3, 4), -1.0), S.min_norm_subgradient,
        (z(3, 4), z(3, 4), -1.0), ValueError, r"^alpha: expected a non-negative value, got -1(\.0)?$"),
    "min_norm_subgradient-nan-alpha": Case(
        lambda: ops.min_norm_subgradient(z(3, 4), z(3, 4), float("nan")), S.min_norm_subgradient,
        (z(3, 4), z(3, 4), float("nan")), ValueError, lit("alpha: expected a non-negative value, got nan")),
    "min_norm_subgradient-shape": Case(
        lambda: ops.min_norm_subgradient(z(3, 4), z(3, 5), 0.1), S.min_norm_subgradient,
        (z(3, 4), z(3, 5), 0.1), RuntimeError, lit("y: expected shape (3, 4) (same as grad), got (3, 5)")),
    "min_norm_subgradient-shape-1d": Case(
        lambda: ops.min_norm_subgradient(z(12), z(3, 4), 0.1), S.min_norm_subgradient,
        (z(12), z(3, 4), 0.1), RuntimeError, lit("y: expected shape (12,) (same as grad), got (3, 4)")),
    "min_norm_subgradient-dtype": Case(
        lambda: ops.min_norm_subgradient(z(3, 4), z(3, 4, dtype=f64), 0.1), S.min_norm_subgradient,
        (z(3, 4), z(3, 4, dtype=f64), 0.1), RuntimeError, r"^y: expected dtype \S+ \(same as grad\), got \S+$"),
}

# Backward helpers: autograd always passes consistent shapes, but the fake kernels
# should reject what the real kernels reject.
HELPER_CASES = {
    "soft_threshold_backward-grad-shape": Case(
        None, S.soft_threshold_backward, (z(3, 5), z(3, 4), o()), RuntimeError,
        lit("grad: expected shape (3, 4) (same as y), got (3, 5)")),
    "descent_violations_backward-grad-shape": Case(
        None, S.descent_violations_backward, (z(3), o(3, 4), 0.05, "mean_ratio"), RuntimeError,
        lit("grad: expected shape (2,) = (L,), got (3,)")),
    "residual_norms_backward-grad-shape": Case(
        None, S.residual_norms_backward, (z(3, 5), IT, None, o(3, 4)), RuntimeError,
        lit("grad: expected shape (3, 4) = (L+1, B), got (3, 5)")),
    "min_norm_subgradient_backward-grad_out-shape": Case(
        None, S.min_norm_subgradient_backward, (z(3, 5), z(3, 4), z(3, 4), 0.1), RuntimeError,
        lit("grad_out: expected shape (3, 4) (same as grad), got (3, 5)")),
}


def call_fake(op, args):
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        op(*fake)


def capture(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001  (the exception is the result)
        return e
    raise AssertionError("no exception raised")


@pytest.mark.parametrize("case", list(CASES))
def test_eager_message(case):
    c = CASES[case]
    with pytest.raises(c.exc, match=c.match):
        c.wrapper()


@pytest.mark.parametrize("case", list(CASES))
def test_fake_message(case):
    c = CASES[case]
    with pytest.raises(c.exc, match=c.match):
        call_fake(c.op, c.args)


@pytest.mark.parametrize("case", list(CASES))
def test_eager_and_fake_messages_are_identical(case):
    c = CASES[case]
    eager = capture(c.wrapper)
    fake = capture(lambda: call_fake(c.op, c.args))
    assert type(eager) is type(fake), f"eager raised {type(eager).__name__}, fake {type(fake).__name__}"
    assert str(eager) == str(fake), f"messages differ:\n  eager: {eager}\n  fake:  {fake}"


@pytest.mark.parametrize("case", list(HELPER_CASES))
@pytest.mark.parametrize("path", ["eager", "fake"])
def test_backward_helper_messages(case, path):
    c = HELPER_CASES[case]
    with pytest.raises(c.exc, match=c.match):
        if path == "eager":
            c.op(*c.args)
        else:
            call_fake(c.op, c.args)


COMPILED = [
    ("soft_threshold-theta-not-broadcastable", lambda x: ops.soft_threshold(x, o(5)), (X47,)),
    ("descent_violations-eps-1", lambda n: ops.descent_violations(n, 1.0), (o(3, 4),)),
    ("descent_constraints-unknown-form", lambda it: ops.descent_constraints(it, None, 0.05, "Mean_Ratio"), (IT,)),
    ("lista_layer-W2-shape", lambda y: ops.lista_layer(y, z(3, 4), z(5, 5), z(5, 3), o(5)), (z(3, 5),)),
    ("min_norm_subgradient-negative-alpha", lambda g: ops.min_norm_subgradient(g, z(3, 4), -0.5), (z(3, 4),)),
    ("residual_norms-reference-shape", lambda it: ops.residual_norms(it, z(4, 6)), (IT,)),
]


@pytest.mark.parametrize("case,fn,args", COMPILED, ids=[c[0] for c in COMPILED])
def test_compiled_message(case, fn, args):
    torch._dynamo.reset()
    pattern = CASES[case].match.lstrip("^").rstrip("$")
    with pytest.raises(Exception, match=pattern):
        torch.compile(fn, fullgraph=True, backend="aot_eager")(*args)


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device visible")
@pytest.mark.cuda
def test_device_mismatch():
    x = z(4, 7)
    theta = o(7).cuda()
    with pytest.raises(RuntimeError, match=r"^theta: expected device cpu \(same as x\), got cuda:0$"):
        ops.soft_threshold(x, theta)
    with pytest.raises(RuntimeError, match=r"^theta: expected device cpu \(same as x\), got cuda:0$"):
        call_fake(S.soft_threshold, (x, theta))
    with pytest.raises(RuntimeError, match=r"^reference: expected device cuda:0 \(same as iterates\)"):
        ops.residual_norms(z(3, 4, 5).cuda(), z(4, 5))
    with pytest.raises(RuntimeError, match=r"^y: expected device cpu \(same as grad\)"):
        ops.min_norm_subgradient(z(3, 4), z(3, 4).cuda(), 0.1)
