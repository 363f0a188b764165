"""The package's layout rules: every module imports, no import circle (module-level or inside
functions), no module over 600 lines, no single-letter aliases of sdu_ext modules, and the CLI stays
torch-free until a command runs."""
import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sdu_ext"
MAX_LINES = 600


def _modules():
    """``{module name: path}`` of every Python file of sdu_ext (packages under their own name)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()
# compiled modules (sdu_ext._C): leaves of the graph
EXTENSIONS = {"sdu_ext." + p.name.split(".")[0] for p in PACKAGE.glob("*.so")} | {"sdu_ext._C"}


def _resolve(importer, node):
    """The sdu_ext modules an import statement of module ``importer`` names."""
    is_package = MODULES[importer].name == "__init__.py"
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "sdu_ext"]
    if node.level:
        base = importer.split(".")
        base = base[:len(base) - node.level + (1 if is_package else 0)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target.split(".")[0] != "sdu_ext":
        return []
    names = [f"{target}.{a.name}" for a in node.names]
    found = [n for n in names if n in MODULES or n in EXTENSIONS]  # `from pkg import submodule`
    return found if len(found) == len(names) else found + [target]


def _graph():
    graph = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges.update(t for t in _resolve(name, node) if t in MODULES and t != name)
        graph[name] = edges
    return graph


def _cycle(graph):
    """One import circle of ``graph`` as a list of modules, or None."""
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == "open":
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = "done"
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_the_graph_sees_imports_and_finds_circles():
    graph = _graph()
    assert "sdu_ext.experiments.common" in graph["sdu_ext.experiments.lista"]
    assert "sdu_ext.evaluate.inpainting" in graph["sdu_ext.evaluate.plots"]  # an import inside a function
    assert "sdu_ext.ops" in graph["sdu_ext.nn"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle():
    circle = _cycle(_graph())
    assert circle is None, "import circle: " + " -> ".join(circle)


@pytest.mark.parametrize("name", sorted(n for n in MODULES if not n.endswith("__main__")))
def test_every_module_imports(name):
    importlib.import_module(name)


def test_no_module_over_600_lines():
    long = {str(p.relative_to(ROOT)): n for p in MODULES.values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_no_single_letter_module_aliases():
    found = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for a in node.names:
                    is_module = isinstance(node, ast.Import) or any(t.endswith(f".{a.name}")
                                                                    for t in _resolve(name, node))
                    if a.asname and len(a.asname) == 1 and is_module:
                        found.append(f"{name}: {a.name} as {a.asname}")
    assert not found, found


def test_the_cli_imports_no_torch_until_a_command_runs():
    code = ("import sys; from sdu_ext import cli; cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'sdu_ext.experiments.common', 'sdu_ext.presets') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
