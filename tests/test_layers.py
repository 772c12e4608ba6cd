"""The code's shape holds: app/'s packages import each other in one direction only, the error
types know no web framework, the store reports to metrics through callbacks, and no module
grows past 400 lines."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from app.settings import PROJECT_ROOT

APP = PROJECT_ROOT / "app"
MAX_LINES = 400


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(APP.rglob("*.py")):
        parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def _imports(path: Path) -> set[str]:
    """Every app module a file imports, at the top or inside a function (a lazy import is
    still a dependency)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "app" or name.startswith("app.")}


def _package(module: str) -> str:
    """app.store.audiences -> store; app.errors -> errors (a top-level module is its own)."""
    return module.split(".")[1] if module.count(".") else module


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in _modules():
        source = _package(module)
        targets = {_package(target) for target in _imports(path)} - {source, "app"}
        graph.setdefault(source, set()).update(targets)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one package (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_between_packages() -> None:
    assert cycles(package_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The test above can fail: a cycle through three packages is found."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_layers_point_down() -> None:
    graph = package_graph()
    # errors and settings are the bottom: they import nothing of the app's
    assert graph["errors"] == set()
    assert graph["settings"] == set()
    # the store reports its counts through callbacks, not by importing metrics
    assert "metrics" not in graph["store"]
    # the services know nothing of HTTP, the lifecycle nothing of the services
    assert "api" not in graph["service"]
    assert "service" not in graph["lifecycle"]
    # training and scoring share app.datafiles rather than importing one another's modules
    assert "training" not in graph["scoring"]


def test_error_types_import_no_web_framework() -> None:
    source = (APP / "errors.py").read_text()
    tree = ast.parse(source)
    imported = {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    } | {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert not imported & {"fastapi", "starlette", "uvicorn"}


def test_no_module_is_over_400_lines() -> None:
    long = {
        str(path.relative_to(PROJECT_ROOT)): lines
        for _, path in _modules()
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}
