"""String literals of the repository's code, for grep-style architecture tests (docstrings excluded)."""

from __future__ import annotations

import ast
from pathlib import Path

__all__ = ["PACKAGES", "ROOT", "literals_in", "string_literals"]

ROOT = Path(__file__).resolve().parent.parent.parent
PACKAGES = ("server", "desktop_agent", "sdk")


def string_literals(path: Path) -> list[tuple[int, str]]:
    """Every string constant in the module's code (docstrings are prose and may name things)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def literals_in(wanted: set[str], packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """`path:line: 'value'` for each literal of `wanted` in the packages' modules."""
    return [
        f"{path.relative_to(ROOT)}:{line}: {value!r}"
        for package in packages
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, value in string_literals(path)
        if value in wanted
    ]
