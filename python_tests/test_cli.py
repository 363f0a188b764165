"""The `sdu-ext` command: `reproduce lista` end to end on the tiny preset (report folder,
resume), `lista train/eval/robustness`, presets, the stated errors, and how it behaves for a
user: a fast --help, one line per warning, a refused --out of a previous run, Ctrl-C."""
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch

from sdu_ext import cli, presets
from sdu_ext.experiments import lista
from sdu_ext.experiments.common import CLIError, Interrupted, train_variant
from sdu_ext.train import load_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DROPPED = r"data: dropped \d+ \w+ samples whose LASSO optimum is y\* = 0"
pytestmark = pytest.mark.filterwarnings("ignore:data. dropped:UserWarning")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data-cache"))


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("reproduce") / "tiny"
    rc = cli.main(["reproduce", "lista", "--preset", "tiny", "--out", str(out), "--quiet",
                   "--data-cache", cache_dir])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("train") / "run"
    rc = cli.main(["lista", "train", "--preset", "tiny", "--mode", "standard", "--out", str(out), "--quiet",
                   "--data-cache", cache_dir])
    assert rc == 0
    return out


def test_reproduce_writes_the_report_folder(reproduced):
    out = reproduced
    for name in ("report.md", "metrics.json", "config.json", ".gitignore",
                 "plots/layers.png", "plots/descending.png", "plots/descending_noise.png", "plots/sweep.png",
                 "plots/ood.png", "plots/val_loss.png",
                 "runs/constrained/history.csv", "runs/standard/history.json", "runs/noisy/history.csv",
                 "checkpoints/constrained/best.pt", "checkpoints/noisy/last.pt"):
        assert (out / name).is_file(), name
    assert "checkpoints/" in (out / ".gitignore").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["models"]) == {"constrained", "standard", "noisy"}
    assert set(metrics["baselines"]) == {"ISTA", "FISTA"}
    L = presets.get_preset("tiny").model.num_layers
    m = metrics["models"]["constrained"]
    assert len(m["clean"]["descending"]) == L and len(m["clean"]["nmse_db"]) == L + 1
    assert m["robustness"]["sweep"]["sigma"] == [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0]
    assert m["robustness"]["ood"]["p"] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert len(m["train"]["multipliers"]) == L and min(m["train"]["multipliers"]) >= 0
    assert metrics["models"]["standard"]["train"]["multipliers"] is None
    assert {c["verdict"] for c in metrics["claims"]} <= {"holds", "partly holds", "does not hold"}
    report = (out / "report.md").read_text()
    for heading in ("## The paper's claims", "## Per layer, clean test set", "## Perturbation sweep",
                    "## OOD shift", "## Descending frequency per layer under noise",
                    "## The learned-optimizer view"):
        assert heading in report
    match = metrics["iterations_to_match"]
    for method in ("ista", "fista"):
        assert set(match[method]) == {"constrained", "standard", "noisy"}
        for k in match[method].values():  # a trained network beats its own number of classic steps
            assert k is None or k >= 1
    assert "sdu-ext reproduce lista --preset tiny" in report
    # the three networks started from the same weights and trained on the same data
    starts = [load_checkpoint(out / "checkpoints" / v / "last.pt")["metadata"] for v in ("constrained", "noisy")]
    assert starts[0]["preset"] == starts[1]["preset"] and starts[0]["variant"] == "constrained"


def test_reproduce_resume_reuses_finished_runs(reproduced, cache_dir, capsys):
    before = json.loads((reproduced / "metrics.json").read_text())
    rc = cli.main(["reproduce", "lista", "--preset", "tiny", "--out", str(reproduced), "--quiet", "--resume",
                   "--data-cache", cache_dir])
    assert rc == 0
    after = json.loads((reproduced / "metrics.json").read_text())
    assert after["timing"]["resumed"] is True
    for v in ("constrained", "standard", "noisy"):
        assert after["models"][v]["clean"] == before["models"][v]["clean"]
        assert after["models"][v]["robustness"] == before["models"][v]["robustness"]
    assert "report:" in capsys.readouterr().out


def test_lista_eval_and_robustness(trained, cache_dir, tmp_path, capsys):
    rc = cli.main(["lista", "eval", "--checkpoint", str(trained), "--out", str(tmp_path / "e"), "--quiet",
                   "--data-cache", cache_dir])
    assert rc == 0
    out = capsys.readouterr().out
    assert "standard LISTA (tiny)" in out and "final: NMSE" in out
    ev = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert ev["variant"] == "standard" and len(ev["clean"]["descending"]) == 4
    assert (tmp_path / "e" / "layers.png").is_file()
    rc = cli.main(["lista", "robustness", "--checkpoint", str(trained / "best.pt"), "--preset", "tiny",
                   "--out", str(tmp_path / "r"), "--quiet", "--data-cache", cache_dir])
    assert rc == 0
    assert "perturbation sweep" in capsys.readouterr().out
    rob = json.loads((tmp_path / "r" / "robustness.json").read_text())
    assert len(rob["sweep"]["sigma"]) == 6 and len(rob["ood"]["p"]) == 6
    for name in ("sweep.png", "ood.png", "descending_noise.png"):
        assert (tmp_path / "r" / name).is_file()


def test_train_resume_continues(trained, cache_dir):
    state = load_checkpoint(trained / "last.pt")
    epochs = state["epoch"]
    rc = cli.main(["lista", "train", "--preset", "tiny", "--mode", "standard", "--out", str(trained), "--quiet",
                   "--resume", "--epochs", str(epochs + 1), "--data-cache", cache_dir])
    assert rc == 0
    assert load_checkpoint(trained / "last.pt")["epoch"] == epochs + 1


# ---------------------------------------------------------------- errors

def test_resume_of_another_variant(trained, cache_dir, capsys):
    rc = cli.main(["lista", "train", "--preset", "tiny", "--mode", "constrained", "--out", str(trained), "--quiet",
                   "--resume", "--data-cache", cache_dir])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("sdu-ext: error: resume: ") and "holds the 'standard' network, not 'constrained'" in err
    assert "--overwrite" in err and err.count("\n") == 1


def test_resume_of_a_corrupt_checkpoint(tmp_path, cache_dir, capsys):
    run = tmp_path / "run"
    argv = ["lista", "train", "--preset", "tiny", "--epochs", "1", "--out", str(run), "--quiet", "--data-cache", cache_dir]
    assert cli.main(argv) == 0
    (run / "last.pt").write_bytes((run / "last.pt").read_bytes()[:1000])  # truncated
    capsys.readouterr()
    assert cli.main(argv + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sdu-ext: error: resume: checkpoint: ") and "last.pt" in err and err.count("\n") == 1
    assert err.rstrip().endswith(f"pass --overwrite instead of --resume to start {str(run)!r} afresh")


def test_resume_mismatch_names_the_field(trained, cache_dir):
    preset = presets.get_preset("tiny")
    preset.method.eps = 0.1
    data = lista.prepare_data(preset.data, cache_dir)
    with pytest.raises(CLIError, match=r"^resume: .* other settings than preset 'tiny' \(method\.eps: 0\.05 -> 0\.1\); "
                                       r"pass --overwrite instead of --resume"):
        train_variant(lista.ListaExperiment(preset, data), "standard", str(trained), resume=True)


def test_missing_checkpoint(tmp_path, capsys):
    assert cli.main(["lista", "eval", "--checkpoint", str(tmp_path / "nope.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sdu-ext: error: checkpoint: no file at ") and "nope.pt" in err
    assert cli.main(["lista", "robustness", "--checkpoint", str(tmp_path)]) == 2
    assert "checkpoint: no best.pt or last.pt in the directory" in capsys.readouterr().err


def test_unknown_preset(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["reproduce", "lista", "--preset", "huge"])
    assert e.value.code == 2
    assert "preset: expected one of 'quick', 'synthetic', 'paper', 'tiny', got 'huge'" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"^preset: expected one of .*got 'huge'$"):
        presets.get_preset("huge")


def test_checkpoint_of_another_problem_size(trained, capsys):
    assert cli.main(["lista", "eval", "--checkpoint", str(trained), "--preset", "quick"]) == 2
    err = capsys.readouterr().err
    assert "was trained for another problem size (n=20, m=40, L=4); preset 'quick' has n=250, m=500, L=10" in err


def test_foreign_checkpoint_needs_a_preset(trained, tmp_path, capsys):
    state = load_checkpoint(trained / "best.pt")
    state["metadata"] = {}
    torch.save(state, tmp_path / "foreign.pt")
    assert cli.main(["lista", "eval", "--checkpoint", str(tmp_path / "foreign.pt")]) == 2
    assert "was not written by `sdu-ext`" in capsys.readouterr().err
    torch.save({"not": "a checkpoint"}, tmp_path / "junk.pt")
    assert cli.main(["lista", "eval", "--checkpoint", str(tmp_path / "junk.pt")]) == 2
    assert "is not an sdu_ext training checkpoint" in capsys.readouterr().err


def test_bad_device_threads_and_missing_command(tmp_path, capsys):
    assert cli.main(["lista", "train", "--preset", "tiny", "--out", str(tmp_path), "--device", "tpu:x"]) == 2
    assert "--device: expected a torch device" in capsys.readouterr().err
    assert cli.main(["lista", "train", "--preset", "tiny", "--out", str(tmp_path), "--threads", "0"]) == 2
    assert "--threads: expected an integer >= 1, got 0" in capsys.readouterr().err
    assert cli.main([]) == 2 and cli.main(["lista"]) == 2
    assert "choose a command" in capsys.readouterr().err


def test_presets_round_trip():
    for name in presets.PRESETS:
        p = presets.get_preset(name)
        assert presets.Preset.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    assert presets.get_preset("quick").sizes() == {"n": 250, "m": 500, "num_layers": 10}
    # the CLI's own copies of the names (it builds its parser without importing torch)
    assert cli.PRESET_NAMES == {"lista": tuple(presets.PRESETS), "inpaint": tuple(presets.INPAINT_PRESETS)}
    assert cli.VARIANT_NAMES == tuple(presets.VARIANTS)


def test_python_dash_m_help():
    r = subprocess.run([sys.executable, "-m", "sdu_ext", "--help"], capture_output=True, text=True, cwd=REPO,
                       timeout=120)
    assert r.returncode == 0
    assert "lista" in r.stdout and "reproduce" in r.stdout
    r = subprocess.run([sys.executable, "-m", "sdu_ext", "reproduce", "lista", "--help"], capture_output=True,
                       text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0 and "--preset" in r.stdout and "--resume" in r.stdout


# ---------------------------------------------------------------- a user's first hour

def test_help_answers_in_under_a_second():
    best = float("inf")
    for _ in range(3):  # the best of three: the machine may be busy
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "sdu_ext", "--help"], capture_output=True, text=True, cwd=REPO,
                           timeout=120)
        best = min(best, time.perf_counter() - t0)
        assert r.returncode == 0 and "reproduce" in r.stdout
    assert best < 1.0, f"`sdu-ext --help` took {best:.2f} s"


def test_warnings_print_one_clean_line_each(tmp_path, cache_dir, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        rc = cli.main(["lista", "train", "--preset", "tiny", "--epochs", "0", "--out", str(tmp_path / "w"), "--quiet",
                       "--data-cache", cache_dir])
    assert rc == 0
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3, lines  # the train, val and test splits drop samples whose optimum is 0
    for line in lines:
        assert re.fullmatch("sdu-ext: warning: " + DROPPED + r" \(the ratio forms .*\)", line), line


def test_out_of_a_previous_run_is_refused(trained, reproduced, tmp_path, cache_dir, capsys):
    for argv in (["lista", "train", "--preset", "tiny", "--out", str(trained)],
                 ["reproduce", "lista", "--preset", "tiny", "--out", str(reproduced)]):
        assert cli.main(argv + ["--quiet", "--data-cache", cache_dir]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("sdu-ext: error: --out: ") and "holds a previous run" in err
        assert "pass --resume to continue it or --overwrite to replace it" in err
    run = tmp_path / "again"
    argv = ["lista", "train", "--preset", "tiny", "--out", str(run), "--quiet", "--data-cache", cache_dir]
    assert cli.main(argv + ["--epochs", "2"]) == 0 and cli.main(argv + ["--epochs", "1"]) == 2
    assert cli.main(argv + ["--epochs", "1", "--overwrite"]) == 0
    assert load_checkpoint(run / "last.pt")["epoch"] == 1  # a fresh run, not a continued one
    with pytest.raises(SystemExit) as e:
        cli.main(argv + ["--overwrite", "--resume"])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_out_and_data_cache_must_be_folders(tmp_path, cache_dir, capsys):
    afile = tmp_path / "file"
    afile.write_text("x")
    for argv, msg in ((["--out", str(afile), "--data-cache", cache_dir], "--out: expected a folder, got the file"),
                      (["--out", "", "--data-cache", cache_dir], "--out: expected a folder path, got ''"),
                      (["--out", str(tmp_path / "o"), "--data-cache", str(afile)],
                       "--data-cache: expected a folder path, got the file"),
                      (["--out", str(tmp_path / "o"), "--data-cache", ""], "--data-cache: expected a folder path")):
        assert cli.main(["lista", "train", "--preset", "tiny", "--quiet"] + argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"sdu-ext: error: {msg}") and err.count("\n") == 1, err


def test_ctrl_c_ends_with_one_line_and_status_130(tmp_path, cache_dir):
    run = tmp_path / "run"
    argv = ["lista", "train", "--preset", "tiny", "--epochs", "100000", "--out", str(run), "--quiet",
            "--threads", "1", "--data-cache", cache_dir]
    proc = subprocess.Popen([sys.executable, "-m", "sdu_ext", *argv], cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "last.pt").is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.3)  # a few more epochs
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if not line.startswith("sdu-ext: warning: ")]
    assert len(lines) == 1, err
    m = re.fullmatch(r"sdu-ext: interrupted at epoch (\d+) of 100000; `sdu-ext (.*)` continues", lines[0])
    assert m, lines[0]
    assert m.group(2) == " ".join(argv + ["--resume"])
    assert load_checkpoint(run / "last.pt")["epoch"] == int(m.group(1)) - 1  # the last checkpoint is intact


def test_ctrl_c_message(tmp_path):
    args = cli.build_parser().parse_args(["reproduce", "lista", "--preset", "tiny", "--out", "r d", "--overwrite"])
    line = cli._interrupted(Interrupted(2, 3, "noisy"), ["reproduce", "lista", "--preset", "tiny", "--out", "r d",
                                                         "--overwrite"], args)
    assert line == ("sdu-ext: interrupted at epoch 2 of 3 (the noisy network); "
                    "`sdu-ext reproduce lista --preset tiny --out 'r d' --resume` continues")
    args = cli.build_parser().parse_args(["lista", "eval", "--checkpoint", "c"])
    assert cli._interrupted(KeyboardInterrupt(), ["lista", "eval", "--checkpoint", "c"], args) == "sdu-ext: interrupted"
