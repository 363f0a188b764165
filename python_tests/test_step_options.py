"""The training step's options: ``TrainConfig.compile`` (the step's forward, loss, constraints and
Lagrangian under torch.compile) trains the same trajectory as the eager step, resident data
changes nothing but where batches are gathered, and ``matmul_precision`` holds during the step
only. CUDA versions (CUDA graphs, data on the GPU, TF32) are in test_cuda_training.py."""
import pytest
import torch

import ddp_worker as W
from sdu_ext.models import LISTA, LogGradientNoise
from sdu_ext.train import DescentConstraints, PrimalDualTrainer, TrainConfig
from sdu_ext.train.data import TrainingData, train_batches


def _trainer(noise=True, device="cpu", **kw):
    D, train, val = W.make_problem(seed=5, n_train=192, n_val=64)
    model = LISTA(D, W.ALPHA, W.L, init="ista")
    hook = LogGradientNoise(model.D, sigma=0.5, generator=torch.Generator().manual_seed(2)) if noise else None
    # eps 0.3: more than the ISTA layers give, so the multipliers become active
    cfg = TrainConfig(**{**dict(epochs=2, batch_size=64, lr=3e-3, lr_dual=1.0, eps=0.3, seed=0, device=device), **kw})
    return PrimalDualTrainer(model, train, val, cfg, DescentConstraints("distance"), noise=hook)


def _assert_same_run(a, b, rtol):
    """Two trained trainers: same multipliers, weights and history (to ``rtol``)."""
    nu_a, nu_b = a.multipliers["descent"], b.multipliers["descent"]
    assert nu_a.max() > 0, "the test needs active constraints"
    torch.testing.assert_close(nu_b, nu_a, rtol=rtol, atol=1e-7)
    pb = dict(b.model.named_parameters())
    for name, p in a.model.named_parameters():
        torch.testing.assert_close(pb[name].detach().cpu(), p.detach().cpu(), rtol=rtol, atol=1e-7, msg=name)
    assert len(a.history) == len(b.history)
    for ra, rb in zip(a.history, b.history):
        for key in ("train_loss", "val_loss", "lagrangian"):
            assert rb[key] == pytest.approx(ra[key], rel=rtol), key


def test_compiled_step_trains_the_eager_trajectory():
    """compile='default' (inductor; the noise hook's generator stays eager): two epochs of
    constrained + noise training agree with the eager run to float32 rounding, and the model
    itself is not wrapped (checkpoints keep the plain keys)."""
    from torch._dynamo.utils import counters
    eager, compiled = _trainer(), _trainer(compile="default")
    eager.fit()
    counters.clear()
    compiled.fit()
    assert counters["stats"]["unique_graphs"] > 0, "nothing was compiled"
    _assert_same_run(eager, compiled, rtol=1e-5)
    assert not hasattr(compiled.model, "_orig_mod")
    assert compiled.objective.mode == "default"


def test_resident_data_changes_nothing_on_the_cpu():
    a, b = _trainer(resident_data=True), _trainer(resident_data=False)
    a.fit()
    b.fit()
    _assert_same_run(a, b, rtol=0)


def test_place_moves_indices_in_one_piece_or_not_at_all():
    x, y = torch.randn(10, 3), torch.randn(10, 2)
    data = TrainingData((x, y), "train_data").keep_on("cpu")
    batches = train_batches(10, 4, seed=0, epoch=0)
    assert data.place(batches) is batches  # already where the data live
    assert [len(b) for b in batches] == [4, 4, 2]
    got = data.get(batches[0], "cpu")
    torch.testing.assert_close(got[0], x[batches[0]])
    # a map-style dataset is collated on the host: indices stay there
    ds = TrainingData(torch.utils.data.StackDataset(x, y), "train_data").keep_on("cpu")
    assert ds.place(batches) is batches


def test_matmul_precision_holds_inside_the_step_only():
    seen = []

    def loss(out, batch):
        seen.append(torch.get_float32_matmul_precision())
        return 0.5 * (out - batch[1]).pow(2).sum(dim=1)

    before = torch.get_float32_matmul_precision()
    D, train, _ = W.make_problem(seed=5, n_train=64, n_val=8)
    trainer = PrimalDualTrainer(LISTA(D, W.ALPHA, W.L), train, None,
                                TrainConfig(epochs=1, batch_size=64, matmul_precision="medium"),
                                DescentConstraints("distance"), loss=loss)
    trainer.step(tuple(t[:64] for t in train))
    assert seen == ["medium"]
    assert torch.get_float32_matmul_precision() == before


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune"])
def test_cuda_graph_modes_are_refused_under_ddp(monkeypatch, mode):
    from sdu_ext.train import trainer as trainer_module
    monkeypatch.setattr(trainer_module, "world_and_rank", lambda: (2, 0))
    with pytest.raises(ValueError, match=rf"^compile: '{mode}' replays CUDA graphs, not supported under DDP"):
        _trainer(compile=mode)
