"""The server database's schema and its forward-only migrations.

Where it sits: under `server.store`, which calls `migrate` once when it opens the database. The
version lives in SQLite's ``PRAGMA user_version``; a PostgreSQL store would keep the same numbered
steps in a one-row table.

Rules:

1. `MIGRATIONS[i]` takes a database from version ``i`` to ``i + 1``. Steps are only ever appended;
   a released step is never edited (a data directory that ran it would not run it again).
2. Every step runs inside one ``BEGIN IMMEDIATE`` transaction together with the version bump, so two
   processes opening a fresh directory at once cannot both apply it, and a crash leaves the old version.
3. A database newer than this code (a version above ``len(MIGRATIONS)``) is refused, never written:
   an older server must not scribble over state it does not understand.
4. Step 1 is the original schema written with ``IF NOT EXISTS``, so databases made before versioning
   existed (version 0 with the tables already there) pass through it unchanged.
"""

from __future__ import annotations

import sqlite3

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SchemaTooNew", "migrate"]

MIGRATIONS: tuple[str, ...] = (
    # 1: nodes, node revocations, signing keys (the schema before versioning).
    """
    CREATE TABLE IF NOT EXISTS nodes (
        name            TEXT PRIMARY KEY,
        workspace       TEXT NOT NULL,
        credential_hash TEXT NOT NULL,
        created_at      REAL NOT NULL,
        revoked_at      REAL NULL
    );
    CREATE TABLE IF NOT EXISTS revocations (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        node       TEXT NOT NULL,
        revoked_at REAL NOT NULL
    );
    CREATE TABLE IF NOT EXISTS signing_keys (
        kid        TEXT PRIMARY KEY,
        jwk        TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    """,
    # 2: user revocations (revoke-user) and each node's last audit head.
    """
    CREATE TABLE user_revocations (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        sub        TEXT NOT NULL,
        workspace  TEXT NULL,
        revoked_at REAL NOT NULL
    );
    CREATE TABLE audit_heads (
        node       TEXT PRIMARY KEY,
        seq        INTEGER NOT NULL,
        hash       TEXT NULL,
        status     TEXT NOT NULL DEFAULT 'ok',
        reason     TEXT NULL,
        updated_at REAL NOT NULL
    );
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNew(Exception):
    """The database was written by a newer Cortex (rule 3)."""


def migrate(db: sqlite3.Connection) -> int:
    """Bring *db* (autocommit connection) to `SCHEMA_VERSION`; returns the version it found."""
    db.execute("BEGIN IMMEDIATE")
    try:
        found = int(db.execute("PRAGMA user_version").fetchone()[0])
        if found > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"the database has schema version {found}; this server knows up to {SCHEMA_VERSION}"
            )
        for version in range(found, SCHEMA_VERSION):
            for statement in MIGRATIONS[version].split(";"):
                if statement.strip():
                    db.execute(statement)
        if found != SCHEMA_VERSION:
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return found
