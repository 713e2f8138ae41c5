"""The package's import graph has no cycle, even with every function-level import hoisted.

Imports under ``if TYPE_CHECKING:`` count as edges: a type a module names is a dependency,
and a circle through one is still a circle for readers and import-graph tools.

Built from the source (``ast``), not from a running interpreter: an edge is ``A imports B``
for modules of this package. Function-level imports are allowed only to keep start-up cheap
(each says so in a comment); the graph with them counted as module-level must still be
acyclic, so hoisting one never breaks the package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).parent.parent
PACKAGE = "mergekit_tokenplug"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _targets(node: ast.AST, current: str, is_pkg: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = current.split(".")
            base = base[: len(base) - node.level + (1 if is_pkg else 0)]
            mod = ".".join([*base, node.module] if node.module else base)
        else:
            mod = node.module or ""
        # `from pkg import sub` imports the submodule pkg.sub when it is one
        return [mod, *(f"{mod}.{a.name}" for a in node.names)]
    return []


class _Imports(ast.NodeVisitor):
    """Package-internal imports of one module: (first line, last line, target, in a function)."""

    def __init__(self, name: str, is_pkg: bool, modules: set[str]):
        self.name, self.is_pkg, self.modules = name, is_pkg, modules
        self.found: list[tuple[int, int, str, bool]] = []
        self.depth = 0

    def visit_FunctionDef(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_Lambda = visit_FunctionDef

    def _record(self, node: ast.Import | ast.ImportFrom) -> None:
        for target in _targets(node, self.name, self.is_pkg):
            if target in self.modules and target != self.name:
                self.found.append((node.lineno, node.end_lineno or node.lineno, target, self.depth > 0))

    visit_Import = visit_ImportFrom = _record


def import_graph(with_function_level: bool) -> tuple[nx.DiGraph, list[tuple[str, int, int, str]]]:
    """(graph of package modules, function-level imports as (module, line, end, target))."""
    files = sorted((ROOT / PACKAGE).rglob("*.py"))
    modules = {module_name(f): f for f in files}
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    local: list[tuple[str, int, int, str]] = []
    for name, path in modules.items():
        visitor = _Imports(name, path.name == "__init__.py", set(modules))
        visitor.visit(ast.parse(path.read_text(encoding="utf-8")))
        for line, end, target, in_function in visitor.found:
            if in_function:
                local.append((name, line, end, target))
            if with_function_level or not in_function:
                graph.add_edge(name, target)
    return graph, local


@pytest.mark.parametrize("with_function_level", [False, True], ids=["module-level", "hoisted"])
def test_no_import_cycle(with_function_level):
    graph, _ = import_graph(with_function_level)
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, f"import cycles: {sorted(cycles, key=len)[:5]}"


def test_function_level_imports_say_why():
    """Each function-level import of a package module carries a comment (start-up cost)."""
    _, local = import_graph(True)
    missing = []
    for name, line, end, target in local:
        path = ROOT / Path(*name.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        lines = path.read_text(encoding="utf-8").splitlines()
        here, above = lines[line - 1 : end], lines[line - 2] if line > 1 else ""
        if not any("#" in text for text in here) and not above.strip().startswith("#"):
            missing.append(f"{name}:{line} -> {target}")
    assert not missing, "function-level imports without a comment saying why: " + ", ".join(sorted(set(missing)))
