"""The fast training path (issue 13) against the unoptimised one: fused Adam against the
single-tensor loop, the Gram form of the log-gradient noise rule against the residual form
and the float64 reference, a few trainer steps of the fast path against the slow path, and
the default thread count."""
import copy

import pytest
import torch

from sdu_ext.models import LISTA, LogGradientNoise, RescaledNoise
from sdu_ext.train import DescentConstraints, PrimalDualTrainer, TrainConfig
from sdu_ext.train.optim import build_optimizer, fused_supported
from sdu_ext.train.threads import available_cores, default_threads, thread_choice
from sdu_testing import check

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64


def spacing(t):
    """The distance from |t| to the next representable number (one unit in the last place)."""
    t = t.abs()
    return torch.nextafter(t, torch.full_like(t, float("inf"))) - t


# ---------------------------------------------------------------- fused Adam

# Bound in units in the last place of the largest of the old and the two new values, per step
# from the same state (the fused kernel orders the update's operations differently). Measured
# over 60 seeds with weight decay and parameter/gradient scales over 4 decades: up to 6
# (AdamW, float32), 4 otherwise; 1-2 for Adam without weight decay on unit-scale values.
ADAM_ULPS = {torch.float32: 8, F64: 8}


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_fused_adam_agrees_with_the_single_tensor_loop_to_a_few_ulps(rng, name, dtype):
    params = [(rng.randn(60, 30) * 10 ** float(rng.rand(1, low=-3, high=1))).to(dtype) for _ in range(3)]
    grads = [[(rng.randn(*p.shape) * 10 ** float(rng.rand(1, low=-2, high=1))).to(dtype) for p in params]
             for _ in range(3)]
    fused_p = [p.clone().requires_grad_() for p in params]
    loop_p = [p.clone().requires_grad_() for p in params]
    fused = build_optimizer(name, fused_p, 1e-3, {"weight_decay": 0.01})
    loop = build_optimizer(name, loop_p, 1e-3, {"weight_decay": 0.01, "fused": False})
    assert fused.param_groups[0]["fused"] and not loop.param_groups[0]["fused"]
    for step in grads:
        old = [p.detach().clone() for p in loop_p]
        for a, b, g in zip(fused_p, loop_p, step):
            a.grad, b.grad = g.clone(), g.clone()
        fused.step()
        loop.step()
        for o, a, b in zip(old, fused_p, loop_p):
            a, b = a.detach(), b.detach()
            ulps = (a - b).abs() / spacing(torch.maximum(o.abs(), torch.maximum(a.abs(), b.abs())))
            assert float(ulps.max()) <= ADAM_ULPS[dtype], f"{name} {dtype} [{rng!r}]"
        with torch.no_grad():  # the next step from the same state
            for a, b in zip(fused_p, loop_p):
                a.copy_(b)
        fused.load_state_dict(copy.deepcopy(loop.state_dict()))  # (load_state_dict shares tensors)
        fused.param_groups[0]["fused"] = True


def test_fused_only_by_default_and_where_supported():
    p = [torch.zeros(3, requires_grad=True)]
    assert fused_supported(p)
    assert not fused_supported([torch.zeros(3, dtype=torch.int64)])
    assert build_optimizer("Adam", p, 1e-3, {})
    for kw in ({"foreach": True}, {"fused": False}, {"differentiable": True}):
        assert not build_optimizer("Adam", p, 1e-3, kw).param_groups[0]["fused"]
    assert "fused" not in build_optimizer("SGD", p, 1e-3, {}).defaults or \
        not build_optimizer("SGD", p, 1e-3, {}).param_groups[0].get("fused")


# ---------------------------------------------------------------- the noise rule

@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_gram_form_equals_residual_form_and_reference(rng, dtype):
    n, m, B = 48, 64, 32
    D = torch.nn.functional.normalize(rng.randn(n, m), dim=0)
    size = torch.logspace(-3, 1, B, dtype=F64).unsqueeze(1)
    y, xs = rng.randn(B, m) * size, rng.randn(B, n) * size * 3
    expected = (y @ D.T - xs) @ D
    gram, plain = LogGradientNoise(D.to(dtype), gram=True), LogGradientNoise(D.to(dtype), gram=False)
    scale = float(expected.abs().max())
    for hook in (gram, plain):
        check(hook.gradient(y.to(dtype), xs.to(dtype)), expected, dtype, rng, "gradient", scale=scale)
    s = torch.log(torch.linalg.vector_norm(expected, dim=1)).clamp_min(0)
    check(gram.scale(y.to(dtype), xs.to(dtype)), s, dtype, rng, "scale")
    assert LogGradientNoise(D).uses_gram() and not LogGradientNoise(rng.randn(10, 40)).uses_gram()  # m <= 1.5 n


def test_gram_form_memo_follows_its_inputs(rng):
    n, m, B = 20, 24, 8
    D = rng.randn(n, m)
    hook = LogGradientNoise(D, gram=True)
    y, xs = rng.randn(B, m), rng.randn(B, n)
    first = hook.gradient(y, xs)
    torch.testing.assert_close(hook.gradient(y, xs), first, rtol=0, atol=0)
    xs.mul_(2)  # in place: the cached xs D is stale
    torch.testing.assert_close(hook.gradient(y, xs), (y @ D.T - xs) @ D, rtol=1e-12, atol=1e-12)
    other = rng.randn(B, n)  # a new tensor
    torch.testing.assert_close(hook.gradient(y, other), (y @ D.T - other) @ D, rtol=1e-12, atol=1e-12)
    hook.D.mul_(0.5)  # the dictionary in place: G and xs D are stale
    D2 = hook.D.clone()
    torch.testing.assert_close(hook.gradient(y, other), (y @ D2.T - other) @ D2, rtol=1e-12, atol=1e-12)
    hook.float()  # a new buffer (float32)
    got = hook.gradient(y.float(), other.float())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), (y @ D2.T - other) @ D2, rtol=1e-4, atol=1e-4)
    # the rescaled hook hands the inner one the same scaled xs for every layer of a forward
    outer = RescaledNoise(LogGradientNoise(D2, gram=True, generator=torch.Generator()), 100.0)
    outer(1, y, other)
    key = outer.inner._xs_memo._key
    outer(2, y, other)
    assert outer.inner._xs_memo._key[0][0] is key[0][0]
    copy.deepcopy(outer)(1, y, other)  # a copy starts with empty memos
    with torch.inference_mode():  # no version counter: the residual form, nothing cached
        fresh = LogGradientNoise(D2, gram=True)
        xi = other.clone()
        torch.testing.assert_close(fresh.gradient(y, xi), (y @ D2.T - xi) @ D2, rtol=1e-12, atol=1e-12)
        assert fresh._xs_memo._key is None


# ---------------------------------------------------------------- a few trainer steps

def trainer(fast, dtype=torch.float32, steps=4):
    g = torch.Generator().manual_seed(0)
    n, m, B, L = 40, 52, 64, 5
    D = torch.nn.functional.normalize(torch.randn(n, m, generator=g, dtype=F64), dim=0).to(dtype)
    codes = (torch.randn(4 * B, m, generator=g, dtype=F64) * (torch.rand(4 * B, m, generator=g) < 0.2)).to(dtype)
    x = codes @ D.T
    model = LISTA(D, 0.1, L, init="ista")
    noise = LogGradientNoise(model.D, sigma=0.5, gram=None if fast else False, generator=torch.Generator())
    cfg = TrainConfig(epochs=1, batch_size=B, lr=1e-3, lr_dual=0.5, seed=0,
                      optimizer_kwargs={} if fast else {"fused": False})
    t = PrimalDualTrainer(model, (x, codes), None, cfg, DescentConstraints("distance", "mean_ratio", eps=0.05),
                          noise=noise)
    t.fit()  # seeds the generators; then a few more steps through the public step()
    for i in range(steps):
        t.step((x[i * B:(i + 1) * B], codes[i * B:(i + 1) * B]))
    return t


def test_fast_steps_match_the_unoptimised_path():
    """Fused Adam and the Gram-form noise against the single-tensor loop and the residual form,
    float32, 8 steps: the same random draws, so only rounding differs (measured: 1e-7 of the
    weights' size); the weights must agree to 2e-6 of their size and the multipliers to 1e-6.
    A wrong noise scale or optimizer step moves them by far more."""
    fast, slow = trainer(True), trainer(False)
    assert fast.optimizer.param_groups[0]["fused"] and fast.noise.uses_gram()
    assert not slow.optimizer.param_groups[0]["fused"] and not slow.noise.uses_gram()
    x = fast.train_data.get(torch.arange(64), "cpu")[0]
    scale = fast.noise.scale(torch.zeros(64, 52), x)
    assert float((scale > 0).double().mean()) > 0.8 and float(scale.mean()) > 0.5, "the noise must be active"
    for (k, a), b in zip(fast.model.state_dict().items(), slow.model.state_dict().values()):
        if isinstance(a, torch.Tensor):
            assert float((a - b).abs().max()) <= 2e-6 * float(b.abs().max()), k
    torch.testing.assert_close(fast.multipliers["descent"], slow.multipliers["descent"], rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------- threads

def test_default_threads_leave_busy_cores_alone():
    cores = available_cores()
    assert cores >= 1
    assert thread_choice(load=0.0)[0] == cores
    assert thread_choice(load=cores + 5.0)[0] == 1
    threads, reason = thread_choice(load=0.4)
    assert threads == cores and f"of {cores} available cores" in reason and "load 0.4" in reason
    assert 1 <= default_threads() <= cores
