"""The README's usage example runs as written."""
import re
from pathlib import Path

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
