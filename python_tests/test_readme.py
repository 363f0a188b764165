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
