"""Bad inputs: the messages of the C++ checks (eager, through the public wrappers) and
of the fake kernels (FakeTensorMode / torch.compile) name the argument, what was
expected and what was received, and agree with each other."""
import re
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import sdu_ext.evaluate.metrics as ME_
import sdu_ext.evaluate.robustness as RO_
import sdu_ext.models as M_
import sdu_ext.nn as nn_
import sdu_ext.problems as P_
import sdu_ext.solvers as S_
import sdu_ext.train as T_
from sdu_ext import cli, ops
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


# ============================================================== the public API's bad inputs
# One row per misuse of sdu_ext.nn / models / problems / solvers / evaluate / train: the call,
# the exception type, the argument its message must start with ("<argument>: ...") and a regex
# for the rest (what was expected and what was received). Every message is one line. The
# rows marked "was:" gave a raw AttributeError / TypeError / LinAlgError / ZeroDivisionError,
# a misleading message, or nothing at all before issue 12.

@dataclass
class Misuse:
    call: Callable             # the bad call (tmp_path -> anything)
    exc: type
    arg: str                   # the argument the message names first
    detail: str                # regex for the rest of the message (expected and received)


def _dictionary(n=8, m=12, dtype=f32):
    gen = torch.Generator().manual_seed(0)
    D = torch.randn(n, m, generator=gen, dtype=dtype)
    return D / D.norm(dim=0)


def _poisoned(value):
    D = _dictionary().clone()
    D[0, 0] = value
    return D


def _signals(rows=8, n=8):
    return torch.randn(rows, n, generator=torch.Generator().manual_seed(1))


def _lasso():
    return P_.Lasso(_dictionary(), 0.1)


def _lista(**kw):
    return M_.LISTA(_dictionary(), 0.1, 3, **kw)


def _trainer(tmp_path, targets=None, **config):
    y = torch.zeros(32, 12)
    return T_.PrimalDualTrainer(_lista(), (_signals(32), y if targets is None else targets(y)),
                                config=T_.TrainConfig(mode="standard", epochs=1, batch_size=8, **config))


def _a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return str(path)


INF, NAN = float("inf"), float("nan")
L1 = lambda: torch.zeros(8, 12).tolist()  # noqa: E731  (a list where a tensor is due)

MISUSES = {
    # ---- sdu_ext.ops (checks of the Python wrappers: values, and arguments that are not numbers)
    "descent_violations-eps-None": Misuse(  # was: TypeError "float() argument must be ..."
        lambda t: ops.descent_violations(o(3, 4), None), ValueError, "eps", r"expected a value in \[0, 1\), got None$"),
    "descent_constraints-eps-None": Misuse(  # was: TypeError
        lambda t: ops.descent_constraints(IT, None, None), ValueError, "eps", r"expected a value in \[0, 1\), got None$"),
    "descent_violations-negative-norms": Misuse(  # was: silent (values of -1e12)
        lambda t: ops.descent_violations(torch.tensor([[1.0, 2.0], [0.5, -1.0]])), ValueError, "norms",
        r"expected residual norms >= 0, got 1 negative \(smallest -1\) in shape \(2, 2\)$"),
    "soft_threshold-x-list": Misuse(  # was: AttributeError "'list' object has no attribute 'dtype'"
        lambda t: ops.soft_threshold([1.0, -2.0], 0.5), TypeError, "x", r"expected a tensor, got list$"),
    "min_norm_subgradient-alpha-None": Misuse(  # was: TypeError "float() argument must be ..."
        lambda t: ops.min_norm_subgradient(z(3, 4), z(3, 4), None), ValueError, "alpha",
        r"expected a non-negative value, got None$"),
    "min_norm_subgradient-alpha-inf": Misuse(  # was: silent (infinite subgradients)
        lambda t: ops.min_norm_subgradient(z(3, 4), o(3, 4), float("inf")), ValueError, "alpha",
        r"expected a finite value, got inf$"),
    # ---- sdu_ext.nn
    "SoftThreshold-num_features-negative": Misuse(  # was: RuntimeError "negative dimension -3"
        lambda t: nn_.SoftThreshold(-3), ValueError, "num_features", r"expected None or an integer >= 1, got -3$"),
    "SoftThreshold-num_features-float": Misuse(  # was: TypeError from torch.full
        lambda t: nn_.SoftThreshold(2.5), ValueError, "num_features", r"expected None or an integer >= 1, got 2\.5$"),
    "SoftThreshold-init-nan": Misuse(  # was: silent (a NaN threshold)
        lambda t: nn_.SoftThreshold(4, init=NAN), ValueError, "init", r"expected a finite number, got nan$"),
    "SoftThreshold-init-None": Misuse(  # was: TypeError from float()
        lambda t: nn_.SoftThreshold(init=None), ValueError, "init", r"expected a real number, got None$"),
    "SoftThreshold-x-list": Misuse(  # was: RuntimeError of the dispatcher
        lambda t: nn_.SoftThreshold()([1.0, -2.0]), ValueError, "x", r"expected a tensor .*, got list$"),
    "LISTALayer-m-float": Misuse(  # was: TypeError "empty() takes 1 positional argument"
        lambda t: nn_.LISTALayer(2.5, 3), ValueError, "m", r"expected an integer >= 1, got 2\.5$"),
    "LISTALayer-n-None": Misuse(  # was: TypeError "'<' not supported"
        lambda t: nn_.LISTALayer(3, None), ValueError, "n", r"expected an integer >= 1, got None$"),
    "LISTALayer-theta_init-inf": Misuse(  # was: silent
        lambda t: nn_.LISTALayer(3, 3, theta_init=INF), ValueError, "theta_init", r"expected a finite number, got inf$"),
    "LISTALayer-y-list": Misuse(
        lambda t: nn_.LISTALayer(12, 8)(L1(), _signals()), ValueError, "y", r"expected a tensor \(B, m\), got list$"),
    "LISTALayer-xs-list": Misuse(
        lambda t: nn_.LISTALayer(12, 8)(torch.zeros(8, 12), _signals().tolist()), ValueError, "xs",
        r"expected a tensor \(B, n\), got list$"),
    "from_dictionary-D-1d": Misuse(  # was: ValueError "not enough values to unpack"
        lambda t: nn_.LISTALayer.from_dictionary(_dictionary()[0], 0.1), ValueError, "D",
        r"expected a 2-D floating tensor \(n, m\), got \(12,\) torch.float32 on cpu$"),
    "from_dictionary-D-zeros": Misuse(  # was: ZeroDivisionError
        lambda t: nn_.LISTALayer.from_dictionary(torch.zeros(8, 12), 0.1), ValueError, "D",
        r"expected a nonzero dictionary \(\|\|D\|\|_2 > 0\), got all zeros$"),
    "from_dictionary-D-nan": Misuse(  # was: LinAlgError
        lambda t: nn_.LISTALayer.from_dictionary(_poisoned(NAN), 0.1), ValueError, "D",
        r"expected finite entries, got 1 NaN of 96 in shape \(8, 12\)$"),
    "from_dictionary-alpha-None": Misuse(  # was: TypeError
        lambda t: nn_.LISTALayer.from_dictionary(_dictionary(), None), ValueError, "alpha",
        r"expected a real number, got None$"),
    "from_dictionary-lipschitz-negative": Misuse(  # was: silent (a layer that ascends)
        lambda t: nn_.LISTALayer.from_dictionary(_dictionary(), 0.1, lipschitz=-1.0), ValueError, "lipschitz",
        r"expected a positive number, got -1\.0$"),
    # ---- sdu_ext.problems
    "Lasso-alpha-None": Misuse(  # was: TypeError from float()
        lambda t: P_.Lasso(_dictionary(), None), ValueError, "alpha", r"expected a real number, got None$"),
    "Lasso-alpha-vector": Misuse(  # was: "only one element tensors can be converted"
        lambda t: P_.Lasso(_dictionary(), torch.full((12,), 0.1)), ValueError, "alpha",
        r"expected a real number, got a tensor of shape \(12,\)$"),
    "Lasso-alpha-inf": Misuse(  # was: silent
        lambda t: P_.Lasso(_dictionary(), INF), ValueError, "alpha", r"expected a finite number, got inf$"),
    "Lasso-alpha-nan": Misuse(
        lambda t: P_.Lasso(_dictionary(), NAN), ValueError, "alpha", r"expected a non-negative value, got nan$"),
    "Lasso-alpha-string": Misuse(  # was: silent (float("0.1"))
        lambda t: P_.Lasso(_dictionary(), "0.1"), ValueError, "alpha", r"expected a real number, got '0\.1'$"),
    "Lasso-D-inf": Misuse(  # was: silent
        lambda t: P_.Lasso(_poisoned(INF), 0.1), ValueError, "D", r"expected finite entries, got 1 infinite of 96"),
    "Lasso-value-x-list": Misuse(  # was: AttributeError "'list' object has no attribute 'dim'"
        lambda t: _lasso().value(torch.zeros(8, 12), _signals().tolist()), ValueError, "x",
        r"expected a tensor of shape \(B, 8\) = \(B, n\), got list$"),
    "Lasso-duality_gap-y-list": Misuse(  # was: AttributeError
        lambda t: _lasso().duality_gap(L1(), _signals()), ValueError, "y",
        r"expected a tensor of shape \(B, 12\) = \(B, m\), got list$"),
    "Lasso-value-y-rows": Misuse(
        lambda t: _lasso().value(torch.zeros(5, 12), _signals()), ValueError, "y",
        r"expected 8 rows \(the batch size B of x\), got 5$"),
    "DatasetConfig-images-None": Misuse(  # was: TypeError "'NoneType' object is not iterable"
        lambda t: P_.DatasetConfig(name="patches", images=None), ValueError, "images",
        r"expected a non-empty tuple of names from PATCH_IMAGES \(.*\), got None$"),
    "DatasetConfig-alpha-inf": Misuse(
        lambda t: P_.DatasetConfig(alpha=INF), ValueError, "alpha", r"expected a finite value >= 0, got inf$"),
    "load-config-dict": Misuse(  # was: AttributeError with overrides
        lambda t: P_.load({"name": "synthetic"}, n_train=4), ValueError, "config",
        r"expected a DatasetConfig or None, got dict$"),
    "load-cache-string": Misuse(  # was: silent ("no" is true: the cache was used)
        lambda t: P_.load(n=4, m=6, n_train=2, n_val=1, n_test=1, cache="no"), ValueError, "cache",
        r"expected True or False, got 'no'$"),
    "load-cache_dir-file": Misuse(  # was: FileExistsError after the whole generation
        lambda t: P_.load(n=4, m=6, n_train=2, n_val=1, n_test=1, cache_dir=_a_file(t)), ValueError, "cache_dir",
        r"expected a directory, got '.*a_file', a file$"),
    # ---- sdu_ext.models
    "LISTA-alpha-None": Misuse(  # was: TypeError from float()
        lambda t: M_.LISTA(_dictionary(), None, 3), ValueError, "alpha", r"expected a real number, got None$"),
    "LISTA-alpha-vector": Misuse(  # was: "only one element tensors can be converted"
        lambda t: M_.LISTA(_dictionary(), torch.full((12,), 0.1), 3), ValueError, "alpha",
        r"expected a real number, got a tensor of shape \(12,\)$"),
    "LISTA-alpha-inf": Misuse(  # was: silent (thresholds of inf: every code 0)
        lambda t: M_.LISTA(_dictionary(), INF, 3), ValueError, "alpha", r"expected a finite number, got inf$"),
    "LISTA-D-inf": Misuse(  # was: "expected a nonzero dictionary ..., got all zeros"
        lambda t: M_.LISTA(_poisoned(INF), 0.1, 3), ValueError, "D",
        r"expected finite entries, got 1 infinite of 96 in shape \(8, 12\)$"),
    "ISTA-D-nan": Misuse(  # was: LinAlgError "linalg.svd: The algorithm failed to converge"
        lambda t: M_.ISTA(_poisoned(NAN), 0.1, 3), ValueError, "D", r"expected finite entries, got 1 NaN of 96"),
    "ALISTA-D-nan": Misuse(  # was: LinAlgError
        lambda t: M_.ALISTA(_poisoned(NAN), 0.1, 3), ValueError, "D", r"expected finite entries, got 1 NaN"),
    "LISTA_CP-D-zeros": Misuse(
        lambda t: M_.LISTA_CP(torch.zeros(8, 12), 0.1, 3), ValueError, "D", r"expected a nonzero dictionary"),
    "ISTA-step-inf": Misuse(  # was: silent (a model whose layers return NaN)
        lambda t: M_.ISTA(_dictionary(), 0.1, 3, step=INF), ValueError, "step", r"expected a finite number, got inf$"),
    "LISTA-x-list": Misuse(
        lambda t: _lista()(_signals().tolist()), ValueError, "x", r"expected shape \(B, 8\) .*, got list$"),
    "FISTA-y0-rows": Misuse(
        lambda t: M_.FISTA(_dictionary(), 0.1, 3)(_signals(), y0=torch.zeros(5, 12)), ValueError, "y0",
        r"expected shape \(8, 12\) = \(B, m\) .*, got \(5, 12\)"),
    "LISTA-noise-not-callable": Misuse(  # was: TypeError "'int' object is not callable" after layer 1
        lambda t: _lista()(_signals(), noise=3), ValueError, "noise", r"expected a callable, got int$"),
    "LISTA-generator-seed": Misuse(  # was: AttributeError "'int' object has no attribute 'device'"
        lambda t: _lista(init="paper")(_signals(), generator=0), ValueError, "generator",
        r"expected a torch.Generator or None, got int$"),
    # ---- sdu_ext.solvers
    "ista-x-list": Misuse(
        lambda t: S_.ista(_lasso(), _signals().tolist()), ValueError, "x", r"expected shape \(B, 8\) = \(B, n\), got list$"),
    "solve_lasso-x-nan": Misuse(  # was: silent (NaN codes)
        lambda t: S_.solve_lasso(_lasso(), _signals().index_fill_(0, torch.tensor([2]), NAN)), ValueError, "x",
        r"expected finite entries, got 8 NaN of 64 in shape \(8, 8\)$"),
    "fista-y0-inf": Misuse(  # was: silent
        lambda t: S_.fista(_lasso(), _signals(), y0=torch.full((8, 12), INF)), ValueError, "y0",
        r"expected finite entries, got 96 infinite"),
    "ista-step-inf": Misuse(
        lambda t: S_.ista(_lasso(), _signals(), step=INF), ValueError, "step", r"expected a positive finite value, got inf$"),
    "ista-max_iter-bool": Misuse(  # was: silent (True ran one iteration)
        lambda t: S_.ista(_lasso(), _signals(), max_iter=True), ValueError, "max_iter",
        r"expected an integer >= 0, got True$"),
    "solve_lasso-tol-zero": Misuse(
        lambda t: S_.solve_lasso(_lasso(), _signals(), tol=0), ValueError, "tol", r"expected a value > 0, got 0$"),
    "ista-problem-None": Misuse(
        lambda t: S_.ista(None, _signals()), ValueError, "problem", r"expected a sdu_ext.problems.Lasso, got NoneType$"),
    # ---- sdu_ext.evaluate
    "descending_frequency-iterates-list": Misuse(
        lambda t: ME_.descending_frequency(torch.zeros(4, 8, 12).tolist()), ValueError, "iterates",
        r"expected stacked iterates \(L\+1, N, m\), got list$"),
    "nmse_db-reference-shape": Misuse(
        lambda t: ME_.nmse_db(torch.zeros(8, 12), torch.ones(8, 5)), ValueError, "reference",
        r"expected shape \(N, m\) = \(8, 12\) .*, got \(8, 5\)$"),
    "perturbation_sweep-sigma-negative": Misuse(
        lambda t: RO_.perturbation_sweep(_lista(), _signals(), torch.zeros(8, 12), [-1.0]), ValueError, "sigma",
        r"expected a non-negative number, got -1\.0$"),
    "iterations_to_match-method": Misuse(
        lambda t: ME_.iterations_to_match(_lasso(), _signals(), torch.zeros(8, 12), [-10.0], method="adam"),
        ValueError, "method", r"expected 'ista' or 'fista', got 'adam'$"),
    # ---- sdu_ext.train (fixed by the trainer's owner; kept here so the table covers them)
    "DescentConstraints-eps-None": Misuse(
        lambda t: T_.DescentConstraints(eps=None), ValueError, "eps", r"expected a number in \[0, 1\), got None$"),
    "TrainConfig-optimizer_kwargs-typo": Misuse(  # was: TypeError at fit()
        lambda t: T_.TrainConfig(optimizer_kwargs={"momentun": 0.9}), ValueError, "optimizer_kwargs",
        r"expected arguments of torch\.optim\.Adam \(.*\), got 'momentun'$"),
    "trainer-targets-width": Misuse(  # was: a silent broadcast in the squared error
        lambda t: _trainer(t, targets=lambda y: y[:, :-1]).fit(), ValueError, "y*",
        r"expected the targets batch\[1\] of shape \(8, 12\) .*, got shape \(8, 11\)$"),
    "trainer-checkpoint_dir-file": Misuse(  # was: FileExistsError after a whole epoch
        lambda t: _trainer(t, checkpoint_dir=_a_file(t)), ValueError, "checkpoint_dir",
        r"expected a directory, got '.*a_file', a file$"),
    "load_checkpoint-missing": Misuse(
        lambda t: T_.load_checkpoint(t / "nope.pt"), FileNotFoundError, "checkpoint", r"no file at '.*nope\.pt'$"),
    "load_checkpoint-foreign-pickle": Misuse(  # was: torch's six-line weights_only message
        lambda t: (torch.save({"not": "a checkpoint"}, t / "junk.pt"), T_.load_checkpoint(t / "junk.pt")),
        ValueError, "checkpoint", r"'.*junk\.pt' is not an sdu_ext training checkpoint"),
    "trainer-resume-without-checkpoint_dir": Misuse(
        lambda t: _trainer(t).fit(resume=True), ValueError, "resume", r"needs config.checkpoint_dir, got None$"),
}


@pytest.mark.parametrize("case", list(MISUSES))
def test_public_api_misuse_names_the_argument(case, tmp_path):
    c = MISUSES[case]
    with pytest.raises(Exception) as info:
        c.call(tmp_path)
    message = str(info.value)
    assert type(info.value) is c.exc, f"{case}: raised {type(info.value).__name__}: {message}"
    assert message.startswith(f"{c.arg}: "), f"{case}: the message does not start with {c.arg!r}: {message}"
    assert "\n" not in message, f"{case}: a message of several lines: {message}"
    rest = message[len(c.arg) + 2:]
    assert re.search(c.detail, rest), f"{case}: {rest!r} does not match {c.detail!r}"


def test_dataset_cache_dir_that_is_a_file_fails_before_generation(tmp_path, monkeypatch):
    from sdu_ext.problems import datasets

    def generate(*args, **kwargs):
        raise AssertionError("the data set was generated before the cache_dir check")

    monkeypatch.setattr(datasets, "_generate", generate)
    with pytest.raises(ValueError, match=r"^cache_dir: expected a directory"):
        datasets.load(n=4, m=6, n_train=2, n_val=1, n_test=1, cache_dir=_a_file(tmp_path))


# The `sdu-ext` command, in process: exit status 2 and one line "sdu-ext: error: <argument>: ...".

def _previous_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"\x00" * 64)  # any last.pt marks a previous run; this one is damaged
    return str(run)


def _text_file(tmp_path, name="notes.pt"):
    (tmp_path / name).write_text("not a checkpoint\n")
    return str(tmp_path / name)


TRAIN = ["lista", "train", "--preset", "tiny", "--quiet"]
CLI_MISUSES = {
    "out-a-file": (lambda t, c: TRAIN + ["--out", _a_file(t), "--data-cache", c], "--out",
                   r"expected a folder, got the file '.*a_file'$"),
    "out-empty": (lambda t, c: TRAIN + ["--out", "", "--data-cache", c], "--out", r"expected a folder path, got ''$"),
    "data-cache-a-file": (lambda t, c: TRAIN + ["--out", str(t / "o"), "--data-cache", _a_file(t)], "--data-cache",
                          r"expected a folder path, got the file '.*a_file'$"),
    "data-cache-empty": (lambda t, c: TRAIN + ["--out", str(t / "o"), "--data-cache", ""], "--data-cache",
                         r"expected a folder path, got ''$"),
    "threads-zero": (lambda t, c: TRAIN + ["--out", str(t / "o"), "--threads", "0", "--data-cache", c], "--threads",
                     r"expected an integer >= 1, got 0$"),
    "device-unknown": (lambda t, c: TRAIN + ["--out", str(t / "o"), "--device", "tpu:x", "--data-cache", c],
                       "--device", r"expected a torch device such as 'cpu' or 'cuda', got 'tpu:x'$"),
    "epochs-negative": (lambda t, c: TRAIN + ["--out", str(t / "o"), "--epochs", "-1", "--data-cache", c], "--epochs",
                        r"expected an integer >= 0, got -1$"),
    "out-of-a-previous-run": (lambda t, c: TRAIN + ["--out", _previous_run(t), "--data-cache", c], "--out",
                              r"'.*run' holds a previous run \(last\.pt\); pass --resume to continue it or "
                              r"--overwrite to replace it$"),
    "resume-damaged-last": (lambda t, c: TRAIN + ["--out", _previous_run(t), "--resume", "--data-cache", c], "resume",
                            r"checkpoint: '.*last\.pt' is not a readable checkpoint .*; pass --overwrite instead of "
                            r"--resume to start '.*run' afresh$"),
    "eval-checkpoint-missing": (lambda t, c: ["lista", "eval", "--checkpoint", str(t / "nope.pt")], "checkpoint",
                                r"no file at '.*nope\.pt'"),
    "eval-checkpoint-text": (lambda t, c: ["lista", "eval", "--checkpoint", _text_file(t)], "checkpoint",
                             r"'.*notes\.pt' is not a readable checkpoint"),
    "robustness-checkpoint-empty-folder": (lambda t, c: ["lista", "robustness", "--checkpoint", str(t)], "checkpoint",
                                           r"no best\.pt or last\.pt in the directory '.*'"),
    "reproduce-time-budget-negative": (
        lambda t, c: ["reproduce", "lista", "--preset", "tiny", "--out", str(t / "r"), "--time-budget", "-5",
                      "--data-cache", c], "--time-budget", r"expected a number of seconds > 0, got -5(\.0)?$"),
}


@pytest.fixture(scope="module")
def cli_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data-cache"))


@pytest.mark.filterwarnings("ignore:data. dropped:UserWarning")
@pytest.mark.parametrize("case", list(CLI_MISUSES))
def test_cli_misuse_is_one_line_naming_the_argument(case, tmp_path, cli_cache, capsys):
    argv, arg, detail = CLI_MISUSES[case]
    assert cli.main(argv(tmp_path, cli_cache)) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("sdu-ext: error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    message = errors[0][len("sdu-ext: error: "):]
    assert message.startswith(f"{arg}: "), message
    assert re.search(detail, message[len(arg) + 2:]), f"{message!r} does not match {detail!r}"


def test_the_bad_input_tables_cover_at_least_40_cases():
    assert len(MISUSES) + len(CLI_MISUSES) >= 40


def test_cli_resume_of_a_damaged_run_fails_before_the_data_is_prepared(tmp_path, monkeypatch, capsys):
    from sdu_ext.experiments import lista

    def prepare_data(*args, **kwargs):
        raise AssertionError("the data set was prepared before last.pt was checked")

    monkeypatch.setattr(lista, "prepare_data", prepare_data)
    assert cli.main(TRAIN + ["--out", _previous_run(tmp_path), "--resume", "--data-cache", str(tmp_path / "c")]) == 2
    assert "sdu-ext: error: resume: checkpoint: " in capsys.readouterr().err


def test_negative_norms_check_stays_out_of_compile_and_vmap():
    """The value check of descent_violations runs in eager only: compiled and vmapped calls
    on valid norms give the eager values."""
    norms = torch.rand(4, 6, dtype=f64) + 0.1
    eager = ops.descent_violations(norms, 0.05)[0]
    torch._dynamo.reset()
    compiled = torch.compile(lambda n: ops.descent_violations(n, 0.05)[0], fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(norms), eager)
    stacked = torch.stack([norms, 2 * norms])
    batched = torch.vmap(lambda n: ops.descent_violations(n, 0.05)[0])(stacked)
    torch.testing.assert_close(batched[0], eager)
