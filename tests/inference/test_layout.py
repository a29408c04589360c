"""The container code's layout: small modules and no import cycle (type-only imports included)."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter

from tests.inference.conftest import HANDLER_PATH

CODE = HANDLER_PATH.parent


def test_no_module_over_400_lines() -> None:
    sizes = {p.name: len(p.read_text().splitlines()) for p in CODE.glob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 400} == {}


def test_no_import_cycle_among_the_container_modules() -> None:
    modules = {p.stem: p for p in CODE.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
        graph[name] = imported & set(modules)
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        raise AssertionError(f"import cycle: {exc.args[1]}") from None
    assert order.index("generator") < order.index("engine_core") < order.index("serving")
    assert "engine_core" not in graph["loaded_model"] and "loaded_model" not in graph["engine_core"]
