"""Issue 12's aims as tests: one-way imports, small modules, small classes, layering.

The import graph is built with ``ast`` from every ``wxtokend/**/*.py`` and counts every
import: top level, inside functions and under ``if TYPE_CHECKING:``. ``import a.b`` imports
``a.b``; ``from pkg import x`` imports the submodule ``pkg.x`` if there is one, else the
name ``x`` out of ``pkg`` itself (its ``__init__``). So a package ``__init__`` re-exporting
its submodules is no cycle with them, but a submodule reading names from its package's
``__init__`` while that ``__init__`` imports it is one.
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "wxtokend"
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 250

# The refresh loop and its parts (obtain, passive refresh, persistence).
LOOP = (
    "wxtokend.holding",
    "wxtokend.obtain",
    "wxtokend.outcomes",
    "wxtokend.passive",
    "wxtokend.persist",
    "wxtokend.refresher",
)

Graph = Mapping[str, Mapping[str, int]]  # module -> {imported module: line of the import}


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def sources() -> dict[str, tuple[str, bool]]:
    """Every module of the package: name -> (source, is it a package __init__)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name, is_package = _module_name(path)
        found[name] = (path.read_text(encoding="utf-8"), is_package)
    return found


def import_graph(modules: Mapping[str, tuple[str, bool]]) -> dict[str, dict[str, int]]:
    """Who imports whom among ``modules``, every import counted wherever it stands."""
    graph: dict[str, dict[str, int]] = {}
    for name, (source, is_package) in modules.items():
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(source)):
            for target in _targets(node, name, is_package, modules):
                if target != name:
                    edges.setdefault(target, node.lineno)  # type: ignore[attr-defined]
        graph[name] = edges
    return graph


def _targets(node: ast.AST, name: str, is_package: bool, modules: Iterable[str]) -> list[str]:
    known = set(modules)
    if isinstance(node, ast.Import):
        return [m for alias in node.names if (m := _known_prefix(alias.name, known))]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        package = name.split(".") if is_package else name.split(".")[:-1]
        base_parts = package[: len(package) - (node.level - 1)]
        base = ".".join([*base_parts, *([node.module] if node.module else [])])
    else:
        base = node.module or ""
    if base not in known:  # an outside module, or a module of a package we know
        found = _known_prefix(base, known)
        return [found] if found else []
    targets = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        targets.append(sub if sub in known else base)  # a submodule, or a name of base
    return targets


def _known_prefix(dotted: str, known: set[str]) -> str | None:
    parts = dotted.split(".")
    while parts:
        if ".".join(parts) in known:
            return ".".join(parts)
        parts.pop()
    return None


def cycles(graph: Graph) -> list[list[str]]:
    """The shortest cycle through each module on one, as modules in import order."""
    found = []
    for group in _strongly_connected(graph):
        if len(group) < 2:
            continue
        seen: set[tuple[str, ...]] = set()
        for start in sorted(group):  # the shortest cycle through each member, each once
            cycle = _shortest_cycle(graph, start, group)[:-1]
            first = cycle.index(min(cycle))
            rotated = (*cycle[first:], *cycle[:first])
            if rotated not in seen:
                seen.add(rotated)
                found.append([*rotated, rotated[0]])
    return sorted(found)


def _strongly_connected(graph: Graph) -> list[set[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, {})):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def _shortest_cycle(graph: Graph, start: str, group: set[str]) -> list[str]:
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in sorted(graph.get(node, {})):
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            if nxt in group and nxt not in came_from:
                came_from[nxt] = node
                queue.append(nxt)
    raise AssertionError(f"no cycle through {start}")  # a group of 2+ always has one


def physical_lines(source: str) -> int:
    """What ``wc -l`` says: the newlines in the file."""
    return source.count("\n")


def long_classes(source: str, limit: int = MAX_CLASS_LINES) -> list[tuple[str, int]]:
    """(class, its length with decorators) for every class longer than ``limit`` lines."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            length = (node.end_lineno or node.lineno) - first + 1
            if length > limit:
                found.append((node.name, length))
    return found


def reaches(graph: Graph, start: str, goal: set[str]) -> list[str] | None:
    """The import path from ``start`` to a module in ``goal``, or None."""
    came_from: dict[str, str] = {start: start}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if node in goal and node != start:
            path = [node]
            while path[-1] != start:
                path.append(came_from[path[-1]])
            return path[::-1]
        for nxt in sorted(graph.get(node, {})):
            if nxt not in came_from:
                came_from[nxt] = node
                queue.append(nxt)
    return None


def _under(module: str, *roots: str) -> bool:
    return any(module == root or module.startswith(root + ".") for root in roots)


def _arrows(path: list[str]) -> str:
    return " → ".join(path)


class TestImportCycles:
    """No import cycle inside the wxtokend package, TYPE_CHECKING imports included."""

    def test_no_cycle(self) -> None:
        found = cycles(import_graph(sources()))
        assert not found, "import cycles:\n" + "\n".join(_arrows(c) for c in found)

    def test_a_synthetic_cycle_is_reported(self) -> None:
        graph = {"p.a": {"p.b": 1}, "p.b": {"p.c": 1}, "p.c": {"p.a": 1}, "p.d": {"p.a": 1}}
        assert cycles(graph) == [["p.a", "p.b", "p.c", "p.a"]]

    def test_imports_are_resolved_like_python_does(self) -> None:
        modules = {
            "p": ("from p.sub import x\n", True),
            "p.sub": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import y\n",
                False,
            ),
            "p.other": ("def f():\n    import p.sub\n", False),
            "p.uses": ("from p import sub, y\n", False),
        }
        graph = import_graph(modules)
        assert graph["p"] == {"p.sub": 1}
        assert graph["p.sub"] == {"p": 3}  # a name from the package __init__: a real cycle
        assert graph["p.other"] == {"p.sub": 2}
        assert graph["p.uses"] == {"p.sub": 1, "p": 1}
        assert cycles(graph) == [["p", "p.sub", "p"]]

    def test_a_package_re_exporting_its_submodules_is_no_cycle(self) -> None:
        modules = {
            "p": ("from p.a import A\nfrom . import b\n", True),
            "p.a": ("from p import b\n", False),  # the submodule p.b, not p's namespace
            "p.b": ("X = 1\n", False),
        }
        assert cycles(import_graph(modules)) == []


class TestSizes:
    """Every module at most 400 physical lines, every class at most 250."""

    def test_modules(self) -> None:
        offenders = [
            f"{name}: {lines} lines"
            for name, (source, _) in sources().items()
            if (lines := physical_lines(source)) > MAX_MODULE_LINES
        ]
        assert not offenders, f"modules over {MAX_MODULE_LINES} lines:\n" + "\n".join(offenders)

    def test_classes(self) -> None:
        offenders = [
            f"{name}.{cls}: {length} lines"
            for name, (source, _) in sources().items()
            for cls, length in long_classes(source)
        ]
        assert not offenders, f"classes over {MAX_CLASS_LINES} lines:\n" + "\n".join(offenders)

    def test_synthetic_sizes_are_reported(self) -> None:
        body = "".join(f"    x{i} = {i}\n" for i in range(MAX_CLASS_LINES))
        source = f"@decorator\nclass Big:\n{body}\nclass Small:\n    pass\n"
        assert long_classes(source) == [("Big", MAX_CLASS_LINES + 2)]
        assert physical_lines("a\nb\n") == 2
        assert physical_lines("a\nb") == 1  # as wc -l counts


class TestLayers:
    """Imports flow one way: CLI → config → daemon → loops → kinds → upstream/store."""

    def test_daemon_never_reaches_the_http_apps(self) -> None:
        """The admin and SDK apps are composed outside the daemon."""
        graph = import_graph(sources())
        paths = [
            _arrows(path)
            for name in graph
            if _under(name, "wxtokend.daemon")
            and (path := reaches(graph, name, {"wxtokend.admin", "wxtokend.sdk"}))
        ]
        assert not paths, "the daemon imports the HTTP apps:\n" + "\n".join(paths)

    def test_only_the_cli_and_the_demo_import_the_emulator(self) -> None:
        graph = import_graph(sources())
        allowed = {"wxtokend.cli", "wxtokend.demo"}
        offenders = [
            f"{name} (line {line}) imports {target}"
            for name, edges in graph.items()
            if not _under(name, "wxtokend.emulator") and name not in allowed
            for target, line in edges.items()
            if _under(target, "wxtokend.emulator")
        ]
        assert not offenders, "the emulator imported from outside:\n" + "\n".join(offenders)

    def test_kinds_never_reach_the_daemon_or_the_loops(self) -> None:
        graph = import_graph(sources())
        upper = {m for m in graph if _under(m, "wxtokend.daemon", "wxtokend.loopset", *LOOP)}
        paths = [
            _arrows(path)
            for name in graph
            if _under(name, "wxtokend.kinds") and (path := reaches(graph, name, upper))
        ]
        assert not paths, "kinds import the daemon or the loops:\n" + "\n".join(paths)

    def test_the_loop_names_no_kind(self) -> None:
        """The loop's modules reach a kind only through ``Kind`` and the package's lookups."""
        graph = import_graph(sources())
        allowed = {"wxtokend.kinds", "wxtokend.kinds.base"}
        offenders = [
            f"{name} (line {line}) imports {target}"
            for name, edges in graph.items()
            if name in LOOP
            for target, line in edges.items()
            if _under(target, "wxtokend.kinds") and target not in allowed
        ]
        assert not offenders, "the loop imports a kind by name:\n" + "\n".join(offenders)

    def test_a_synthetic_layer_breach_is_reported(self) -> None:
        graph = {"d": {"x": 1}, "x": {"admin": 4}, "admin": {}}
        assert reaches(graph, "d", {"admin"}) == ["d", "x", "admin"]
        assert reaches(graph, "admin", {"d"}) is None
