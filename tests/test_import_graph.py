"""The runtime package's import graph has no cycle, counting the imports inside functions
too (a function-level import may delay a module, never hide a cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

import tflm_patch

PACKAGE = Path(tflm_patch.__file__).parent


def _imports(path: Path) -> set[str]:
    """The package modules `path` imports, anywhere in it."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "tflm_patch":
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n.split(".")[1] if n.startswith("tflm_patch.") else n for n in names}


def import_graph() -> dict[str, set[str]]:
    modules = {p.stem: p for p in PACKAGE.glob("*.py")}
    graph = {m: _imports(p) & set(modules) for m, p in modules.items()}
    # run as a program, _tflm_child imports its own package copy (not a cycle)
    graph["_tflm_child"].discard("_tflm_child")
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return [*path[path.index(n):], n]
            if n not in state and (found := visit(n)):
                return found
        state[m] = 2
        path.pop()
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_runtime_package_has_no_import_cycle() -> None:
    graph = import_graph()
    assert {"planner", "arena", "arena_measure", "arena_head", "stage"} <= set(graph)
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_check_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
