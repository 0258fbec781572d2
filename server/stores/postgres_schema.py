"""The PostgreSQL schema and its forward-only migrations: the same numbered steps as `server.schema`.

Where it sits: under `server.stores.postgres`, which calls `migrate` once when a store opens. SQLite
keeps its version in ``PRAGMA user_version``; PostgreSQL keeps it in the one-row table
``schema_version``. Step *i* here makes the same tables as step *i* there, in PostgreSQL's types.

Rules (those of `server.schema`, plus):

1. `MIGRATIONS[i]` takes a database from version ``i`` to ``i + 1``; steps are only appended, never
   edited, and ``len(MIGRATIONS) == server.schema.SCHEMA_VERSION`` (a test holds them together).
2. `migrate` runs in one transaction under a transaction-scoped advisory lock (`MIGRATION_LOCK`):
   replicas starting together queue on the lock, the first migrates, the others then find the
   current version and change nothing. A crash mid-step rolls the whole step back.
3. A database newer than this code is refused untouched (`server.schema.SchemaTooNew`).
4. Sequence columns (``revocations.seq``, ``user_revocations.seq``, ``nodes.rowid``) are identities; the
   store appends to them only under `REVOCATIONS_LOCK` / `USER_REVOCATIONS_LOCK` / `ENROLLMENTS_LOCK`,
   so rows commit in number order and a reader following ``seq > last`` never skips a row that commits
   late (`server.stores.postgres`). ``nodes.rowid`` is SQLite's implicit rowid made explicit: the
   enrollment number both engines follow (`Store.enrollments_after`).
"""

from __future__ import annotations

from typing import Any

from server.schema import SCHEMA_VERSION, SchemaTooNew

__all__ = [
    "AUDIT_LOCK",
    "ENROLLMENTS_LOCK",
    "MIGRATIONS",
    "MIGRATION_LOCK",
    "REVOCATIONS_LOCK",
    "SIGNING_KEY_LOCK",
    "USER_REVOCATIONS_LOCK",
    "migrate",
]

# Advisory lock keys: one 64-bit number each, fixed for the life of the schema ("CTX" + a small tag).
MIGRATION_LOCK = 0x435458_0001
SIGNING_KEY_LOCK = 0x435458_0002
REVOCATIONS_LOCK = 0x435458_0003
USER_REVOCATIONS_LOCK = 0x435458_0004
ENROLLMENTS_LOCK = 0x435458_0006
AUDIT_LOCK = 0x4354_5805
"""The first half of a two-key lock ``(AUDIT_LOCK, hashtext(node))``: fits a 32-bit int."""

MIGRATIONS: tuple[str, ...] = (
    # 1: nodes, node revocations, signing keys.
    """
    CREATE TABLE nodes (
        name            TEXT PRIMARY KEY,
        workspace       TEXT NOT NULL,
        credential_hash TEXT NOT NULL,
        created_at      DOUBLE PRECISION NOT NULL,
        revoked_at      DOUBLE PRECISION NULL,
        rowid           BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE
    );
    CREATE TABLE revocations (
        seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        node       TEXT NOT NULL,
        revoked_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE signing_keys (
        kid        TEXT PRIMARY KEY,
        jwk        TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    );
    """,
    # 2: user revocations (revoke-user) and each node's last audit head.
    """
    CREATE TABLE user_revocations (
        seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        sub        TEXT NOT NULL,
        workspace  TEXT NULL,
        revoked_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE audit_heads (
        node       TEXT PRIMARY KEY,
        seq        BIGINT NOT NULL,
        hash       TEXT NULL,
        status     TEXT NOT NULL DEFAULT 'ok',
        reason     TEXT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    );
    """,
)


async def migrate(conn: Any) -> int:
    """Bring the database behind *conn* (an autocommit `psycopg.AsyncConnection`) to the current
    version; returns the version it found (rule 2)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = await (await conn.execute("SELECT version FROM schema_version")).fetchone()
        if row is None:
            await conn.execute("INSERT INTO schema_version (version) VALUES (0)")
        found = int(row[0]) if row is not None else 0
        if found > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"the database has schema version {found}; this server knows up to {SCHEMA_VERSION}"
            )
        for version in range(found, SCHEMA_VERSION):
            await conn.execute(MIGRATIONS[version])
        if found != SCHEMA_VERSION:
            await conn.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION,))
    return found
