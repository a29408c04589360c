"""The house rules a newcomer relies on, checked on the source tree itself: small modules, small
packages, flows that read as stories, and no import cycle (type-only imports included)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("docflow", "flows", "tasks", "localcloud", "inference")
MAX_MODULE_LINES = 400
MAX_PACKAGE_MODULES = 15
MAX_FLOW_LINES = 200


def _modules() -> Iterator[Path]:
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


def _name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    if rel.parts[0] == "inference":  # the container's code/: its modules are top-level there
        rel = rel.relative_to("inference")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def test_no_module_is_over_400_lines() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in _modules()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"split these modules (one concern each, at most {MAX_MODULE_LINES} lines)"


def test_no_package_holds_more_than_15_modules() -> None:
    """inference/ is exempt: it is the container's flat code/ folder (its modules are top-level)."""
    counts: dict[str, int] = {}
    for path in _modules():
        if path.name != "__init__.py" and path.relative_to(ROOT).parts[0] != "inference":
            key = str(path.parent.relative_to(ROOT))
            counts[key] = counts.get(key, 0) + 1
    big = {k: n for k, n in counts.items() if n > MAX_PACKAGE_MODULES}
    assert not big, f"group these packages' modules into subpackages: {big}"


@pytest.mark.parametrize("flow", ["process_documents", "ask_documents"])
def test_the_document_flows_are_short_stories(flow: str) -> None:
    import importlib

    source = ROOT / "flows" / f"{flow}.py"
    assert len(source.read_text().splitlines()) < MAX_FLOW_LINES
    function = getattr(importlib.import_module(f"flows.{flow}"), flow)
    assert len(function.parameters.properties) <= 16


def _imports(path: Path, known: set[str]) -> set[str]:
    """The project modules ``path`` imports at module level (type-checking imports included)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.If | ast.Try):
                visit(node.body)
                visit(node.orelse)

    visit(tree.body)
    return {name for name in found if name in known}


def test_there_is_no_import_cycle() -> None:
    paths = {_name(p): p for p in _modules()}
    graph = {name: _imports(path, set(paths)) - {name} for name, path in paths.items()}
    for name in list(graph):  # a package's __init__ is not what its modules import
        graph[name] = {m for m in graph[name] if paths[m].name != "__init__.py"}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_architecture_page_maps_every_package_as_it_is() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("package_map", ROOT / "tools" / "package_map.py")
    assert spec is not None and spec.loader is not None
    package_map = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(package_map)
    page = package_map.DOC.read_text()
    assert page == package_map.rendered(page), "run `make package-map` (docs/architecture.md)"
    for path in _modules():
        if path.name != "__init__.py":
            assert f"| `{path.name}` |" in page, f"{path} is not in docs/architecture.md"
