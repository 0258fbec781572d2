"""The store's layering rule as a test: engines stay behind the `Store` interface.

Only the engine modules import a database driver: ``sqlite3`` in `server.store` / `server.schema` /
`server.stores.sqlite`, ``psycopg`` in `server.stores.postgres*`. Everything else in the server awaits the
`server.store.Store` interface, so a caller cannot come to depend on one engine by accident.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENGINE_MODULES = {
    "sqlite3": {"server/store.py", "server/schema.py", "server/stores/sqlite.py"},
    "psycopg": {
        "server/stores/postgres.py",
        "server/stores/postgres_schema.py",
        "server/stores/__init__.py",
        "server/stores/postgres_changes.py",  # the PostgreSQL change feed (LISTEN/NOTIFY)
    },
    "psycopg_pool": {"server/stores/postgres.py"},
}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_only_engine_modules_import_a_database_driver() -> None:
    offenders = []
    for package in ("server", "desktop_agent", "sdk", "spec"):
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            for driver, allowed in ENGINE_MODULES.items():
                if driver in _imports(path) and rel not in allowed:
                    offenders.append(f"{rel} imports {driver}")
    assert offenders == []
