"""Import cycles of the product packages: ``python3 -m bench.import_graph [ROOT] [--json]``.

Where it sits: outside the product, beside the benchmarks (not one of them: ``python3 -m bench`` does not
run it). It parses every module of spec/, server/, desktop_agent/ and sdk/ under ROOT (default: this
checkout) with `ast`, builds the graph of intra-repo imports made at module level (function bodies are
left out: they run later, when every module is loaded) and prints its strongly connected components of
more than one module — the import cycles. Two graphs are reported:

- ``runtime``: ``if TYPE_CHECKING:`` blocks left out (what Python executes on import);
- ``typing``: those blocks counted too (what a reader and mypy see as dependencies).

``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = ["import_graph", "main", "module_files", "strongly_connected"]

PACKAGES = ("spec", "server", "desktop_agent", "sdk")


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name → file, for every module of `PACKAGES` under *root*."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level(body: list[ast.stmt], typing: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements run at import time: top level, inside top-level if/try/with, not in defs."""
    for stmt in body:
        if isinstance(stmt, ast.Import | ast.ImportFrom):
            yield stmt
        elif isinstance(stmt, ast.If):
            if typing or not _is_type_checking(stmt.test):
                yield from _module_level(stmt.body, typing)
            yield from _module_level(stmt.orelse, typing)
        elif isinstance(stmt, ast.Try):
            for block in (stmt.body, stmt.orelse, stmt.finalbody, *(h.body for h in stmt.handlers)):
                yield from _module_level(block, typing)
        elif isinstance(stmt, ast.With):
            yield from _module_level(stmt.body, typing)


def import_graph(root: Path, typing: bool) -> dict[str, set[str]]:
    files = module_files(root)
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for stmt in _module_level(ast.parse(path.read_text(), str(path)).body, typing):
            targets: list[str] = []
            if isinstance(stmt, ast.Import):
                targets = [alias.name for alias in stmt.names]
            else:
                base = stmt.module or ""
                if stmt.level:
                    anchor = package.split(".")[: len(package.split(".")) - stmt.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in stmt.names:
                    full = f"{base}.{alias.name}"
                    targets.append(full if full in files else base)
            for target in targets:
                while target and target not in files:  # import a.b.c where only a.b is ours
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components of more than one module, largest first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            advanced = False
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found, key=lambda c: (-len(c), c))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m bench.import_graph", description=__doc__.splitlines()[0]
    )
    parser.add_argument("root", nargs="?", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--json", action="store_true", help="print the components as JSON")
    args = parser.parse_args(argv)
    report = {}
    for mode in ("runtime", "typing"):
        graph = import_graph(args.root, typing=mode == "typing")
        report[mode] = {
            "modules": len(graph),
            "edges": sum(len(v) for v in graph.values()),
            "cycles": strongly_connected(graph),
        }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for mode, data in report.items():
        cycles = data["cycles"]
        print(f"{mode}: {data['modules']} modules, {data['edges']} edges, {len(cycles)} cycle(s)")
        for component in cycles:
            print(f"  {len(component)}: {' '.join(component)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
