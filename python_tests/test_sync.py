"""Host reads of PrimalDualTrainer (TrainConfig.check_every): none inside a step, one per
check point, the same NonFiniteError as an immediate check, and training independent of it.

A host read is what would synchronise with an accelerator: on the CPU it is counted by
wrapping the Python entry points that copy a tensor's value to the host.
"""
import collections
import contextlib
import os

import pytest
import torch

import ddp_worker as W
from sdu_ext.models import LISTA, LogGradientNoise
from sdu_ext.train import (DescentConstraints, Multiplier, NonFiniteError, PrimalDualTrainer, TrainConfig,
                           load_checkpoint)

pytestmark = pytest.mark.usefixtures("one_thread")

N_TRAIN = 256
READS = ("item", "__float__", "__bool__", "__int__", "__index__", "__format__", "tolist", "numpy", "cpu",
         "nonzero")


@contextlib.contextmanager
def counting_reads():
    """Count the calls of every Tensor method in READS and of torch.nonzero (by name)."""
    counts = collections.Counter()

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    saved = {name: getattr(torch.Tensor, name) for name in READS}
    saved_nonzero = torch.nonzero
    try:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, counted(name, fn))
        torch.nonzero = counted("torch.nonzero", saved_nonzero)
        yield counts
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)
        torch.nonzero = saved_nonzero


def make_trainer(batches=32, tmp_path=None, forward=None, noise=None, multipliers=None, **kw):
    """A constrained LISTA (L=4) on 256 samples in ``batches`` batches per epoch; eps=0.6 keeps
    every multiplier active."""
    D, train, _ = W.make_problem(seed=0, n_train=N_TRAIN, n_val=16)
    torch.manual_seed(0)
    cfg = dict(epochs=1, batch_size=N_TRAIN // batches, lr=1e-3, lr_dual=0.2, eps=0.6, seed=0)
    if tmp_path is not None:
        cfg.update(checkpoint_dir=str(tmp_path), log_dir=str(tmp_path))
    cfg.update(kw)
    return PrimalDualTrainer(LISTA(D, W.ALPHA, W.L, init="ista"), train, None, TrainConfig(**cfg),
                             DescentConstraints("distance"), forward=forward, noise=noise,
                             multipliers=multipliers)


def reads_of_fit(batches, check_every):
    trainer = make_trainer(batches, check_every=check_every)
    with counting_reads() as counts:
        trainer.fit()
    return sum(counts.values()), dict(counts)


# The host reads of one epoch outside its steps (no validation data, dual step per batch):
# 1 the multipliers' check at the start of the epoch, 1 the state check before the checkpoint,
# 5 for the history row (mean batch loss, Lagrangian, constraint values, descending fractions,
# multipliers). Each check point adds exactly 1: the flags of its steps, read together.
EPOCH_READS = 7


def test_no_host_read_inside_a_step():
    total, counts = reads_of_fit(32, check_every=32)
    assert total == EPOCH_READS + 1, counts  # 32 steps, one check point (the epoch end)
    assert reads_of_fit(16, check_every=32)[0] == total  # half the steps, the same reads: 0 per step
    total8, counts8 = reads_of_fit(32, check_every=8)
    assert total8 == EPOCH_READS + 4, counts8  # check points after steps 8, 16, 24, 32
    # an immediate check reads twice per step: before the weight update, and after the dual step
    total1, counts1 = reads_of_fit(32, check_every=1)
    assert total1 == EPOCH_READS + 2 * 32, counts1


# ---------------------------------------------------------------- the same error, later

def poisoned(epoch, batch, layer, value=float("nan"), batches=16, only_layer=False):
    """A forward whose iterates at 0-based ``epoch``, ``batch`` hold ``value`` from 1-based
    ``layer`` on (a layer whose output turns non-finite), or at ``layer`` only."""
    calls = [0]

    def forward(model, b, noise):
        it = model(b[0], return_all=True, noise=noise)
        if calls[0] == epoch * batches + batch:
            mask = torch.zeros_like(it)
            mask[layer:layer + 1 if only_layer else None, 0, 0] = value
            it = it + mask
        calls[0] += 1
        return it
    return forward


def error_of(check_every, forward, **kw):
    trainer = make_trainer(16, forward=forward, epochs=3, check_every=check_every, **kw)
    with pytest.raises(NonFiniteError) as e:
        trainer.fit()
    return str(e.value), e.value.epoch, e.value.layer


@pytest.mark.parametrize("check_every", [8, 5, 100])
def test_deferred_nan_loss_names_epoch_batch_and_layer(check_every):
    want = ("training stopped: non-finite task loss (nan) at epoch 2, layer 3, batch 5 "
            "(the first non-finite iterate is the output of layer 3)")
    assert error_of(1, poisoned(1, 4, 3)) == (want, 2, 3)
    assert error_of(check_every, poisoned(1, 4, 3)) == (want, 2, 3)


def test_deferred_inf_constraint_value_names_the_layer():
    # an Inf in layer 2's output only: the loss stays finite, c_2 = r_2 / r_1 - (1 - eps) is Inf
    want = ("training stopped: non-finite constraint value c_2 (inf) of group 'descent' at epoch 1, "
            "layer 2, batch 11")
    forward = poisoned(0, 10, 2, float("inf"), only_layer=True)
    assert error_of(1, forward) == (want, 1, 2)
    assert error_of(8, poisoned(0, 10, 2, float("inf"), only_layer=True)) == (want, 1, 2)


class InfAtStep(torch.optim.SGD):
    """SGD on the multipliers whose 6th step writes inf into the second one."""

    def __init__(self, params):
        super().__init__(params, lr=0.1)
        self.steps = 0

    @torch.no_grad()
    def step(self, closure=None):
        super().step(closure)
        self.steps += 1
        if self.steps == 6:
            self.param_groups[0]["params"][0][1] = float("inf")


@pytest.mark.parametrize("check_every", [1, 4, 8])
def test_deferred_inf_multiplier_names_epoch_batch_and_layer(check_every):
    trainer = make_trainer(16, epochs=2, check_every=check_every,
                           multipliers={"descent": Multiplier(W.L, optimizer=InfAtStep)})
    want = ("training stopped: non-finite multiplier nu_2 (inf) of group 'descent' at epoch 1, layer 2, "
            "batch 6 (after the dual step)")
    with pytest.raises(NonFiniteError) as e:
        trainer.fit()
    assert (str(e.value), e.value.epoch, e.value.layer) == (want, 1, 2)


def test_no_checkpoint_from_a_nonfinite_step(tmp_path):
    # the NaN comes at the last batch of epoch 2, between check points: the epoch-end read stops
    # training before the checkpoint, which still holds epoch 1
    trainer = make_trainer(16, tmp_path, forward=poisoned(1, 15, 1), epochs=3, check_every=100)
    with pytest.raises(NonFiniteError, match=r"at epoch 2, layer 1, batch 16"):
        trainer.fit()
    state = load_checkpoint(os.path.join(tmp_path, "last.pt"))
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if isinstance(v, torch.Tensor))


def test_public_step_reads_at_once():
    trainer = make_trainer(16, forward=poisoned(0, 0, 1), check_every=100)
    D, (x, y), _ = W.make_problem(seed=0, n_train=N_TRAIN, n_val=16)
    with pytest.raises(NonFiniteError, match=r"non-finite task loss \(nan\) at epoch 1, layer 1 "):
        trainer.step((x[:16], y[:16]))


def test_public_step_without_reads():
    D, (x, y), _ = W.make_problem(seed=0, n_train=N_TRAIN, n_val=16)
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, N_TRAIN, 16)]
    eager, deferred = make_trainer(16, check_every=8), make_trainer(16, check_every=8)
    want = [eager.step(b) for b in batches]
    with counting_reads() as counts:
        got = [deferred.step(b, read=False) for b in batches]
    assert sum(counts.values()) == 2, counts  # the flags of calls 1-8 and 9-16
    for w, g in zip(want, got):
        assert g["loss"].dtype == g["lagrangian"].dtype == torch.float64
        assert (w["loss"], w["lagrangian"]) == (float(g["loss"]), float(g["lagrangian"]))
        assert torch.equal(w["constraints"]["descent"], g["constraints"]["descent"])
    for (k, a), b in zip(eager.model.named_parameters(), deferred.model.parameters()):
        assert torch.equal(a, b), k

    poisoned_trainer = make_trainer(16, forward=poisoned(0, 2, 4), check_every=8)
    for b in batches[:7]:
        poisoned_trainer.step(b, read=False)  # call 3 is bad; nothing is read before call 8
    with pytest.raises(NonFiniteError, match=r"non-finite task loss \(nan\) at epoch 1, layer 4 \(the first"):
        poisoned_trainer.step(batches[7], read=False)


# ---------------------------------------------------------------- training does not depend on it

@pytest.mark.parametrize("kw", [dict(), dict(resilient=True, dual_every="batch", lr_schedule="plateau"),
                                dict(dual_every="epoch")], ids=["batch", "resilient", "epoch"])
def test_weights_do_not_depend_on_check_every(kw):
    runs = []
    for check_every in (1, 8):
        D, _, _ = W.make_problem(seed=0, n_train=N_TRAIN, n_val=16)
        noise = LogGradientNoise(D, 0.5, generator=torch.Generator().manual_seed(1))
        trainer = make_trainer(16, noise=noise, epochs=2, check_every=check_every, **kw)
        history = [{k: v for k, v in row.items() if k != "time_s"} for row in trainer.fit()]
        weights = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
        runs.append((weights, trainer.multipliers, trainer.slacks, history))
    (w1, nu1, u1, h1), (w8, nu8, u8, h8) = runs
    assert w1 and w1.keys() == w8.keys() and all(torch.equal(w1[k], w8[k]) for k in w1)
    assert all(torch.equal(nu1[k], nu8[k]) and torch.equal(u1[k], u8[k]) for k in nu1)
    assert h1 == h8
    assert any(v > 0 for k, v in h1[-1].items() if k.startswith("nu_")), h1[-1]  # the dual side is active


@pytest.mark.parametrize("bad", [0, -3, 2.0, "8", True, None])
def test_check_every_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match=rf"check_every: expected an integer >= 1, got {bad!r}"):
        TrainConfig(check_every=bad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_nonfinite_layers_matches_elementwise_check(dtype, rng):
    from sdu_ext.train.finite import nonfinite_layers
    bad = [float("nan"), float("inf"), -float("inf")]
    for _ in range(20):
        it = rng.randn(6, 5, 33).to(dtype)
        for _ in range(int(rng.randint(0, 4, (1,)))):
            where = tuple(int(rng.randint(0, s, (1,))) for s in it.shape)
            it[where] = bad[int(rng.randint(0, 3, (1,)))]
        want = (~torch.isfinite(it)).flatten(1).any(dim=1)
        assert torch.equal(nonfinite_layers(it), want), f"[{rng!r}]"
