"""The README runs as written: every python block, every `sdu-ext` line parses, and the
`lista train / eval / robustness` lines run (tiny preset)."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_usage_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no python example"
    namespace = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)  # noqa: S102
    assert namespace["code"].shape == (8, 500)
    assert namespace["values"].shape == (10,) and namespace["per_sample"].shape == (10, 512)
    assert namespace["x"].grad is not None and namespace["theta"].grad is not None
    assert "'openmp': True" in capsys.readouterr().out


def test_readme_training_example_runs(tmp_path, monkeypatch):
    import torch

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2, "README.md has no training example"
    gen = torch.Generator().manual_seed(0)
    D = torch.nn.functional.normalize(torch.randn(20, 40, generator=gen), dim=0)
    namespace = {"D": D}
    for split, rows in (("train", 64), ("val", 32)):
        namespace[f"x_{split}"] = torch.randn(rows, 20, generator=gen)
        namespace[f"y_{split}"] = 0.1 * torch.randn(rows, 40, generator=gen)
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[1].replace("epochs=20", "epochs=2"), str(README), "exec"), namespace)  # noqa: S102
    assert len(namespace["history"]) == 2
    assert all(row[f"nu_{l}"] >= 0 for row in namespace["history"] for l in range(1, 11))
    assert (tmp_path / "runs" / "c" / "last.pt").exists()


def test_readme_commands_write_fresh_folders_under_runs():
    """The README's `sdu-ext` commands never rewrite the committed reports in docs/results/."""
    commands = [line for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
                for line in block.splitlines() if "sdu-ext" in line]
    main = [c for c in commands if "reproduce lista --preset quick" in c]
    assert main and "--out runs/lista_quick" in main[0]
    for command in commands:
        out = re.search(r"--out (\S+)", command)
        assert out is None or out.group(1).startswith("runs/"), command


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _commands(prefix):
    """The README's `sdu-ext` command lines starting with ``prefix`` (comments dropped), as argv lists."""
    import shlex

    out = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        for line in block.splitlines():
            for part in line.split("#")[0].split("&&"):
                words = shlex.split(part)
                if words and words[0].endswith("sdu-ext") and " ".join(words[1:]).startswith(prefix):
                    out.append(words[1:])
    return out


def test_readme_later_python_examples_run(tmp_path, monkeypatch):
    """Every python block after the two above runs as written (data cached under tmp_path)."""
    blocks = _python_blocks()[2:]
    assert blocks, "README.md has no problems/solvers example"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SDU_EXT_CACHE", str(tmp_path / "cache"))
    for block in blocks:
        namespace = {}
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
    result = namespace.get("result")
    if result is not None:  # the solver example: every test signal certified
        assert result.codes.shape == (100, 500) and bool(result.converged.all())
        assert bool((result.gap <= 1e-6 * result.objective).all())


def test_readme_commands_parse():
    """Every `sdu-ext ...` line of the README names options the command has."""
    from sdu_ext import cli

    commands = _commands("")
    assert len(commands) >= 6
    parser = cli.build_parser()
    for argv in commands:
        parser.parse_args(argv)


@pytest.mark.filterwarnings("ignore:data. dropped:UserWarning")
def test_readme_lista_train_eval_robustness_run(tmp_path, monkeypatch):
    """The README's `lista train / eval / robustness` lines, with the tiny preset, in this order."""
    from sdu_ext import cli

    commands = [c for c in _commands("lista ") if c[1] in ("train", "eval", "robustness")]
    assert [c[1] for c in commands] == ["train", "eval", "robustness"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SDU_EXT_CACHE", str(tmp_path / "cache"))
    for argv in commands:
        argv = ["tiny" if a == "quick" else a for a in argv]
        if "--preset" not in argv and argv[1] == "train":
            argv += ["--preset", "tiny"]
        assert cli.main(argv + ["--quiet"]) == 0, argv
    run = tmp_path / "runs" / "lista_c"
    assert (run / "best.pt").exists() and (run / "eval" / "eval.json").exists()
    assert (run / "robustness" / "robustness.json").exists()
