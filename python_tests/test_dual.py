"""sdu_ext.train.dual and the public single step: the constraint values from per-layer sums
(against the float64 reference), Multiplier (projected ascent, resilient slack, any torch.optim
dual optimizer, state, finiteness, log columns), PrimalDualTrainer.step, initial multipliers,
shuffle=False, and the deprecated mode name."""
import functools
import warnings

import pytest
import torch

import ddp_worker as W
from sdu_ext import reference
from sdu_ext.models import LISTA
from sdu_ext.train import (DescentConstraints, Multiplier, PrimalDualTrainer, TrainConfig, atomic_save,
                           constraint_values, load_checkpoint, squared_error)
from sdu_ext.train.data import train_batches

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
L = W.L


@functools.lru_cache(maxsize=None)
def problem(dtype=torch.float64):
    return W.make_problem(seed=5, n_train=96, n_val=32, dtype=dtype)


# ---------------------------------------------------------------- constraint values

@pytest.mark.parametrize("form", reference.FORMS)
def test_constraint_values_from_chunk_sums_match_the_reference(rng, form):
    """Sums over any split of the samples give the reference values of the whole batch."""
    B, eps = 37, float(rng.rand(1, high=0.5))
    norms = rng.rand(L + 1, B, low=0.1, high=2.0)
    norms[2, 5] = 0.0  # a zero residual: the ratio forms floor the denominator
    expected, per_sample = reference.descent_violations(norms, eps, form)
    cuts = sorted(set(rng.randint(1, B, (3,)).tolist()))
    sample_sums, norm_sums = torch.zeros(L, dtype=F64), torch.zeros(L + 1, dtype=F64)
    for lo, hi in zip([0] + cuts, cuts + [B]):
        sample_sums += per_sample[:, lo:hi].sum(1)
        norm_sums += norms[:, lo:hi].sum(1)
    got = constraint_values(form, eps, B, sample_sums, norm_sums)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12, msg=lambda m: f"{rng}: {m}")


def test_constraint_values_gradient_of_ratio_of_means(rng):
    """The gradient through one part's sums is the gradient of the global value."""
    norms = rng.rand(L + 1, 20, low=0.1, high=2.0).requires_grad_()
    expected, _ = reference.descent_violations(norms, 0.1, "ratio_of_means")
    (g_ref,) = torch.autograd.grad(expected.sum(), norms)
    part = norms[:, :8].sum(1)
    rest = norms[:, 8:].sum(1).detach()
    got = constraint_values("ratio_of_means", 0.1, 20, None, part + rest)
    (g,) = torch.autograd.grad(got.sum(), norms)
    torch.testing.assert_close(g[:, :8], g_ref[:, :8], rtol=1e-12, atol=1e-12)
    assert torch.all(g[:, 8:] == 0)
    with pytest.raises(ValueError, match=r"^form: expected one of 'mean_ratio'"):
        constraint_values("ratio", 0.1, 20, None, part)


# ---------------------------------------------------------------- Multiplier

def test_multiplier_default_step_is_projected_ascent(rng):
    init = rng.rand(5, high=0.3)
    nu = Multiplier(init=init, lr=0.7)
    c = rng.randn(5)
    nu.step(c.float())
    assert nu.value.dtype == F64
    assert torch.equal(nu.value, (init + 0.7 * c.float().double()).clamp_min(0.0))
    assert (nu.value >= 0).all() and torch.equal(nu.slack, torch.zeros(5, dtype=F64))


def test_multiplier_resilient_slack_uses_the_values_before_the_step(rng):
    nu = Multiplier(init=[0.5, 0.0, 2.0], lr=0.3, resilient=True, resilient_cost=2.0)
    c1, c2 = rng.randn(3), rng.randn(3)
    nu.step(c1)
    u1 = (0.0 - 0.3 * (2.0 * 0.0 - torch.tensor([0.5, 0.0, 2.0], dtype=F64))).clamp_min(0)
    v1 = (torch.tensor([0.5, 0.0, 2.0], dtype=F64) + 0.3 * c1).clamp_min(0)
    assert torch.equal(nu.value, v1) and torch.equal(nu.slack, u1)
    nu.step(c2)
    assert torch.equal(nu.value, (v1 + 0.3 * (c2 - u1)).clamp_min(0))
    assert torch.equal(nu.slack, (u1 - 0.3 * (2.0 * u1 - v1)).clamp_min(0))


def test_multiplier_with_a_torch_optimizer(rng):
    c = [rng.randn(4) for _ in range(6)]
    plain = Multiplier(4, lr=0.2)
    sgd = Multiplier(4, optimizer=functools.partial(torch.optim.SGD, lr=0.2))
    adam = Multiplier(4, optimizer=functools.partial(torch.optim.Adam, lr=0.05))
    for ci in c:
        for m in (plain, sgd, adam):
            m.step(ci)
    torch.testing.assert_close(sgd.value, plain.value, rtol=1e-15, atol=1e-15)
    assert (adam.value >= 0).all() and adam.value.dtype == F64
    # the state (with Adam's moments) round-trips: two more steps agree exactly
    copy = Multiplier(4, optimizer=functools.partial(torch.optim.Adam, lr=0.05))
    copy.load_state_dict(adam.state_dict())
    for ci in c[:2]:
        adam.step(ci)
        copy.step(ci)
    assert torch.equal(copy.value, adam.value)


def test_multiplier_checks_logs_and_reduction():
    nu = Multiplier(init=[0.0, 1.5], layers=[2, 4], resilient=True)
    assert nu.log_columns("img_") == {"img_nu_2": 0.0, "img_nu_4": 1.5, "img_u_2": 0.0, "img_u_4": 0.0}
    assert nu.nonfinite() is None
    nu.load_state_dict({"value": torch.tensor([0.0, float("nan")]), "slack": torch.zeros(2)})
    assert nu.nonfinite()[:2] == ("multiplier nu", 4)
    assert nu.all_reduce() is nu  # one process: nothing to average
    for make, match in [(lambda: Multiplier(init=[-1.0]), r"^init: expected finite multipliers >= 0"),
                        (lambda: Multiplier(init=[float("inf")]), r"^init: expected finite"),
                        (lambda: Multiplier(3, init=[0.0]), r"^init: expected shape \(3,\)"),
                        (lambda: Multiplier(), r"^size: expected an integer"),
                        (lambda: Multiplier(2, lr=-1), r"^lr: expected a finite number >= 0"),
                        (lambda: Multiplier(2, optimizer=3), r"^optimizer: expected a factory"),
                        (lambda: Multiplier(2).step(torch.zeros(3)), r"^c: expected constraint values of shape")]:
        with pytest.raises(ValueError, match=match):
            make()


# ---------------------------------------------------------------- trainer: step, initial multipliers

def lista(seed=0):
    torch.manual_seed(seed)
    return LISTA(problem()[0], W.ALPHA, L, init="ista")


def test_step_with_initial_multipliers_matches_the_lagrangian_gradient(rng):
    """One SGD step of the trainer = one step on loss + sum nu c computed from the reference."""
    D, (x, y), _ = problem()
    init = rng.rand(L, high=2.0)
    model, expected_model = lista(), lista()
    cfg = TrainConfig(batch_size=16, lr=0.05, lr_dual=0.3, optimizer="SGD", eps=0.1)
    trainer = PrimalDualTrainer(model, (x, y), config=cfg, constraints=DescentConstraints("distance", "ratio_of_means"),
                                multipliers={"descent": init})
    assert torch.equal(trainer.multipliers["descent"], init)
    batch = (x[:16], y[:16])
    out = trainer.step(batch)

    it = expected_model(batch[0], return_all=True)
    c, _ = reference.descent_constraints(it, batch[1], 0.1, "ratio_of_means")
    lagrangian = squared_error(it[-1], batch).mean() + (init * c).sum()
    lagrangian.backward()
    with torch.no_grad():
        for p in expected_model.parameters():
            p -= 0.05 * p.grad
    for (k, a), b in zip(model.named_parameters(), expected_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda m: f"{k}: {m}")
    assert not torch.equal(model.layers[-1].W1, lista().layers[-1].W1)  # the step moved the weights
    torch.testing.assert_close(out["constraints"]["descent"], c.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(trainer.multipliers["descent"], (init + 0.3 * c.detach()).clamp_min(0),
                               rtol=1e-10, atol=1e-12)
    assert out["loss"] == pytest.approx(float(squared_error(it[-1], batch).mean().detach()), rel=1e-12)


def test_fit_without_shuffle_equals_public_steps_in_order():
    D, train, val = problem()
    kw = dict(epochs=2, batch_size=40, lr=1e-2, lr_dual=0.5, eps=0.05, seed=3, shuffle=False)
    fitted = PrimalDualTrainer(lista(), train, val, TrainConfig(**kw), DescentConstraints())
    fitted.fit()
    stepped = PrimalDualTrainer(lista(), train, val, TrainConfig(**kw), DescentConstraints())
    for _ in range(2):
        for start in range(0, 96, 40):
            stepped.step(tuple(t[start:start + 40] for t in train))
    for k, v in fitted.model.named_parameters():
        assert torch.equal(v, stepped.model.get_parameter(k)), k
    assert torch.equal(fitted.multipliers["descent"], stepped.multipliers["descent"])
    assert [b.tolist() for b in train_batches(10, 4, seed=0, epoch=3, shuffle=False)] == \
        [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert sorted(torch.cat(train_batches(10, 4, seed=0, epoch=3)).tolist()) == list(range(10))


def test_trainer_with_an_adam_multiplier_resumes_exactly(tmp_path):
    D, train, val = problem()

    def run(epochs, directory, resume=False):
        nu = Multiplier(L, optimizer=functools.partial(torch.optim.Adam, lr=0.05))
        cfg = TrainConfig(epochs=epochs, batch_size=32, lr=1e-2, eps=0.05, seed=1, checkpoint_dir=str(directory))
        t = PrimalDualTrainer(lista(), train, val, cfg, DescentConstraints(), multipliers={"descent": nu})
        t.fit(resume=resume)
        return t

    whole = run(3, tmp_path / "a")
    run(1, tmp_path / "b")
    resumed = run(3, tmp_path / "b", resume=True)
    assert torch.equal(whole.multipliers["descent"], resumed.multipliers["descent"])
    assert whole.multipliers["descent"].abs().sum() > 0
    for k, v in whole.model.named_parameters():
        assert torch.equal(v, resumed.model.get_parameter(k)), k


def test_bad_initial_multipliers_are_named():
    D, train, _ = problem()
    for given, match in [({"image": [0.0] * L}, r"^multipliers: expected group names \['descent'\]"),
                         ({"descent": [0.0] * 3}, r"^multipliers: group 'descent': init: expected shape \(4,\)"),
                         ({"descent": Multiplier(2)}, r"^multipliers: expected a Multiplier of size 4")]:
        with pytest.raises(ValueError, match=match):
            PrimalDualTrainer(lista(), train, None, TrainConfig(), DescentConstraints(), multipliers=given)


# ---------------------------------------------------------------- one word per concept

def test_unconstrained_is_a_deprecated_alias_of_standard_and_old_checkpoints_resume(tmp_path):
    with pytest.warns(DeprecationWarning, match="'unconstrained' is deprecated, use 'standard'"):
        assert TrainConfig(mode="unconstrained").mode == "standard"
    D, train, val = problem()
    kw = dict(batch_size=32, lr=1e-2, seed=2, checkpoint_dir=str(tmp_path))
    PrimalDualTrainer(lista(), train, val, TrainConfig(mode="standard", epochs=1, **kw)).fit()
    # a checkpoint written before the rename and before the shuffle field
    state = load_checkpoint(tmp_path / "last.pt")
    state["config"]["mode"] = "unconstrained"
    del state["config"]["shuffle"]
    atomic_save(state, tmp_path / "last.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed = PrimalDualTrainer(lista(), train, val, TrainConfig(mode="standard", epochs=2, **kw))
        resumed.fit(resume=True)
    assert resumed.epoch == 2 and len(resumed.history) == 2
