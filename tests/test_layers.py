"""The package's floor plan holds: wings import downward only, no module imports itself back through a
circle, and no module grows past the size that keeps it readable (STYLE.md, issue 15).

Read from the source with ``ast`` (imports inside functions count too: a late import is still a dependency).
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gatekeeper"

# Floors, top first: a room may import rooms on its own floor's wing or any lower floor, never a higher one.
FLOORS: List[Set[str]] = [
    {"__main__"},
    {"cli"},
    {"app"},
    {"config"},
    {"jwt", "ops", "middlewares"},
    {"expr", "proxy", "server"},
    {"options", "requestpath"},
    {"jsontext", "errors", "wsgi"},
]
# Sideways edges between wings of one floor that the plan allows (ops shows key-set state; ops/echo, the demo
# upstream, serves itself with the server wing).
SIDEWAYS = {("ops", "jwt"), ("ops", "server")}
MAX_LINES = 400


def room(module: str) -> str:
    """``gatekeeper.config.compile`` -> ``config``; ``gatekeeper.wsgi`` -> ``wsgi``; ``gatekeeper`` -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def floor_of(name: str) -> int:
    return next(i for i, floor in enumerate(FLOORS) if name in floor)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, modules: Set[str]) -> Set[str]:
    """The package modules ``path`` imports. ``from gatekeeper.config.providers import file`` is an import of
    the submodule ``file`` only (its package is already being imported as its parent)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gatekeeper"):
            submodules = {f"{node.module}.{a.name}" for a in node.names} & modules
            found.update(submodules)
            if len(submodules) < len(node.names):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("gatekeeper"))
    return found & modules


def graph() -> Dict[str, Set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports_of(path, set(modules)) - {name} for name, path in modules.items()}


def upward_edges(edges: Dict[str, Set[str]]) -> List[str]:
    bad = []
    for source, targets in edges.items():
        for target in targets:
            a, b = room(source), room(target)
            if not a or not b or a == b or (a, b) in SIDEWAYS:
                continue  # the package's own __init__ (lazy public API) and moves inside a wing
            if floor_of(b) <= floor_of(a):
                bad.append(f"{source} -> {target}")
    return sorted(bad)


def circles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """Every strongly connected set of two or more modules (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            members = []
            while True:
                member = stack.pop()
                members.append(member)
                if member == node:
                    break
            if len(members) > 1:
                found.append(sorted(members))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_every_room_is_on_a_floor():
    rooms = {room(module_name(p)) for p in PACKAGE.rglob("*.py")} - {""}
    assert rooms <= set().union(*FLOORS), rooms - set().union(*FLOORS)


def test_no_import_goes_up_a_floor():
    assert upward_edges(graph()) == []


def test_no_import_circle():
    # The package's own __init__ is left out: it names the public API lazily (``__getattr__``).
    edges = {k: {m for m in v if m != "gatekeeper"} for k, v in graph().items() if k != "gatekeeper"}
    assert circles(edges) == []


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_stays_small(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


def test_the_checks_would_see_a_violation():
    """The checks themselves can fail: an upward edge and a circle, made up."""
    made_up = {"gatekeeper.expr.compiler": {"gatekeeper.config.compile"},
               "gatekeeper.config.compile": {"gatekeeper.expr.compiler"}}
    assert upward_edges(made_up) == ["gatekeeper.expr.compiler -> gatekeeper.config.compile"]
    assert circles(made_up) == [["gatekeeper.config.compile", "gatekeeper.expr.compiler"]]
