"""Layering of the node and of the demo: the agent's two front ends share the assembly, not each other;
the server reaches the agent only through its public command line.

Checked two ways: what a fresh interpreter has loaded after an import, and the import statements of
every module (so a lazy import inside a function counts too).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from tests.support.procs import REPO


def _loaded_after(module: str) -> set[str]:
    code = f"import json, sys; import {module}; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True, timeout=60
    )
    return set(json.loads(done.stdout))


def _imports_of(path: Path) -> set[str]:
    """Every module named by an import statement anywhere in the file (function bodies included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_tray_never_imports_the_command_line() -> None:
    assert "desktop_agent.cli" not in _imports_of(REPO / "desktop_agent" / "tray.py")
    assert "desktop_agent.cli" not in _loaded_after("desktop_agent.tray")


def test_both_front_ends_build_through_the_assembly() -> None:
    for front_end in ("cli.py", "tray.py"):
        imports = _imports_of(REPO / "desktop_agent" / front_end)
        assert "desktop_agent.assembly" in imports, front_end
    # The command line loads the tray only for `cortex-agent tray` (no cycle, no GUI import for `run`).
    assert "desktop_agent.tray" not in _loaded_after("desktop_agent.cli")


def test_the_server_never_imports_the_agent() -> None:
    offenders = {
        str(path.relative_to(REPO)): sorted(
            n for n in _imports_of(path) if n.split(".")[0] == "desktop_agent"
        )
        for path in sorted((REPO / "server").rglob("*.py"))
    }
    assert {path: names for path, names in offenders.items() if names} == {}
    assert not any(m.split(".")[0] == "desktop_agent" for m in _loaded_after("server.cli"))
