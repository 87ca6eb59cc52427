"""hgmt's layers: every import of a module of hgmt (function-level ones included) goes to its own
layer or a lower one, and no two modules import each other through any chain."""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "hgmt"
# Bottom to top. A module imports from its own layer or lower ones only.
LAYERS = [
    ("base", ["hgmt.cli", "hgmt.console", "hgmt.stops", "hgmt.paths", "hgmt.workdirs",
              "hgmt.run_config", "hgmt.disk_space", "hgmt.compilation_cache", "hgmt.cores",
              "hgmt.devices", "hgmt.code_version", "hgmt.choices"]),
    ("sources", ["hgmt.sources"]),
    ("tasks", ["hgmt.tasks"]),
    ("models", ["hgmt.models"]),
    ("data", ["hgmt.data"]),
    ("evaluation", ["hgmt.evaluation"]),
    ("training", ["hgmt.training"]),
    ("inference", ["hgmt.inference"]),
    ("study", ["hgmt.study"]),
    ("commands", ["hgmt.main", "hgmt.evaluate", "hgmt.predict", "hgmt.export", "hgmt.report"]),
]


def layer_of(module: str) -> int:
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{module} belongs to no layer: add it to tests/test_layout.py LAYERS")


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, set[str]]:
    """{module: the hgmt modules it imports}, from the source (every import statement)."""
    names = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in names.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("hgmt")}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hgmt"):
                for a in node.names:  # `from hgmt.x import y`: y is a module or a name in x
                    full = f"{node.module}.{a.name}"
                    deps.add(full if full in names else node.module)
        graph[name] = {d for d in deps if d in names and d != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph[n]):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (found := visit(d)):
                return found
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_module_imports_a_higher_layer():
    graph = modules()
    assert len(graph) > 30  # the walk found the package
    back = sorted(f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
                  for m, deps in graph.items() for d in deps if layer_of(d) > layer_of(m))
    assert back == []


def test_the_sources_layer_imports_no_jax():
    """Every module of hgmt.sources (SURREAL's readers, labels and camera, the demo clips'
    writer) is NumPy, OpenCV and PyAV only: a script that reads SURREAL's files does not pay
    JAX's import."""
    import subprocess
    import sys

    sources = sorted(p.stem for p in (ROOT / "sources").glob("*.py") if p.stem != "__init__")
    assert {"surreal", "synthetic", "body", "camera"} <= set(sources)
    code = (f"import sys; import {', '.join('hgmt.sources.' + s for s in sources)}; "
            "print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('jax', 'jaxlib', 'flax')))")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT.parent, capture_output=True,
                         text=True, timeout=120, env={"PYTHONPATH": str(ROOT.parent),
                                                      "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_no_import_cycle():
    assert find_cycle(modules()) is None


def test_the_checks_catch_a_back_import_and_a_cycle():
    graph = {"hgmt.tasks.a": {"hgmt.training.loop"}, "hgmt.training.loop": {"hgmt.tasks.a"}}
    assert layer_of("hgmt.tasks.a") < layer_of("hgmt.training.loop")
    assert find_cycle(graph) == ["hgmt.tasks.a", "hgmt.training.loop", "hgmt.tasks.a"]
    with pytest.raises(AssertionError, match="no layer"):
        layer_of("hgmt.elsewhere")


def test_contributing_names_the_layers_in_order():
    """CONTRIBUTING.md's sentence on the layers names LAYERS' modules and layers, bottom up."""
    text = (ROOT.parent / "CONTRIBUTING.md").read_text()
    sentence = text[text.index("Layers: "):].split("\n\n", 1)[0]
    named = re.findall(r"`(\w+)`", sentence)
    base = [m.removeprefix("hgmt.") for m in LAYERS[0][1]]
    assert named == base + [layer for layer, _ in LAYERS[1:-1]], sentence
