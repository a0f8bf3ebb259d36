"""The package's layers: imports only point down (DESIGN.md), there is no import circle, and the few
imports made inside functions are the lazy ones the start-up needs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "videoldm"
# top to bottom; a module may import from its own layer's package and from any lower layer
LAYERS = [
    {"cli", "app", "__main__"},
    {"generation"},
    {"training"},
    {"pipelines", "metrics"},
    {"models", "data"},
    {"defaults", "config", "embedded", "_startup"},
]


def _package(module: str) -> str:
    """``videoldm.pipelines.video`` -> ``pipelines``; ``videoldm.cli`` -> ``cli``."""
    return module.split(".")[1]


def _layer(module: str) -> int:
    return next(index for index, names in enumerate(LAYERS) if _package(module) in names)


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _imports(name: str, path: Path) -> list[tuple[str, bool]]:
    """``(imported videoldm module, at module level)`` for every import of ``name``'s source, relative or absolute."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    top_level = {id(node) for node in tree.body} | {id(inner) for node in tree.body if isinstance(node, ast.If)
                                                     for inner in node.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            targets = [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        for target in targets:
            if target.startswith("videoldm."):
                found.append((target, id(node) in top_level))
    return found


def _resolve(target: str, modules: dict[str, Path]) -> str | None:
    while target and target not in modules:
        target = target.rsplit(".", 1)[0] if "." in target else ""
    return target or None


def _graph() -> dict[str, list[tuple[str, bool]]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        edges = []
        for target, top in _imports(name, path):
            resolved = _resolve(target, modules)
            if resolved and resolved != name and resolved != "videoldm":
                edges.append((resolved, top))
        graph[name] = edges
    return graph


def test_imports_only_point_down():
    upward = [f"{name} -> {target}" for name, edges in _graph().items() if name != "videoldm"
              for target, _ in edges if _layer(target) < _layer(name)]
    assert upward == []


def _circles(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                circles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return circles


def test_no_import_circle():
    """Inside functions too: a lazy import makes a circle work, it does not remove it."""
    graph = {name: {target for target, _ in edges} for name, edges in _graph().items()}
    # a package's __init__ importing its own submodules is how packages are made, not a circle
    graph = {name: {t for t in targets if not t.startswith(name + ".")} for name, targets in graph.items()}
    assert _circles(graph) == []
@pytest.mark.parametrize("module", ["videoldm.generation", "videoldm.pipelines.directory", "videoldm.pipelines.planning",
                                    "videoldm.data.paths", "videoldm.defaults", "videoldm.config", "videoldm.cli"])
def test_the_request_layer_imports_no_torch(module):
    import subprocess
    import sys

    code = f"import sys, {module}; print('torch' in sys.modules, 'diffusers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["False", "False"], result.stderr[-2000:]
