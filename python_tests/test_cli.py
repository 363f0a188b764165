"""The `sdu-ext` command: `reproduce lista` end to end on the tiny preset (report folder,
resume), `lista train/eval/robustness`, presets, and the stated errors."""
import json
import os
import subprocess
import sys

import pytest
import torch

from sdu_ext import cli, presets
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
    with pytest.warns(UserWarning, match=DROPPED):  # the tiny problem has signals whose optimum is 0
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
    assert "resume: " in capsys.readouterr().err


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


def test_python_dash_m_help():
    r = subprocess.run([sys.executable, "-m", "sdu_ext", "--help"], capture_output=True, text=True, cwd=REPO,
                       timeout=120)
    assert r.returncode == 0
    assert "lista" in r.stdout and "reproduce" in r.stdout
    r = subprocess.run([sys.executable, "-m", "sdu_ext", "reproduce", "lista", "--help"], capture_output=True,
                       text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0 and "--preset" in r.stdout and "--resume" in r.stdout
