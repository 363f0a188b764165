"""Bad input left over after issue 12: one clear error that names the argument, the expected
and the received value, before any work is done. The rows and tests marked "was:" failed
before with a raw error, a silent acceptance or a wrong order of work; the others pin the
neighbouring cases that were already right.

- sdu_ext.evaluate given Python lists in place of tensors, or a batch size that is not an
  integer >= 1 (was: AttributeError / "range() arg 3 must not be zero" / torch.cat errors);
- noise levels and the ALISTA ridge that are infinite, NaN or negative (was: accepted, or
  a LinAlgError), generators that are not generators;
- the commands: ``--quiet`` shows no progress bar, a failing command leaves no new output
  folder, ``--resume`` reads the last checkpoint before preparing the data;
- :func:`sdu_ext.checks.check_training_data` (the trainer's data given as lists or a bare
  tensor, which failed only at ``fit()``).
"""
import math
import os
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import torch

import sdu_ext.evaluate.inpainting as IN
import sdu_ext.evaluate.metrics as ME
import sdu_ext.evaluate.robustness as RO
import sdu_ext.models as M
from sdu_ext import cli
from sdu_ext.checks import check_count, check_tensor, check_training_data

INF, NAN = math.inf, math.nan
pytestmark = pytest.mark.filterwarnings("ignore:data. dropped:UserWarning")


def _dictionary(n=8, m=12):
    D = torch.randn(n, m, generator=torch.Generator().manual_seed(0))
    return D / D.norm(dim=0)


def _x(rows=6, n=8):
    return torch.randn(rows, n, generator=torch.Generator().manual_seed(1))


def _y(rows=6, m=12):
    return torch.randn(rows, m, generator=torch.Generator().manual_seed(2))


def _lista():
    return M.LISTA(_dictionary(), 0.1, 3)


def _iterates():
    return _lista()(_x(), return_all=True).detach()


def _images():
    return torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(3))


@dataclass
class Misuse:
    call: Callable             # the bad call
    arg: str                   # the argument the message names first ("<arg>: ...")
    detail: str                # regex for the rest of the message (expected and received)


MISUSES = {
    # ---- sdu_ext.evaluate.metrics
    "run_iterates-x-list": Misuse(  # was: AttributeError "'list' object has no attribute 'shape'"
        lambda: ME.run_iterates(_lista(), _x().tolist()), "x", r"expected a tensor \(N, n\), got list$"),
    "run_iterates-batch_size-zero": Misuse(  # was: "range() arg 3 must not be zero"
        lambda: ME.run_iterates(_lista(), _x(), batch_size=0), "batch_size", r"expected an integer >= 1, got 0$"),
    "run_iterates-batch_size-negative": Misuse(  # was: "torch.cat(): expected a non-empty list of Tensors"
        lambda: ME.run_iterates(_lista(), _x(), batch_size=-1), "batch_size", r"expected an integer >= 1, got -1$"),
    "run_iterates-batch_size-float": Misuse(  # was: TypeError "'float' object cannot be interpreted as ..."
        lambda: ME.run_iterates(_lista(), _x(), batch_size=1.5), "batch_size", r"expected an integer >= 1, got 1\.5$"),
    "run_iterates-batch_size-bool": Misuse(  # was: silent (True ran batches of one)
        lambda: ME.run_iterates(_lista(), _x(), batch_size=True), "batch_size", r"expected an integer >= 1, got True$"),
    "evaluate_model-batch_size-zero": Misuse(
        lambda: ME.evaluate_model(_lista(), _x(), _y(), batch_size=0), "batch_size",
        r"expected an integer >= 1, got 0$"),
    "evaluate_model-x-list": Misuse(
        lambda: ME.evaluate_model(_lista(), _x().tolist(), _y()), "x", r"expected a tensor \(N, n\), got list$"),
    "nmse_db-estimates-list": Misuse(  # was: AttributeError "'list' object has no attribute 'dim'"
        lambda: ME.nmse_db(_iterates().tolist(), _y()), "estimates",
        r"expected a tensor \(L\+1, N, m\) or \(N, m\), got list$"),
    "nmse_db-reference-list": Misuse(  # was: AttributeError
        lambda: ME.nmse_db(_iterates(), _y().tolist()), "reference", r"expected a tensor \(N, m\), got list$"),
    "descending_frequency-reference-list": Misuse(
        lambda: ME.descending_frequency(_iterates(), _y().tolist()), "reference",
        r"expected a tensor \(N, m\), got list$"),
    "layer_metrics-x-list": Misuse(  # was: AttributeError "'list' object has no attribute 'unsqueeze'"
        lambda: ME.layer_metrics(_iterates(), _x().tolist(), _y(), _lista().problem), "x",
        r"expected a tensor \(N, n\), got list$"),
    "layer_metrics-y_star-list": Misuse(
        lambda: ME.layer_metrics(_iterates(), _x(), _y().tolist(), _lista().problem), "y_star",
        r"expected a tensor \(N, m\), got list$"),
    "iterations_to_match-y_star-list": Misuse(  # was: AttributeError "'list' object has no attribute 'to'"
        lambda: ME.iterations_to_match(_lista().problem, _x(), _y().tolist(), [-1.0]), "y_star",
        r"expected a tensor \(N, m\), got list$"),
    # ---- sdu_ext.evaluate.robustness
    "perturbed_iterates-x-list": Misuse(
        lambda: RO.perturbed_iterates(_lista(), _x().tolist(), 1.0, torch.Generator()), "x",
        r"expected a tensor \(N, n\), got list$"),
    "perturbed_iterates-batch_size-negative": Misuse(
        lambda: RO.perturbed_iterates(_lista(), _x(), 1.0, torch.Generator(), batch_size=-2), "batch_size",
        r"expected an integer >= 1, got -2$"),
    "perturbation_sweep-x-list": Misuse(
        lambda: RO.perturbation_sweep(_lista(), _x().tolist(), _y(), [1.0]), "x",
        r"expected a tensor \(N, n\), got list$"),
    "perturbation_sweep-y_star-list": Misuse(
        lambda: RO.perturbation_sweep(_lista(), _x(), _y().tolist(), [1.0]), "y_star",
        r"expected a tensor \(N, m\), got list$"),
    "perturbation_sweep-batch_size-zero-no-sigmas": Misuse(  # was: silent (no sigma, no check)
        lambda: RO.perturbation_sweep(_lista(), _x(), _y(), [], batch_size=0), "batch_size",
        r"expected an integer >= 1, got 0$"),
    "layer_descending-iterates-list": Misuse(  # was: the dispatcher's "Expected a value of type 'Tensor'"
        lambda: RO.layer_descending(_iterates().tolist(), _iterates()[1:], _y()), "iterates",
        r"expected stacked iterates \(L\+1, N, m\), got list$"),
    "shift_signals-x-list": Misuse(
        lambda: RO.shift_signals(_x().tolist(), 0.1, torch.Generator()), "x", r"expected a tensor \(N, n\), got list$"),
    "shifted_data-x-list": Misuse(
        lambda: RO.shifted_data(_x().tolist(), lambda t: t, [0.1]), "x", r"expected a tensor \(N, n\), got list$"),
    "ood_shift-batch_size-zero": Misuse(
        lambda: RO.ood_shift(_lista(), [{"p": 0.1, "x": _x(), "y_star": _y()}], batch_size=0), "batch_size",
        r"expected an integer >= 1, got 0$"),
    "ood_shift-y_star_clean-list": Misuse(
        lambda: RO.ood_shift(_lista(), [{"p": 0.1, "x": _x(), "y_star": _y()}], _y().tolist()), "y_star_clean",
        r"expected a tensor \(N, m\) or None, got list$"),
    # ---- sdu_ext.evaluate.inpainting
    "psnr-x-list": Misuse(  # was: TypeError "unsupported operand type(s) for -"
        lambda: IN.psnr(_images().tolist(), _images()), "x", r"expected a tensor \(B, \.\.\.\), got list$"),
    "psnr-reference-list": Misuse(
        lambda: IN.psnr(_images(), _images().tolist()), "reference", r"expected a tensor \(B, \.\.\.\), got list$"),
    "ssim-x-list": Misuse(
        lambda: IN.ssim(_images().tolist(), _images()), "x", r"expected a tensor \(B, C, H, W\), got list$"),
    "ssim-reference-list": Misuse(
        lambda: IN.ssim(_images(), _images().tolist()), "reference", r"expected a tensor \(B, C, H, W\), got list$"),
    "perturb-x-list": Misuse(
        lambda: IN.perturb(_images().tolist(), 0.1, None), "x", r"expected a tensor \(N, C, H, W\), got list$"),
    "inpainting-run_iterates-y-list": Misuse(
        lambda: IN.run_iterates(_lista(), _images().tolist()), "y", r"expected a tensor \(N, C, H, W\), got list$"),
    "inpainting-run_iterates-batch_size-zero": Misuse(
        lambda: IN.run_iterates(_lista(), _images(), batch_size=0), "batch_size", r"expected an integer >= 1, got 0$"),
    "evaluate_clean-batch_size-zero": Misuse(
        lambda: IN.evaluate_clean(_lista(), None, batch_size=0), "batch_size", r"expected an integer >= 1, got 0$"),
    "evaluate_under_noise-batch_size-float": Misuse(
        lambda: IN.evaluate_under_noise(_lista(), None, 1.0, 0, batch_size=8.0), "batch_size",
        r"expected an integer >= 1, got 8\.0$"),
    "evaluate_under_noise-sigma-inf": Misuse(
        lambda: IN.evaluate_under_noise(_lista(), None, INF, 0), "sigma", r"expected a finite number, got inf$"),
    "inpainting-perturbation_sweep-batch_size-negative": Misuse(
        lambda: IN.perturbation_sweep(_lista(), None, [0.1], 0, batch_size=-64), "batch_size",
        r"expected an integer >= 1, got -64$"),
    # ---- noise hooks (sdu_ext.models)
    "FixedNoise-sigma-inf": Misuse(  # was: silent (every noisy iterate inf / NaN)
        lambda: M.FixedNoise(INF), "sigma", r"expected a finite number, got inf$"),
    "FixedNoise-sigma-nan": Misuse(
        lambda: M.FixedNoise(NAN), "sigma", r"expected a non-negative number, got nan$"),
    "FixedNoise-sigma-negative": Misuse(
        lambda: M.FixedNoise(-0.5), "sigma", r"expected a non-negative number, got -0\.5$"),
    "FixedNoise-sigma-None": Misuse(
        lambda: M.FixedNoise(None), "sigma", r"expected a real number, got None$"),
    "FixedNoise-generator-seed": Misuse(  # was: AttributeError at the first noisy layer
        lambda: M.FixedNoise(1.0, generator=0), "generator", r"expected a torch.Generator or None, got int$"),
    "LogGradientNoise-sigma-inf": Misuse(  # was: silent
        lambda: M.LogGradientNoise(_dictionary(), sigma=INF), "sigma", r"expected a finite number, got inf$"),
    "LogGradientNoise-generator-seed": Misuse(
        lambda: M.LogGradientNoise(_dictionary(), generator=0), "generator",
        r"expected a torch.Generator or None, got int$"),
    "RescaledNoise-factor-inf": Misuse(  # was: silent (codes of inf / NaN)
        lambda: M.RescaledNoise(M.FixedNoise(1.0), INF), "factor", r"expected a finite number, got inf$"),
    "RescaledNoise-factor-nan": Misuse(
        lambda: M.RescaledNoise(M.FixedNoise(1.0), NAN), "factor", r"expected a positive number, got nan$"),
    "UnitDirectionNoise-sigma-inf": Misuse(  # was: silent
        lambda: M.UnitDirectionNoise(INF), "sigma", r"expected a finite number, got inf$"),
    "UnitDirectionNoise-sigma-negative": Misuse(
        lambda: M.UnitDirectionNoise(-1.0), "sigma", r"expected a non-negative number, got -1\.0$"),
    "UnitDirectionNoise-generator-seed": Misuse(
        lambda: M.UnitDirectionNoise(1.0, generator=0), "generator", r"expected a torch.Generator or None, got int$"),
    "log_gradient_noise-sigma-inf": Misuse(
        lambda: M.log_gradient_noise(_lista(), INF), "sigma", r"expected a finite number, got inf$"),
    # ---- ALISTA's ridge and LISTA's generator
    "ALISTA-ridge-inf": Misuse(  # was: LinAlgError from torch.linalg.solve
        lambda: M.ALISTA(_dictionary(), 0.1, 3, ridge=INF), "ridge", r"expected a finite number, got inf$"),
    "ALISTA-ridge-nan": Misuse(
        lambda: M.ALISTA(_dictionary(), 0.1, 3, ridge=NAN), "ridge", r"expected a positive number, got nan$"),
    "ALISTA-ridge-zero": Misuse(
        lambda: M.ALISTA(_dictionary(), 0.1, 3, ridge=0.0), "ridge", r"expected a positive number, got 0\.0$"),
    "ALISTA-ridge-overflows": Misuse(  # was: LinAlgError (ridge * ||D||^2 = inf)
        lambda: M.ALISTA(10 * _dictionary(), 0.1, 3, ridge=1e307), "ridge",
        r"expected a number small enough that ridge \* \|\|D\|\|_2\^2 is finite, got 1e\+307$"),
    "analytic_weight-ridge-inf": Misuse(
        lambda: M.ALISTA.analytic_weight(_dictionary(), INF), "ridge", r"expected a finite number, got inf$"),
    "LISTA-generator-seed": Misuse(  # was: AttributeError "'int' object has no attribute 'device'"
        lambda: M.LISTA(_dictionary(), 0.1, 3, init="paper", generator=0), "generator",
        r"expected a torch.Generator or None, got int$"),
}


@pytest.mark.parametrize("case", list(MISUSES))
def test_misuse_names_the_argument(case):
    c = MISUSES[case]
    with pytest.raises(ValueError) as info:
        c.call()
    message = str(info.value)
    assert message.startswith(f"{c.arg}: "), f"{case}: the message does not start with {c.arg!r}: {message}"
    assert "\n" not in message, f"{case}: a message of several lines: {message}"
    rest = message[len(c.arg) + 2:]
    assert re.search(c.detail, rest), f"{case}: {rest!r} does not match {c.detail!r}"


def test_valid_inputs_still_work():
    """The checks pass what worked before: numpy integer batch sizes, a finite ridge and
    noise level, one-element tensors as noise levels; the results do not change."""
    model, x = _lista(), _x(10)
    chunked = ME.run_iterates(model, x, batch_size=3)
    torch.testing.assert_close(ME.run_iterates(model, x, batch_size=np.int64(3)), chunked, rtol=0, atol=0)
    assert M.FixedNoise(torch.tensor(0.5)).sigma == 0.5
    assert M.UnitDirectionNoise(0).sigma == 0.0
    W = M.ALISTA.analytic_weight(_dictionary().double(), 1e-6)
    torch.testing.assert_close(torch.diagonal(W.T @ _dictionary().double()), torch.ones(12, dtype=torch.float64))


# ---------------------------------------------------------------- sdu_ext.checks

def test_check_count_and_check_tensor():
    assert check_count(np.int32(4), "batch_size") == 4 and type(check_count(np.int32(4), "batch_size")) is int
    for bad in (0, -3, 2.0, True, None, "8"):
        with pytest.raises(ValueError, match=r"^batch_size: expected an integer >= 1, got "):
            check_count(bad, "batch_size")
    t = torch.zeros(2, 3)
    assert check_tensor(t, "x", dims=2) is t
    assert check_tensor(t, "x", dims=(2, 3)) is t
    with pytest.raises(ValueError, match=r"^x: expected a tensor \(B, n\), got tuple$"):
        check_tensor((1, 2), "x", "a tensor (B, n)")
    with pytest.raises(ValueError, match=r"^x: expected a 3-D tensor, got \(2, 3\) torch.float32 on cpu$"):
        check_tensor(t, "x", "a 3-D tensor", dims=3)


def test_check_training_data_rejects_lists_arrays_and_a_bare_tensor():
    x, y = _x(32), _y(32)
    expected = r"^train_data: expected a tuple of tensors with one first dimension such as \(x \(N, n\), " \
               r"y_star \(N, m\)\), or a Dataset, got "
    bad = {
        "lists": ((x.tolist(), y.tolist()), r"train_data\[0\] a list, train_data\[1\] a list \(convert with torch"),
        "list-of-lists": ([x.tolist(), y.tolist()], r"train_data\[0\] a list, train_data\[1\] a list"),
        "one-list": ((x, y.tolist()), r"train_data\[1\] a list \(convert"),
        "numpy": ((x.numpy(), y.numpy()), r"train_data\[0\] a ndarray, train_data\[1\] a ndarray"),
        "tensor": (x, r"a single tensor of shape \(32, 8\); pass \(x, y_star\), or \(x,\) for a loss that needs "
                      r"no targets$"),
    }
    for case, (data, detail) in bad.items():
        with pytest.raises(ValueError, match=expected + detail):
            check_training_data(data, "train_data")
    good = [(x, y), [x, y], (x,), torch.utils.data.TensorDataset(x, y), [(x[i], y[i]) for i in range(4)],
            [(1.0, 2.0), (3.0, 4.0)], [{"x": x[0]}]]
    for data in good:
        assert check_training_data(data, "train_data") is data


def test_check_training_data_catches_what_the_trainer_meets_only_at_fit():
    """Without the check, the trainer takes these in its constructor and fails at ``fit()``
    with a raw collate error or a message about the targets (what the check is for)."""
    from sdu_ext.train import PrimalDualTrainer, TrainConfig

    x, y = _x(32), _y(32)
    for data in ((x.tolist(), y.tolist()), x):
        with pytest.raises(ValueError, match=r"^train_data: "):
            check_training_data(data, "train_data")
        try:
            trainer = PrimalDualTrainer(_lista(), data, config=TrainConfig(mode="standard", epochs=1, batch_size=8))
        except ValueError as e:  # the trainer calls the check now
            assert str(e).startswith("train_data: ")
            continue
        with pytest.raises((RuntimeError, ValueError)) as info:
            trainer.fit()
        assert not str(info.value).startswith("train_data: ")


# ---------------------------------------------------------------- the commands

@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data-cache"))


def _a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return str(path)


def _damaged_run(folder):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "last.pt"), "wb") as f:
        f.write(b"\x00" * 64)
    return str(folder)


def test_quiet_passes_progress_false_to_the_data_set(tmp_path, cache_dir, monkeypatch, capsys):
    """``--quiet``: the data set is loaded with progress=False (was: None, bars after 5 s of a
    long generation), and nothing the command prints is a progress bar."""
    from sdu_ext.problems import datasets

    seen = []
    load = datasets.load

    def recording_load(*args, **kwargs):
        seen.append(kwargs.get("progress", "missing"))
        return load(*args, **kwargs)

    monkeypatch.setattr(datasets, "load", recording_load)
    rc = cli.main(["lista", "train", "--preset", "tiny", "--mode", "standard", "--epochs", "1", "--quiet",
                   "--threads", "1", "--out", str(tmp_path / "run"), "--data-cache", cache_dir])
    assert rc == 0
    assert seen == [False]
    err = capsys.readouterr().err
    assert "it/s" not in err and "%|" not in err and "\r" not in err, err


def test_progress_stays_on_without_quiet(tmp_path, cache_dir, monkeypatch, capsys):
    from sdu_ext.problems import datasets

    seen = []
    load = datasets.load
    monkeypatch.setattr(datasets, "load", lambda *a, **k: (seen.append(k.get("progress")), load(*a, **k))[1])
    rc = cli.main(["lista", "train", "--preset", "tiny", "--mode", "standard", "--epochs", "1", "--threads", "1",
                   "--out", str(tmp_path / "run"), "--data-cache", cache_dir])
    assert rc == 0 and seen == [True]


# A command that fails on a bad option leaves no new folder behind (was: --out made first, then
# --data-cache / --time-budget checked; --seed not checked at all, a negative one failed in the
# evaluation after training). --device and --epochs were already checked first.
NO_FOLDER = {
    "lista-train-data-cache-a-file": (lambda t, c: ["lista", "train", "--preset", "tiny", "--data-cache", _a_file(t)],
                                      "--data-cache"),
    "lista-train-seed-negative": (lambda t, c: ["lista", "train", "--preset", "tiny", "--seed", "-1",
                                                "--data-cache", c], "--seed"),
    "lista-train-seed-too-large": (lambda t, c: ["lista", "train", "--preset", "tiny", "--seed", str(2 ** 32),
                                                 "--data-cache", c], "--seed"),
    "lista-train-device": (lambda t, c: ["lista", "train", "--preset", "tiny", "--device", "tpu:x",
                                         "--data-cache", c], "--device"),
    "lista-train-epochs": (lambda t, c: ["lista", "train", "--preset", "tiny", "--epochs", "-1", "--data-cache", c],
                           "--epochs"),
    "inpaint-train-data-cache-a-file": (lambda t, c: ["inpaint", "train", "--preset", "tiny", "--data-cache",
                                                      _a_file(t)], "--data-cache"),
    "inpaint-train-seed-negative": (lambda t, c: ["inpaint", "train", "--preset", "tiny", "--seed", "-5",
                                                  "--data-cache", c], "--seed"),
    "reproduce-lista-time-budget": (lambda t, c: ["reproduce", "lista", "--preset", "tiny", "--time-budget", "-5",
                                                  "--data-cache", c], "--time-budget"),
    "reproduce-lista-data-cache-a-file": (lambda t, c: ["reproduce", "lista", "--preset", "tiny", "--data-cache",
                                                        _a_file(t)], "--data-cache"),
    "reproduce-inpaint-seed-negative": (lambda t, c: ["reproduce", "inpaint", "--preset", "tiny", "--seed", "-1",
                                                      "--data-cache", c], "--seed"),
}


@pytest.mark.parametrize("case", list(NO_FOLDER))
def test_failing_command_leaves_no_new_folder(case, tmp_path, cache_dir, capsys):
    argv, arg = NO_FOLDER[case]
    out = tmp_path / "new" / "out"
    assert cli.main(argv(tmp_path, cache_dir) + ["--quiet", "--threads", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("sdu-ext: error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"sdu-ext: error: {arg}: "), err
    assert not out.exists() and not out.parent.exists()


def test_eval_rejects_a_bad_seed_before_reading(tmp_path, capsys):
    assert cli.main(["lista", "eval", "--checkpoint", str(tmp_path / "nope.pt"), "--seed", "-1"]) == 2
    assert "sdu-ext: error: --seed: expected an integer in [0, 2**32), got -1" in capsys.readouterr().err


def _never(*args, **kwargs):
    raise AssertionError("the data set was prepared before last.pt was checked")


def test_inpaint_resume_of_a_damaged_run_fails_before_the_data_is_prepared(tmp_path, monkeypatch, capsys):
    """was: the data set was prepared (and the Glow pretrained) before last.pt was read."""
    from sdu_ext.experiments import inpaint

    monkeypatch.setattr(inpaint, "prepare_data", _never)
    run = _damaged_run(tmp_path / "run")
    assert cli.main(["inpaint", "train", "--preset", "tiny", "--quiet", "--resume", "--out", run,
                     "--data-cache", str(tmp_path / "c")]) == 2
    assert "sdu-ext: error: resume: checkpoint: " in capsys.readouterr().err


def test_reproduce_resume_of_a_damaged_run_fails_before_the_data_is_prepared(tmp_path, monkeypatch, capsys):
    from sdu_ext.experiments import lista

    monkeypatch.setattr(lista, "prepare_data", _never)
    out = tmp_path / "report"
    _damaged_run(out / "checkpoints" / "standard" / "seed0")
    assert cli.main(["reproduce", "lista", "--preset", "tiny", "--quiet", "--resume", "--out", str(out),
                     "--data-cache", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert re.search(r"sdu-ext: error: resume: checkpoint: '.*seed0.last\.pt' is not a readable checkpoint", err), err
    assert not (out / "config.json").exists()  # nothing written before the check


def test_resume_of_another_variant_is_refused_before_the_data_is_prepared(tmp_path, cache_dir, monkeypatch, capsys):
    from sdu_ext.experiments import lista

    run = str(tmp_path / "run")
    assert cli.main(["lista", "train", "--preset", "tiny", "--mode", "standard", "--epochs", "1", "--quiet",
                     "--threads", "1", "--out", run, "--data-cache", cache_dir]) == 0
    capsys.readouterr()
    monkeypatch.setattr(lista, "prepare_data", _never)
    assert cli.main(["lista", "train", "--preset", "tiny", "--mode", "constrained", "--resume", "--quiet",
                     "--threads", "1", "--out", run, "--data-cache", cache_dir]) == 2
    assert "holds the 'standard' network, not 'constrained'" in capsys.readouterr().err


def test_trainer_rejects_number_rows_at_construction():
    """The trainer checks its data when it is made (not at its first batch)."""
    from sdu_ext.models import LISTA
    from sdu_ext.train import DescentConstraints, PrimalDualTrainer, TrainConfig

    D = torch.randn(6, 10)
    x, y = torch.randn(16, 6), torch.randn(16, 10)
    model = LISTA(D, 0.1, num_layers=2)
    cfg = TrainConfig(epochs=1, batch_size=8, progress=False, checkpoint_dir=None, log_dir=None, tensorboard=False)
    for bad, name in (((x.tolist(), y.tolist()), "train_data"), ((x, y.tolist()), "train_data")):
        with pytest.raises(ValueError, match=rf"{name}: expected a tuple of tensors (?s:.*)convert with torch.as_tensor"):
            PrimalDualTrainer(model, bad, None, cfg, DescentConstraints())
    with pytest.raises(ValueError, match=r"val_data: expected a tuple of tensors"):
        PrimalDualTrainer(model, (x, y), (x.numpy(), y), cfg, DescentConstraints())
    PrimalDualTrainer(model, (x, y), None, cfg, DescentConstraints())  # tensors are fine
