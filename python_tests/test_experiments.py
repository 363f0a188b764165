"""The experiments layer on what a report could get wrong without any number looking odd:
the history's per-layer descending columns against ``trainer.evaluate()`` and the report's
own metrics (a shift by one layer must fail), every variant of a seed starting from the same
weights, the learning-rate schedule (its actions, and a resumed run continuing it exactly)
and the time budget."""
import dataclasses
import time
import types

import pytest
import torch

from sdu_ext import presets
from sdu_ext.evaluate.metrics import evaluate_model
from sdu_ext.experiments import inpaint, lista
from sdu_ext.experiments.common import Budget, CLIError, train_variant
from sdu_ext.train import PrimalDualTrainer

pytestmark = pytest.mark.filterwarnings("ignore:data. dropped:UserWarning")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return lista.prepare_data(presets.get_preset("tiny").data, str(tmp_path_factory.mktemp("cache")))


def tiny(**train):
    """The tiny LISTA preset with a deterministic initial point (y0_std = 0, random weights,
    so that the layers differ and a shift by one layer changes the per-layer numbers)."""
    p = presets.get_preset("tiny")
    p.model = dataclasses.replace(p.model, y0_std=0.0)
    p.train = dataclasses.replace(p.train, **train)
    return p


def shifted(values):
    return values[1:] + values[:1]


def test_history_descending_columns_match_evaluate(data):
    preset = tiny(epochs=2, restore_best=False, seed=0, progress=False, tensorboard=False)
    exp = lista.ListaExperiment(preset, data)
    model = exp.build_model(0)
    trainer = PrimalDualTrainer(model, data.train, data.val, preset.train, exp.constraints(model),
                                noise=exp.build_noise(model, 0))
    history = trainer.fit()
    L = preset.model.num_layers
    logged = [history[-1][f"desc_val_{l}"] for l in range(1, L + 1)]
    ev = trainer.evaluate(data.val)["constraints"]["descent"]["descending"]
    assert logged == pytest.approx(ev, abs=1e-12)
    # the report's per-layer numbers (evaluate.metrics) agree with the trainer's on the same data
    report = evaluate_model(model, *data.val)["descending"]
    assert report == pytest.approx(ev, abs=1e-12)
    # the per-layer values differ, so a column shifted by one layer would not pass
    assert shifted(logged) != pytest.approx(ev, abs=1e-3)
    assert shifted(report) != pytest.approx(ev, abs=1e-3)


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_lista_variants_start_from_the_same_weights(data, tmp_path):
    preset = tiny(epochs=0)
    exp = lista.ListaExperiment(preset, data)
    start = {v: weights(train_variant(exp, v, str(tmp_path / v), seed=3, progress=False)[0])
             for v in presets.VARIANTS}
    ref = weights(exp.build_model(3))
    for v, w in start.items():
        assert same(w, ref), v
    other = weights(train_variant(exp, "noisy", str(tmp_path / "other"), seed=4, progress=False)[0])
    assert not same(other, ref), "another seed draws other weights"


def test_inpaint_variants_start_from_the_same_weights(tmp_path):
    preset = presets.get_inpaint_preset("tiny")
    preset.train = dataclasses.replace(preset.train, epochs=0)
    d = inpaint.prepare_data(preset, str(tmp_path / "cache"))
    glow, _ = inpaint.pretrain_glow(preset, d, seed=0)
    exp = inpaint.InpaintExperiment(preset, d, glow)
    start = {v: weights(train_variant(exp, v, str(tmp_path / v), seed=1, progress=False)[0])
             for v in presets.VARIANTS}
    ref = weights(exp.build_model(1))
    for v, w in start.items():
        assert same(w, ref), v


def history_of(run_dir):
    import json
    with open(f"{run_dir}/history.json") as f:
        return [v for r in json.load(f)["history"] for v in (r["epoch"], r["lr"], r["val_loss"])]


def test_schedule_reduces_ends_and_resumes_exactly(data, tmp_path):
    """threshold 1: no epoch improves on the first by 100 %, so the lr is reduced after epochs
    2 and 3 and the run converges at epoch 4. Cut after epoch 2 (whose plateau reduced the lr)
    and resumed, and cut by a deadline after epoch 1 and
    resumed, it gives the history of an uninterrupted run."""
    preset = tiny(epochs=6)
    preset.train = dataclasses.replace(preset.train, lr_schedule="plateau", lr_factor=0.5, lr_patience=1,
                                       lr_threshold=1.0, lr_reductions=2)
    exp = lista.ListaExperiment(preset, data)
    _, summary, hist = train_variant(exp, "constrained", str(tmp_path / "full"), seed=0, progress=False)
    lr = preset.train.lr
    assert [r["lr"] for r in hist] == pytest.approx([lr, lr, lr * 0.5, lr * 0.25])
    assert summary["stop"] == "converged" and summary["epochs"] == 4
    assert summary["final_lr"] == pytest.approx(lr * 0.25)
    full = history_of(tmp_path / "full")
    # cut at the epoch cap right after a reduction, then resumed with the full cap
    short = dataclasses.replace(preset, train=dataclasses.replace(preset.train, epochs=2))
    _, s1, _ = train_variant(lista.ListaExperiment(short, data), "constrained", str(tmp_path / "cap"), seed=0,
                             progress=False)
    assert s1["stop"] == "epochs"
    _, s2, _ = train_variant(exp, "constrained", str(tmp_path / "cap"), seed=0, progress=False, resume=True)
    assert s2["stop"] == "converged"
    assert history_of(tmp_path / "cap") == pytest.approx(full, rel=1e-6)
    # stopped by a deadline after epoch 1, then resumed
    _, s1, h1 = train_variant(exp, "constrained", str(tmp_path / "cut"), seed=0, progress=False,
                              deadline=time.perf_counter())
    assert s1["stop"] == "time budget" and len(h1) == 1
    train_variant(exp, "constrained", str(tmp_path / "cut"), seed=0, progress=False, resume=True)
    assert history_of(tmp_path / "cut") == pytest.approx(full, rel=1e-6)
    # resuming a converged run trains no further epoch
    _, s3, h3 = train_variant(exp, "constrained", str(tmp_path / "cut"), seed=0, progress=False, resume=True)
    assert len(h3) == 4 and s3["stop"] == "converged"


def test_budget_shares_and_errors():
    b = Budget(100.0, runs=4, reserve=0.2)
    t = time.perf_counter()
    first = b.deadline() - t
    assert 19.0 < first <= 20.0 + 1e-3  # 80 s for 4 runs
    assert Budget(None, 3).deadline() is None
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(CLIError, match="--time-budget"):
            Budget(bad, 1)


def test_model_config_random_init():
    m = presets.ModelConfig(num_layers=3, init="random", weight_std=0.1, y0_std=0.0)
    assert m.init == "random"
    with pytest.raises(ValueError, match="weight_std: only init='random'"):
        presets.ModelConfig(init="ista", weight_std=0.1)
    with pytest.raises(ValueError, match="init: expected one of 'ista', 'paper', 'random'"):
        presets.ModelConfig(init="xavier")
    with pytest.raises(ValueError, match="variants"):
        dataclasses.replace(presets.get_preset("tiny"), variants=("constrained", "bogus"))
    paper = presets.get_preset("paper")
    assert (paper.data.name, paper.data.n, paper.data.m, paper.data.alpha) == ("patches", 1024, 1228, 0.5)
    assert (paper.model.init, paper.method.eps, paper.train.lr, paper.train.lr_dual, paper.train.dual_every,
            paper.train.batch_size, paper.train.epochs) == ("paper", 0.05, 1e-5, 1e-3, "epoch", 512, 5000)
    quick = presets.get_preset("quick")
    assert quick.seeds >= 3 and quick.model.init == "random" and quick.train.lr_schedule == "plateau"
    assert set(quick.variants) == set(presets.VARIANTS)


def test_experiments_use_fused_adam(data):
    """The experiments build their optimizers like the trainer: fused Adam where supported (also
    for the inpainting parameter groups); an explicit implementation choice stands."""
    from sdu_ext.experiments import inpaint as inpaint_exp

    preset = tiny()
    exp = lista.ListaExperiment(preset, data)
    model = exp.build_model(0)
    opt = exp.optimizer_factory(model, preset.train)(model.parameters())
    assert opt.defaults["fused"] is True and len(opt.param_groups[0]["params"]) == len(list(model.parameters()))
    loop = dataclasses.replace(preset.train, optimizer_kwargs={"fused": False})
    assert not exp.optimizer_factory(model, loop)(model.parameters()).defaults["fused"]
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    from sdu_ext.train.optim import build_optimizer
    opt = build_optimizer("Adam", [{"params": iter([a])}, {"params": [b], "lr": 0.5}], 1e-3, {})
    assert opt.defaults["fused"] is True and [g["lr"] for g in opt.param_groups] == [1e-3, 0.5]
    layer = torch.nn.Module()
    layer.mu_raw, layer.lam_raw, layer.w = (torch.nn.Parameter(torch.ones(k)) for k in (1, 1, 3))
    prox = torch.nn.Module()
    prox.layers = torch.nn.ModuleList([layer])
    method = types.SimpleNamespace(step_lr=1e-2)
    opt = inpaint_exp.optimizer_factory(prox, preset.train, method)(prox.parameters())
    assert opt.defaults["fused"] is True
    assert [(g["lr"], len(g["params"])) for g in opt.param_groups] == [(preset.train.lr, 1), (1e-2, 2)]
