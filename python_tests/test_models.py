"""sdu_ext.models: the unrolled models (LISTA, LISTA-CP, ALISTA, ISTA, FISTA) against
hand-written solver loops, their shared interface (shapes, dtypes, devices, iterate
layout), the noise hooks, torch.compile, autocast and configuration errors."""
import io
import math

import pytest
import torch

from sdu_ext import ops
from sdu_ext import reference as R
from sdu_ext.models import ALISTA, FISTA, ISTA, LISTA, LISTA_CP, FixedNoise, LogGradientNoise
from sdu_testing import DEVICES, check, up

F64 = torch.float64
N, M, B, L, ALPHA = 12, 20, 6, 4, 0.05


def make_dictionary(rng, n, m, dtype=F64, device="cpu"):
    D = rng.randn(n, m)
    return (D / D.norm(dim=0, keepdim=True)).to(dtype=dtype, device=device)


def lipschitz(D):
    return float(torch.linalg.matrix_norm(up(D), ord=2)) ** 2


def ista_loop(D, x, alpha, num_layers, y0=None, W=None, step=None):
    """Iterates (L+1, B, m) of y <- soft(y - step * W^T (D y - x), alpha * step), by hand
    (W = D and step = 1/Lip: plain ISTA)."""
    D, x = up(D), up(x)
    step = 1.0 / lipschitz(D) if step is None else step
    W = D if W is None else up(W)
    y = torch.zeros(x.shape[0], D.shape[1], dtype=F64) if y0 is None else up(y0)
    out = [y]
    for _ in range(num_layers):
        v = y - step * ((y @ D.T - x) @ W)
        y = torch.sign(v) * torch.clamp(v.abs() - alpha * step, min=0)
        out.append(y)
    return torch.stack(out)


def fista_loop(D, x, alpha, num_layers):
    D, x = up(D), up(x)
    lip = lipschitz(D)
    y = torch.zeros(x.shape[0], D.shape[1], dtype=F64)
    z, t, out = y, 1.0, [y]
    for _ in range(num_layers):
        v = z - ((z @ D.T - x) @ D) / lip
        y_new = torch.sign(v) * torch.clamp(v.abs() - alpha / lip, min=0)
        t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
        z = y_new + (t - 1) / t_new * (y_new - y)
        y, t = y_new, t_new
        out.append(y)
    return torch.stack(out)


# id -> builder(D) -> model; the table every interface test runs over
MODELS = {
    "lista-ista": lambda D: LISTA(D, ALPHA, L),
    "lista-paper": lambda D: LISTA(D, ALPHA, L, init="paper", generator=torch.Generator().manual_seed(1)),
    "lista-tied": lambda D: LISTA(D, ALPHA, L, tied=True),
    "lista-cp": lambda D: LISTA_CP(D, ALPHA, L),
    "alista": lambda D: ALISTA(D, ALPHA, L),
    "ista": lambda D: ISTA(D, ALPHA, L),
    "fista": lambda D: FISTA(D, ALPHA, L),
}
LEARNED = {"lista-ista", "lista-paper", "lista-tied", "lista-cp", "alista"}


def run(model, x, **kw):
    """model(x, **kw) with a fixed generator, so random initial points repeat."""
    return model(x, generator=torch.Generator().manual_seed(7), **kw)


# ------------------------------------------------------------------ exactness

@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("num_layers", [1, 7])
def test_ista_init_lista_equals_ista_iterations(rng, tied, num_layers):
    D = make_dictionary(rng, N, M)
    x = rng.randn(B, N)
    alpha = 0.5  # large enough that both sides of the threshold occur
    model = LISTA(D, alpha, num_layers, tied=tied)
    expected = ista_loop(D, x, alpha, num_layers)
    got = model(x, return_all=True)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12, msg=lambda m: f"{m} [{rng!r}]")
    torch.testing.assert_close(model(x), expected[-1], rtol=0, atol=1e-12)
    assert (got[-1] == 0).any() and (got[-1] != 0).any(), "exercise both sides of the threshold"


@pytest.mark.parametrize("name,loop", [("ista", ista_loop), ("fista", fista_loop), ("lista-cp", ista_loop)])
def test_classic_models_equal_hand_loops(rng, name, loop):
    D = make_dictionary(rng, N, M)
    x = rng.randn(B, N)
    got = MODELS[name](D)(x, return_all=True)
    torch.testing.assert_close(got, loop(D, x, ALPHA, L), rtol=0, atol=1e-12,
                               msg=lambda m: f"{name}: {m} [{rng!r}]")


def test_fista_differs_from_ista_and_converges_faster(rng):
    D = make_dictionary(rng, N, M)
    x = rng.randn(B, N)
    lasso = ISTA(D, ALPHA, 1).problem
    fista, ista = FISTA(D, ALPHA, 60)(x), ISTA(D, ALPHA, 60)(x)
    assert lasso.value(fista, x).sum() < lasso.value(ista, x).sum(), f"[{rng!r}]"


def test_explicit_initial_point(rng):
    D = make_dictionary(rng, N, M)
    x, y0 = rng.randn(B, N), rng.randn(B, M)
    for name, model in (("lista", LISTA(D, ALPHA, L)), ("ista", ISTA(D, ALPHA, L))):
        got = model(x, return_all=True, y0=y0)
        assert torch.equal(got[0], y0), name
        torch.testing.assert_close(got, ista_loop(D, x, ALPHA, L, y0=y0), rtol=0, atol=1e-12)


# ------------------------------------------------------------------ interface

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", MODELS)
def test_shapes_dtypes_devices_and_layout(rng, name, dtype, device):
    D = make_dictionary(rng, N, M, dtype, device)
    model = MODELS[name](D)
    assert model.D.dtype == dtype and model.D.device.type == device
    for p in model.parameters():
        assert p.dtype == dtype and p.device.type == device, name
    x = rng.make((B, N), dtype, device)
    y = run(model, x)
    ys = run(model, x, return_all=True)
    assert y.shape == (B, M) and y.dtype == dtype and y.device.type == device
    assert ys.shape == (L + 1, B, M) and ys.dtype == dtype and ys.device.type == device
    assert torch.equal(ys[-1], y), "forward(x) must be the last iterate of return_all"
    if name != "lista-paper":
        assert torch.equal(ys[0], torch.zeros_like(ys[0])), "index 0 is the initial point y0 = 0"
    # the iterates feed the descent constraints, and gradients reach every weight
    values, per_sample = ops.descent_constraints(ys, None, 0.05, "difference")
    assert values.shape == (L,) and per_sample.shape == (L, B)
    if name in LEARNED:
        (values.sum() + y.pow(2).sum()).backward()
        for pname, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}.{pname}"
    else:
        assert not list(model.parameters())
    assert run(model, x[:0]).shape == (0, M)


def test_parameter_counts_and_state_dict_roundtrip(rng):
    D = make_dictionary(rng, N, M, torch.float32)
    counts = {
        "lista-ista": L * (M * M + M * N + M), "lista-tied": M * M + M * N + M,
        "lista-cp": L * (N * M + M), "alista": 2 * L, "ista": 0, "fista": 0,
    }
    for name, count in counts.items():
        assert sum(p.numel() for p in MODELS[name](D).parameters()) == count, name
    a = LISTA(D, ALPHA, L, init="paper", generator=torch.Generator().manual_seed(3))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = LISTA(D, ALPHA, L)
    b.load_state_dict(torch.load(buf))
    x = rng.make((B, N), torch.float32)
    assert torch.equal(run(a, x), run(b, x)), "the state dict carries init (scale, initial point)"
    assert b.init == "paper" and b.scale == 100.0
    assert "init='paper'" in repr(a) and "num_layers=4" in repr(a)


def test_paper_init_statistics_and_output_scaling(rng):
    n, m = 64, 96
    D = make_dictionary(rng, n, m)
    model = LISTA(D, 0.5, 3, init="paper", generator=torch.Generator().manual_seed(rng.seed))
    assert model.scale == 100.0
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert abs(float(weights.mean())) < 1e-3 and abs(float(weights.std()) - 0.01) < 5e-4, f"[{rng!r}]"
    x = rng.randn(512, n)
    ys = model(x, return_all=True, generator=torch.Generator().manual_seed(11)).detach()
    # y_0 ~ N(0, I) in the scaled domain, returned divided by 100
    assert abs(float(ys[0].std()) - 0.01) < 5e-4 and abs(float(ys[0].mean())) < 5e-4
    # the same draw again reproduces; a different seed does not
    assert torch.equal(ys, model(x, return_all=True, generator=torch.Generator().manual_seed(11)))
    assert not torch.equal(ys[0], model(x, return_all=True, generator=torch.Generator().manual_seed(12))[0])
    # by hand: the layers see 100 x and the 100-scaled codes
    y = torch.randn(512, m, generator=torch.Generator().manual_seed(11), dtype=F64)
    expected = [y]
    for layer in model.layers:
        y = R.lista_layer(y, 100 * x, layer.W1.detach(), layer.W2.detach(), layer.theta.detach())
        expected.append(y)
    torch.testing.assert_close(ys, torch.stack(expected) / 100, rtol=1e-12, atol=1e-14)


def test_tied_shares_one_set_of_weights(rng):
    D = make_dictionary(rng, N, M)
    model = LISTA(D, ALPHA, L, tied=True, init="paper")
    assert len(model.layers) == 1 and len(list(model.parameters())) == 3
    layer = model.layers[0]
    x = rng.randn(B, N)
    ys = run(model, x, return_all=True)
    for l in range(L):  # every layer applies the one shared layer
        expected = R.lista_layer(100 * ys[l], 100 * x, layer.W1, layer.W2, layer.theta) / 100
        torch.testing.assert_close(ys[l + 1], expected, rtol=1e-12, atol=1e-14)
    ys[-1].sum().backward()
    assert layer.W1.grad is not None and layer.W1.grad.abs().sum() > 0


def test_alista_analytic_weight(rng):
    D = make_dictionary(rng, N, M)
    model = ALISTA(D, ALPHA, L)
    W = model.W
    assert W.shape == (N, M) and not W.requires_grad
    assert {name for name, _ in model.named_parameters()} == {"gamma", "theta"}
    assert model.gamma.shape == (L,) and model.theta.shape == (L,)
    torch.testing.assert_close(torch.diagonal(W.T @ D), torch.ones(M, dtype=F64), rtol=0, atol=1e-10)
    # optimality: moving any column inside {d_i^T w = 1} cannot lower ||D^T w||
    v = rng.randn(N, M)
    v = v - D * ((D * v).sum(0) / (D * D).sum(0))   # d_i^T v_i = 0
    for t in (1e-3, -1e-3, 1.0):
        assert ((D.T @ (W + t * v)).pow(2).sum(0) >= (D.T @ W).pow(2).sum(0) - 1e-10).all()
    # an ISTA-like start: step gamma = 1 / ||W^T D||_2 and threshold alpha * gamma
    torch.testing.assert_close(model.theta, ALPHA * model.gamma)
    # float32 dictionaries: the weight is computed in float64 and rounded once
    W32 = ALISTA.analytic_weight(D.float())
    assert W32.dtype == torch.float32
    torch.testing.assert_close(torch.diagonal(W32.T @ D.float()), torch.ones(M), rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["overcomplete-rows", "dependent-atoms", "zero-atom"])
def test_alista_rank_deficient_dictionaries(rng, kind):
    if kind == "overcomplete-rows":     # n > m: D D^T is singular
        D = make_dictionary(rng, 30, 10)
    elif kind == "dependent-atoms":     # rank 5 < n = 12
        D = rng.randn(N, 5) @ rng.randn(5, M)
        D = D / D.norm(dim=0)
    else:
        D = make_dictionary(rng, N, M)
        D[:, 3] = 0
    W = ALISTA.analytic_weight(D)
    assert torch.isfinite(W).all()
    diag = torch.diagonal(W.T @ D)
    nonzero = D.norm(dim=0) > 0
    torch.testing.assert_close(diag[nonzero], torch.ones_like(diag[nonzero]), rtol=0, atol=1e-8)
    if kind == "zero-atom":
        assert torch.equal(W[:, 3], torch.zeros(N, dtype=F64))
    else:  # the ridge only regularises: the pseudo-inverse solution
        Mp = torch.linalg.pinv(D @ D.T, hermitian=True)
        W_pinv = (Mp @ D) / (D * (Mp @ D)).sum(0)
        torch.testing.assert_close(W, W_pinv, rtol=1e-4, atol=1e-4, msg=lambda m: f"{m} [{rng!r}]")
    assert torch.isfinite(ALISTA(D, ALPHA, 2)(rng.randn(3, D.shape[0]))).all()


# ------------------------------------------------------------------ noise hooks

class Recorder:
    def __init__(self, hook):
        self.hook, self.calls = hook, []

    def __call__(self, layer, y, xs):
        self.calls.append(layer)
        return self.hook(layer, y, xs)


@pytest.mark.parametrize("name", ["ista", "lista-ista", "lista-cp", "alista", "fista"])
@pytest.mark.parametrize("rule", ["log-gradient", "fixed"])
def test_noise_changes_intermediate_layers_only(rng, name, rule):
    D = make_dictionary(rng, N, M)
    x = 10 * rng.randn(B, N)  # gradient norms > 1: the clamped log-rule perturbs every sample
    model = MODELS[name](D)
    gen = torch.Generator().manual_seed(rng.seed)
    hook = LogGradientNoise(D, generator=gen) if rule == "log-gradient" else FixedNoise(0.3, generator=gen)
    rec = Recorder(hook)
    clean = model(x, return_all=True)
    noisy = model(x, return_all=True, noise=rec)
    assert rec.calls == list(range(1, L)), "hooks run after layers 1..L-1 only"
    assert torch.equal(noisy[0], clean[0])
    for l in range(1, L + 1):
        assert not torch.allclose(noisy[l], clean[l]), f"layer {l} unchanged [{rng!r}]"
    if name == "ista":  # no noise after the last layer: it is one clean step from the noisy point
        last = ista_loop(D, x, ALPHA, 1, y0=noisy[L - 1])[-1]
        torch.testing.assert_close(noisy[L], last, rtol=0, atol=1e-12)
    # disabled: no hook, or sigma = 0, gives bit-identical iterates
    off = LogGradientNoise(D, sigma=0.0) if rule == "log-gradient" else FixedNoise(0.0)
    assert torch.equal(model(x, return_all=True, noise=off), clean)


@pytest.mark.parametrize("rule", ["log-gradient", "fixed"])
def test_noise_is_reproducible_with_a_generator(rng, rule):
    D = make_dictionary(rng, N, M)
    model = LISTA(D, ALPHA, L, init="paper")
    x = rng.randn(B, N)

    def hook(seed):
        gen = torch.Generator().manual_seed(seed)
        return LogGradientNoise(D, generator=gen) if rule == "log-gradient" else FixedNoise(0.5, generator=gen)

    a = run(model, x, return_all=True, noise=hook(5))
    assert torch.equal(a, run(model, x, return_all=True, noise=hook(5)))
    assert not torch.equal(a, run(model, x, return_all=True, noise=hook(6)))


def test_log_gradient_scale_rule_detached_and_negative_options(rng):
    D = make_dictionary(rng, N, M)
    size = torch.logspace(-5, 1, 4096, dtype=F64).unsqueeze(1)  # log-norms of both signs
    y, x = rng.randn(4096, M) * size, rng.randn(4096, N) * size
    xs = 100 * x
    s = torch.log(torch.linalg.vector_norm((y @ D.T - xs) @ D, dim=-1))
    assert (s < 0).any() and (s > 0).any(), "the test needs log-norms of both signs"
    clamp = LogGradientNoise(D, sigma=2.0)
    check(clamp.scale(y, xs), 2 * s.clamp_min(0), F64, rng, "clamped scale")
    check(LogGradientNoise(D, sigma=2.0, negative="abs").scale(y, xs), 2 * s.abs(), F64, rng, "abs scale")
    # the noise has the per-sample std; pooled over samples the normalised noise is N(0, 1)
    yr = y.clone().requires_grad_()
    out = LogGradientNoise(D, sigma=2.0, generator=torch.Generator().manual_seed(rng.seed))(1, yr, xs)
    big = s > 1
    z = (out - yr).detach()[big] / (2 * s[big]).unsqueeze(1)
    assert abs(float(z.std()) - 1) < 0.02 and abs(float(z.mean())) < 0.02, f"[{rng!r}]"
    assert torch.equal(out[s <= 0].detach(), y[s <= 0]), "clamp leaves samples with ||grad|| <= 1 alone"
    # detached: the hook passes gradients straight through (d out / d y = I)
    out.backward(torch.ones_like(out))
    assert torch.equal(yr.grad, torch.ones_like(y))
    # a zero gradient gives a finite scale under both rules
    y_opt, x_opt = torch.zeros(2, M, dtype=F64), torch.zeros(2, N, dtype=F64)
    assert torch.equal(clamp.scale(y_opt, x_opt), torch.zeros(2, dtype=F64))
    assert torch.isfinite(LogGradientNoise(D, negative="abs").scale(y_opt, x_opt)).all()


# ------------------------------------------------------------------ compile and autocast

@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compile_fullgraph_lista_forward_backward(rng, fresh_dynamo):
    D = make_dictionary(rng, N, M, torch.float32)
    x = rng.make((B, N), torch.float32)
    y_star = rng.make((B, M), torch.float32)

    def loss_and_grads(model, fn):
        ys = fn(x, return_all=True)
        values, _ = ops.descent_constraints(ys, y_star, 0.05, "mean_ratio")
        loss = 0.5 * (ys[-1] - y_star).pow(2).sum(-1).mean() + values.sum()
        return ys, torch.autograd.grad(loss, list(model.parameters()))

    model = LISTA(D, ALPHA, L)
    ys_e, g_e = loss_and_grads(model, model)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    ys_c, g_c = loss_and_grads(model, compiled)
    check(ys_c, up(ys_e), torch.float32, rng, "compiled iterates")
    for a, e in zip(g_c, g_e):
        check(a, up(e), torch.float32, rng, "compiled grad")


@pytest.mark.parametrize("name", ["lista-paper", "lista-cp", "alista", "fista"])
def test_compile_fullgraph_other_models_with_noise(rng, fresh_dynamo, name):
    D = make_dictionary(rng, N, M, torch.float32)
    model = MODELS[name](D)
    x = rng.make((B, N), torch.float32)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    # the global RNG (no generator) keeps the random initial point and noise traceable
    ys = compiled(x, return_all=True, noise=LogGradientNoise(D))
    assert ys.shape == (L + 1, B, M) and torch.isfinite(ys).all()
    if name != "lista-paper":
        check(compiled(x), up(model(x)), torch.float32, rng, f"compiled {name}")


@pytest.mark.parametrize("name", MODELS)
def test_autocast_bfloat16(rng, name):
    D = make_dictionary(rng, N, M, torch.float32)
    model = MODELS[name](D)
    x = rng.make((B, N), torch.float32)
    ref = run(model, x, return_all=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ys = run(model, x, return_all=True, noise=FixedNoise(0.0))
        noisy = run(model, x, return_all=True, noise=LogGradientNoise(D, generator=torch.Generator()))
    assert ys.dtype == noisy.dtype == torch.bfloat16 and ys.shape == (L + 1, B, M)
    assert torch.isfinite(noisy).all()
    check(ys, up(ref), torch.bfloat16, rng, f"{name} under autocast",
          tol=dict(rtol=5e-2, atol=5e-2))
    if name in LEARNED:
        ys[-1].float().pow(2).sum().backward()
        for pname, p in model.named_parameters():
            assert p.grad is not None and p.grad.dtype == torch.float32, f"{name}.{pname}"
    # float64 models ignore a CPU bfloat16 autocast, like torch's own layers
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert run(MODELS[name](D.double()), x.double()).dtype == F64


# ------------------------------------------------------------------ errors

def _bad_configs(D):
    return [
        (lambda: LISTA(D[0], ALPHA, L), r"^D: expected a 2-D floating tensor"),
        (lambda: ISTA(D.numpy(), ALPHA, L), r"^D: expected a 2-D floating tensor"),
        (lambda: FISTA(D.long(), ALPHA, L), r"^D: expected a 2-D floating tensor"),
        (lambda: LISTA_CP(torch.zeros(N, M), ALPHA, L), r"^D: expected a nonzero dictionary"),
        (lambda: LISTA(D, -0.1, L), r"^alpha: expected a non-negative value, got -0.1"),
        (lambda: ALISTA(D, float("nan"), L), r"^alpha: expected a non-negative value"),
        (lambda: LISTA(D, ALPHA, 0), r"^num_layers: expected an integer >= 1, got 0"),
        (lambda: ISTA(D, ALPHA, 2.5), r"^num_layers: expected an integer >= 1, got 2.5"),
        (lambda: LISTA_CP(D, ALPHA, True), r"^num_layers: expected an integer >= 1"),
        (lambda: LISTA(D, ALPHA, L, init="xavier"),
         r"^init: expected one of 'ista', 'paper', 'random', got 'xavier'"),
        (lambda: ISTA(D, ALPHA, L, step=0), r"^step: expected a positive number, got 0"),
        (lambda: ALISTA(D, ALPHA, L, ridge=-1), r"^ridge: expected a positive number, got -1"),
        (lambda: FixedNoise(-1.0), r"^sigma: expected a non-negative number, got -1.0"),
        (lambda: LogGradientNoise(D, sigma=-2), r"^sigma: expected a non-negative number"),
        (lambda: LogGradientNoise(D, negative="signed"), r"^negative: expected 'clamp' or 'abs', got 'signed'"),
        (lambda: LogGradientNoise(D[0]), r"^D: expected a 2-D floating tensor"),
    ]


def test_bad_configuration_raises_value_error_naming_the_argument(rng):
    D = make_dictionary(rng, N, M, torch.float32)
    for build, match in _bad_configs(D):
        with pytest.raises(ValueError, match=match):
            build()


@pytest.mark.parametrize("name", MODELS)
def test_bad_inputs_raise_value_error_naming_the_argument(rng, name):
    D = make_dictionary(rng, N, M, torch.float32)
    model = MODELS[name](D)
    x = rng.make((B, N), torch.float32)
    cases = [
        (lambda: model(rng.make((B, N + 1), torch.float32)), r"^x: expected shape \(B, 12\) = \(B, n\) with n = 12"),
        (lambda: model(x[0]), r"^x: expected shape \(B, 12\)"),
        (lambda: model(x.numpy()), r"^x: expected shape \(B, 12\).*ndarray"),
        (lambda: model(x.double()), r"^x: expected dtype torch.float32 \(the model's\), got torch.float64"),
        (lambda: model(x, y0=torch.zeros(B + 1, M)), r"^y0: expected shape \(6, 20\) = \(B, m\)"),
        (lambda: model(x, y0=torch.zeros(B, M, dtype=F64)), r"^y0: expected dtype torch.float32"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()
