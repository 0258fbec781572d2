"""The server database's schema version: forward-only migrations, old data kept, newer databases refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from server.schema import MIGRATIONS, SCHEMA_VERSION
from server.store import ServerStore, StoreError


def _version(db_path: Path) -> int:
    with sqlite3.connect(db_path) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def test_a_database_from_before_versioning_is_migrated_and_keeps_its_data(tmp_path: Path) -> None:
    data_dir = tmp_path / "srv"
    data_dir.mkdir()
    with sqlite3.connect(data_dir / "cortex.db") as db:  # what the server wrote before user_version
        db.executescript(MIGRATIONS[0])
        db.execute("INSERT INTO nodes VALUES ('old', 'ws1', 'sha256$00$00', 1.0, NULL)")
    assert _version(data_dir / "cortex.db") == 0
    with ServerStore(data_dir) as store:
        assert store.get_node("old") is not None
        assert store.user_revocations_after(0) == []
        assert store.observe_audit_head("old", 3, "h").status == "ok"
    assert _version(data_dir / "cortex.db") == SCHEMA_VERSION
    with ServerStore(data_dir) as again:  # opening a current database changes nothing
        assert again.get_audit_head("old") is not None
    assert _version(data_dir / "cortex.db") == SCHEMA_VERSION


def test_a_newer_database_is_refused_untouched(tmp_path: Path) -> None:
    data_dir = tmp_path / "srv"
    ServerStore(data_dir).close()
    with sqlite3.connect(data_dir / "cortex.db") as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="schema version"):
        ServerStore(data_dir)
    assert _version(data_dir / "cortex.db") == SCHEMA_VERSION + 1
