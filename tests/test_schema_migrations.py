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


# -- PostgreSQL: the same numbered steps, in a schema_version table --------------------------------------


def _pg_version(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT version FROM schema_version").fetchone()
    assert row is not None
    return int(row[0])


def test_both_engines_have_the_same_steps() -> None:
    from server.stores.postgres_schema import MIGRATIONS as PG_MIGRATIONS

    assert len(PG_MIGRATIONS) == len(MIGRATIONS) == SCHEMA_VERSION


async def test_both_engines_make_the_same_tables_and_columns(tmp_path: Path, pg_url: str) -> None:
    import psycopg

    from server.stores.postgres import PostgresStore

    ServerStore(tmp_path / "srv").close()
    with sqlite3.connect(tmp_path / "srv" / "cortex.db") as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        sqlite_cols = {
            t: [r[1] for r in db.execute(f"PRAGMA table_info({t})")]
            for t in tables
            if not t.startswith("sqlite_")
        }
    await (await PostgresStore.open(pg_url)).close()
    async with await psycopg.AsyncConnection.connect(pg_url) as conn:
        cur = await conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'"
            " AND table_name <> 'schema_version' ORDER BY table_name, ordinal_position"
        )
        pg_cols: dict[str, list[str]] = {}
        for table, column in await cur.fetchall():
            pg_cols.setdefault(table, []).append(column)
    sqlite_cols["nodes"].append("rowid")  # SQLite's implicit enrollment number, explicit in PostgreSQL
    assert pg_cols == sqlite_cols


async def test_postgres_from_version_1_is_migrated_and_keeps_its_data(pg_url: str) -> None:
    import psycopg

    from server.stores.postgres import PostgresStore
    from server.stores.postgres_schema import MIGRATIONS as PG_MIGRATIONS

    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:  # a version-1 database
        await conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        await conn.execute("INSERT INTO schema_version VALUES (1)")
        await conn.execute(PG_MIGRATIONS[0])
        await conn.execute("INSERT INTO nodes VALUES ('old', 'ws1', 'sha256$00$00', 1.0, NULL)")
    store = await PostgresStore.open(pg_url)
    try:
        assert await store.get_node("old") is not None
        assert await store.user_revocations_after(0) == []
        assert (await store.observe_audit_head("old", 3, "h")).status == "ok"
    finally:
        await store.close()
    assert _pg_version(pg_url) == SCHEMA_VERSION
    again = await PostgresStore.open(pg_url)  # opening a current database changes nothing
    try:
        assert await again.get_audit_head("old") is not None
    finally:
        await again.close()
    assert _pg_version(pg_url) == SCHEMA_VERSION


async def test_a_newer_postgres_database_is_refused_untouched(pg_url: str) -> None:
    import psycopg

    from server.stores.postgres import PostgresStore

    await (await PostgresStore.open(pg_url)).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="schema version"):
        await PostgresStore.open(pg_url)
    assert _pg_version(pg_url) == SCHEMA_VERSION + 1
