"""sdu_ext.evaluate: metrics against hand computations, the robustness protocol's shapes,
pairing and reproducibility, the noise domain, and the plots."""
import math

import pytest
import torch

import ddp_worker
from sdu_ext.evaluate import (RescaledNoise, descending_frequency, evaluate_model, iterations_to_match, layer_metrics,
                              log_gradient_noise, nmse_db, ood_shift, perturbation_sweep, perturbed_iterates,
                              run_iterates, shift_signals, shifted_data)
from sdu_ext.evaluate import plots
from sdu_ext.models import FISTA, ISTA, LISTA, LogGradientNoise
from sdu_ext.problems import Lasso

F64 = torch.float64


@pytest.fixture(scope="module")
def tiny():
    D, _, (x, y) = ddp_worker.make_problem(seed=0, n_train=16, n_val=40)
    return D, x, y


# ---------------------------------------------------------------- metrics by hand

def test_nmse_db_is_the_ratio_of_sums():
    ref = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    exact, zero = ref.clone(), torch.zeros(2, 2)
    half = torch.tensor([[0.0, 0.0], [0.0, 2.0]])          # errors 1 and 0, energy 1 + 4
    it = torch.stack([zero, half, exact])
    got = nmse_db(it, ref)
    assert got.dtype == F64 and got.shape == (3,)
    assert got[0] == pytest.approx(0.0)
    assert got[1] == pytest.approx(10 * math.log10(1 / 5))  # not the mean of per-sample dB (-inf here)
    assert got[2] == -math.inf
    assert float(nmse_db(half, ref)) == pytest.approx(10 * math.log10(0.2))
    with pytest.warns(UserWarning, match="every reference y\\* is 0"):
        assert nmse_db(it, torch.zeros(2, 2))[1] == math.inf


def test_descending_frequency_by_hand():
    # norms of sample 0: 4, 3, 3 ; sample 1: 1, 2, 0.5 ; sample 2: 5, 1, 0.1 ; sample 3: 2, 2, 3
    norms = torch.tensor([[4.0, 1.0, 5.0, 2.0], [3.0, 2.0, 1.0, 2.0], [3.0, 0.5, 0.1, 3.0]])
    it = torch.zeros(3, 4, 2)
    it[..., 0] = norms
    assert descending_frequency(it).tolist() == [0.5, 0.5]      # equal norms do not descend
    ref = torch.full((4, 2), 0.0)
    ref[:, 1] = 1.0                                              # ||(r, -1)||: same order
    assert descending_frequency(it, ref).tolist() == [0.5, 0.5]
    with pytest.raises(ValueError, match=r"^iterates: expected stacked iterates"):
        descending_frequency(torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"^reference: expected shape \(N, m\) = \(4, 2\)"):
        descending_frequency(it, torch.zeros(3, 2))


def test_layer_metrics_by_hand():
    D = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    problem = Lasso(D, 0.5)
    x = torch.tensor([[2.0, 0.0], [0.0, -3.0]])
    y_star = torch.tensor([[1.5, 0.0], [0.0, -2.5]])            # soft(x, 0.5) for D = I
    y0 = torch.zeros(2, 2)
    y1 = torch.tensor([[1.0, 0.0], [0.0, -2.5]])
    m = layer_metrics(torch.stack([y0, y1]), x, y_star, problem)
    assert m["count"] == 2 and m["zero_reference"] == 0
    assert m["distance_mean"] == pytest.approx([(1.5 + 2.5) / 2, 0.25])
    assert m["distance_std"] == pytest.approx([0.5, 0.25])
    assert m["nmse_db"][1] == pytest.approx(10 * math.log10(0.25 / (1.5 ** 2 + 2.5 ** 2)))
    f0 = [0.5 * 4, 0.5 * 9]
    f1 = [0.5 * 1 + 0.5 * 1, 0.5 * 0.25 + 0.5 * 2.5]
    fs = [0.5 * 0.25 + 0.75, 0.5 * 0.25 + 1.25]
    assert m["objective_mean"] == pytest.approx([sum(f0) / 2, sum(f1) / 2])
    assert m["objective_star"] == pytest.approx(sum(fs) / 2)
    assert m["objective_gap"] == pytest.approx([(sum(f0) - sum(fs)) / 2, (sum(f1) - sum(fs)) / 2])
    assert m["l1_mean"] == pytest.approx([0.0, 1.75]) and m["l1_star"] == pytest.approx(2.0)
    assert m["support_fraction"] == pytest.approx([0.0, 0.5])
    assert m["descending"] == [1.0]
    assert m["distance_median"][1] == pytest.approx(0.25)


def test_layer_metrics_counts_zero_optima():
    D = torch.eye(3)
    y_star = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    it = torch.zeros(2, 2, 3)
    it[1, 1, 0] = 0.5
    m = layer_metrics(it, torch.zeros(2, 3), y_star, Lasso(D, 0.1))
    assert m["zero_reference"] == 1
    assert m["descending"] == [0.5]  # the sample at its optimum cannot descend


def test_run_iterates_chunks_match_one_pass(tiny):
    D, x, y = tiny
    model = LISTA(D, ddp_worker.ALPHA, 3, init="paper", generator=torch.Generator().manual_seed(0))
    y0 = torch.randn(x.shape[0], D.shape[1], generator=torch.Generator().manual_seed(1))
    whole = run_iterates(model, x, y0=y0)
    chunked = run_iterates(model, x, y0=y0, batch_size=7)
    torch.testing.assert_close(chunked, whole)
    assert whole.shape == (4, x.shape[0], D.shape[1]) and not whole.requires_grad


def test_ista_descends_and_evaluate_model_agrees(tiny):
    D, x, y = tiny
    model = ISTA(D, ddp_worker.ALPHA, 5)
    m = evaluate_model(model, x, y)
    it = run_iterates(model, x)
    assert m["descending"] == descending_frequency(it, y).tolist()
    assert min(m["descending"]) == 1.0            # ISTA is non-expansive towards y*
    assert m["nmse_db"] == pytest.approx(nmse_db(it, y).tolist())
    assert all(a > b for a, b in zip(m["distance_mean"], m["distance_mean"][1:]))


@pytest.mark.parametrize("method,cls", [("ista", ISTA), ("fista", FISTA)])
def test_iterations_to_match_counts_unrolled_steps(tiny, method, cls):
    """The k reported for a target NMSE is the first layer of the unrolled ISTA/FISTA
    network (same step, y_0 = 0) that reaches it."""
    D, x, y = tiny
    D, x, y = D.double(), x.double(), y.double()
    curve = nmse_db(run_iterates(cls(D, ddp_worker.ALPHA, 40), x), y).tolist()
    targets = [curve[3] + 1e-9, curve[17] + 1e-9, curve[40] + 1e-9, -400.0]
    expected = [next(k for k, v in enumerate(curve) if v <= t) for t in targets[:3]] + [None]
    got = iterations_to_match(Lasso(D, ddp_worker.ALPHA), x, y, targets, method=method, max_iter=60)
    assert got == expected
    assert iterations_to_match(Lasso(D, ddp_worker.ALPHA), x, y, [], method=method) == []
    with pytest.raises(ValueError, match="method: expected 'ista' or 'fista'"):
        iterations_to_match(Lasso(D, ddp_worker.ALPHA), x, y, [0.0], method="lars")


# ---------------------------------------------------------------- robustness

def test_rescaled_noise_domain(tiny):
    D, x, _ = tiny
    y = torch.randn(x.shape[0], D.shape[1], generator=torch.Generator().manual_seed(2))
    paper = LISTA(D, ddp_worker.ALPHA, 3, init="paper", generator=torch.Generator().manual_seed(0))
    a = log_gradient_noise(paper, 2.0, generator=torch.Generator().manual_seed(5))(1, y, x)
    b = LogGradientNoise(D, 2.0, generator=torch.Generator().manual_seed(5))(1, y, x)
    torch.testing.assert_close(a, b)                # paper LISTA: the research rule as is
    ista = LISTA(D, ddp_worker.ALPHA, 3)
    a = log_gradient_noise(ista, 2.0, generator=torch.Generator().manual_seed(5))(1, y, x)
    b = LogGradientNoise(D, 2.0, generator=torch.Generator().manual_seed(5))(1, 100 * y, 100 * x) / 100
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match=r"^factor: expected a positive number, got 0"):
        RescaledNoise(LogGradientNoise(D), 0)


def test_perturbed_initial_point_scale(tiny):
    D, x, _ = tiny
    model = LISTA(D, ddp_worker.ALPHA, 2)
    it = perturbed_iterates(model, x, 50.0, torch.Generator().manual_seed(0))
    assert float(it[0].std()) == pytest.approx(0.5, rel=0.1)   # sigma / domain scale 100


def test_perturbation_sweep_shapes_pairing_reproducibility(tiny):
    D, x, y = tiny
    L = 3
    model = LISTA(D, ddp_worker.ALPHA, L)
    sigmas = (0.01, 1.0, 100.0)
    s = perturbation_sweep(model, x, y, sigmas, seed=3)
    assert s["sigma"] == list(sigmas)
    for k in ("final_distance_mean", "final_distance_std", "final_nmse_db", "final_l1_mean"):
        assert len(s[k]) == 3
    assert [len(d) for d in s["descending"]] == [L] * 3
    assert [len(d) for d in s["distance_mean"]] == [L + 1] * 3
    assert s == perturbation_sweep(model, x, y, sigmas, seed=3)
    assert s != perturbation_sweep(model, x, y, sigmas, seed=4)
    assert s["final_distance_mean"][0] < s["final_distance_mean"][2]
    clean = evaluate_model(model, x, y)
    assert s["final_distance_mean"][0] == pytest.approx(clean["distance_mean"][-1], rel=1e-3)
    # the draws depend on the seed and the sigma's index only: models are compared on the same draws
    other = LISTA(D, ddp_worker.ALPHA, L)
    assert perturbation_sweep(other, x, y, sigmas, seed=3) == s


def test_shift_signals_and_ood(tiny):
    D, x, y = tiny
    g = torch.Generator().manual_seed(0)
    xs = shift_signals(x, 0.3, g)
    assert float(xs.min()) >= 0 and float(xs.max()) <= 1
    free = shift_signals(x, 0.3, torch.Generator().manual_seed(0), clip=None)
    torch.testing.assert_close(free.clamp(0, 1), xs)
    assert float((free - x).std()) == pytest.approx(0.3, rel=0.15)

    fista = FISTA(D.double(), ddp_worker.ALPHA, 500)
    sets = shifted_data(x, lambda s: fista(s.double()).float(), (0.1, 0.5), seed=1, clip=None)
    assert [s["p"] for s in sets] == [0.1, 0.5]
    model = ISTA(D, ddp_worker.ALPHA, 4)
    o = ood_shift(model, sets, y)
    assert o["p"] == [0.1, 0.5]
    assert len(o["final_nmse_db"]) == len(o["final_nmse_db_old"]) == 2
    assert [len(d) for d in o["descending"]] == [4, 4]
    # scored against the new optimum
    it = run_iterates(model, sets[1]["x"])
    assert o["final_nmse_db"][1] == pytest.approx(float(nmse_db(it[-1], sets[1]["y_star"])))
    assert o["final_nmse_db_old"][1] == pytest.approx(float(nmse_db(it[-1], y)))
    assert "final_nmse_db_old" not in ood_shift(model, sets)


# ---------------------------------------------------------------- plots

def test_plots_are_written(tiny, tmp_path):
    pytest.importorskip("matplotlib")
    D, x, y = tiny
    model = ISTA(D, ddp_worker.ALPHA, 3)
    clean = {"a": evaluate_model(model, x, y), "b": evaluate_model(FISTA(D, ddp_worker.ALPHA, 3), x, y)}
    sweep = {"a": perturbation_sweep(model, x, y, (0.1, 10.0))}
    sets = shifted_data(x, lambda s: FISTA(D, ddp_worker.ALPHA, 50)(s), (0.1, 0.2), clip=None)
    ood = {"a": ood_shift(model, sets, y)}
    history = {"a": [{"epoch": 1, "val_loss": 2.0}, {"epoch": 2, "val_loss": 1.0}]}
    paths = [plots.plot_layers(clean, tmp_path / "l.png"),
             plots.plot_descending(clean, tmp_path / "d.png"),
             plots.plot_descending({"a": [1.0, 0.5, 0.0]}, tmp_path / "sub" / "d2.png"),
             plots.plot_sweep(sweep, tmp_path / "s.png"),
             plots.plot_ood(ood, tmp_path / "o.png"),
             plots.plot_history(history, tmp_path / "h.png")]
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
