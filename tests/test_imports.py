"""The import graph of neardup's modules: no cycles, and the lower stages never reach the CLI or the
review app. Module-level imports only (read from the source, nothing is imported); an import inside
a function (done lazily, at call time) or under ``if TYPE_CHECKING:`` is not an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "neardup"
#: stages below the commands: they must not import the CLI or the review app, even indirectly
LOWER = ("neardup.sources", "neardup.embed", "neardup.similarity", "neardup.grouping", "neardup.catalog")
UPPER = ("neardup.cli", "neardup.review")


def _modules() -> dict[str, Path]:
    """Every module of the package: dotted name → file (a package is its ``__init__.py``)."""
    out = {}
    for f in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = f
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _top_level_imports(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: module body, incl. if/try blocks, not functions."""
    out: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                out += _top_level_imports(node.body)
            out += _top_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                out += _top_level_imports(block)
        elif isinstance(node, (ast.With, ast.For, ast.While)):
            out += _top_level_imports(node.body)
    return out


def import_graph() -> dict[str, set[str]]:
    """``{module: {neardup modules it imports at module level}}``."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in _top_level_imports(ast.parse(path.read_text(), str(path)).body):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                # `from pkg import sub` imports the module pkg.sub; `from mod import name` imports mod
                targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in mods else stem for a in node.names]
            for t in targets:
                while t and t not in mods and "." in t:  # `import neardup.x.y` of a name inside x.y
                    t = t.rsplit(".", 1)[0]
                if t in mods and t != mod:
                    graph[mod].add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return comps


def _reachable(graph: dict[str, set[str]], start: str) -> dict[str, str]:
    """Modules reachable from ``start`` → the module that imports them on the way (for the message)."""
    seen = {start: ""}
    todo = [start]
    while todo:
        v = todo.pop()
        for w in sorted(graph[v]):
            if w not in seen:
                seen[w] = v
                todo.append(w)
    return seen


def _path(seen: dict[str, str], end: str) -> str:
    chain = [end]
    while seen[chain[-1]]:
        chain.append(seen[chain[-1]])
    return " -> ".join(reversed(chain))


def _in(mod: str, prefixes: tuple[str, ...]) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in prefixes)


def test_graph_sees_the_package() -> None:
    """The parser finds real edges (a graph with none would pass everything)."""
    g = import_graph()
    assert "neardup.catalog" in g["neardup.dedup"]
    assert "neardup.catalog.runs" in g["neardup.catalog"]
    assert "neardup.errors" in g["neardup.catalog.connection"]      # `from ..errors import` (relative, level 2)
    assert "neardup.interrupts" in g["neardup.catalog.connection"]  # `from .. import interrupts`
    assert len(g) > 40


def test_no_import_cycles() -> None:
    assert _cycles(import_graph()) == []


@pytest.mark.parametrize("lower", LOWER)
def test_lower_stages_do_not_import_cli_or_review(lower: str) -> None:
    g = import_graph()
    bad = []
    for start in [m for m in g if _in(m, (lower,))]:
        seen = _reachable(g, start)
        bad += [_path(seen, m) for m in seen if _in(m, UPPER)]
    assert bad == [], "\n".join(bad)


def test_cycle_finder_finds_a_cycle() -> None:
    """The checker itself: a cycle and a layering breach in a made-up graph are reported."""
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(g) == [["a", "b", "c"]]
    assert _path(_reachable(g, "d"), "c") == "d -> a -> b -> c"
