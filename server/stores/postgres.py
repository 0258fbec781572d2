"""`PostgresStore`: the server's state in PostgreSQL, shared by any number of replicas.

Where it sits: an implementation of `server.store.Store` beside `server.stores.sqlite.SQLiteStore`,
built by `server.stores.open_store` for a ``postgresql://`` ``--database-url``. It keeps the rules of
`server.store` (the credential hashing and name checks are the same functions), on psycopg 3's async API
through one psycopg-pool `AsyncConnectionPool` per process. Schema: `server.stores.postgres_schema`.

Rules:

1. Connections are autocommit; every read-modify-write runs in an explicit transaction.
2. Cross-replica races are settled by the database, never by timing: enrollment by the primary key
   (`NodeExists`), the signing key by `SIGNING_KEY_LOCK` (the first replica creates it, every other one
   reads that same key), a node's audit head by a per-node advisory lock.
3. Sequences commit in order: revocations, user revocations and enrollments take `REVOCATIONS_LOCK` /
   `USER_REVOCATIONS_LOCK` / `ENROLLMENTS_LOCK` for their transaction, so a number becomes visible only
   after every smaller one did.
   (A bare identity column would let seq 6 commit before seq 5, and a follower at 6 would miss 5.)
4. An engine failure (server down, connection lost, no connection free within `pool_timeout`) is
   `StoreUnavailable`; the database URL appears in messages only through `redact_url`.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from joserfc.jwk import OKPKey
from psycopg import errors as pg_errors
from psycopg_pool import AsyncConnectionPool

from server.schema import SchemaTooNew
from server.store import (
    _DUMMY_HASH,
    _MAX_CREDENTIAL_LEN,
    _MAX_HASH_LEN,
    AUDIT_OK,
    AUDIT_REWOUND,
    CREDENTIAL_PREFIX,
    NAME_PATTERN,
    AuditHead,
    NodeExists,
    NodeRecord,
    StoreError,
    StoreUnavailable,
    UserRevocation,
    _check_credential,
    _hash_credential,
    validate_name,
)
from server.stores import redact_url
from server.stores.postgres_schema import (
    AUDIT_LOCK,
    ENROLLMENTS_LOCK,
    REVOCATIONS_LOCK,
    SIGNING_KEY_LOCK,
    USER_REVOCATIONS_LOCK,
    migrate,
)

__all__ = ["PostgresStore"]

logger = logging.getLogger(__name__)

Conn = psycopg.AsyncConnection[Any]


class PostgresStore:
    """A `Store` on PostgreSQL. Open with `PostgresStore.open(url)`; `close` when done."""

    engine = "postgresql"

    def __init__(self, pool: AsyncConnectionPool[Conn], url: str, pool_timeout: float) -> None:
        self._pool = pool
        self.url = redact_url(url)
        """The database URL without its password (rule 4)."""
        self._pool_timeout = pool_timeout

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 8,
        connect_timeout: float = 10.0,
        pool_timeout: float = 10.0,
    ) -> PostgresStore:
        """Connect, migrate (`server.stores.postgres_schema`), and return the store.

        Raises `StoreUnavailable` if the database does not answer within *connect_timeout*, and
        `StoreError` if its schema is newer than this code.
        """
        # One direct connection first: a database that refuses is reported at once (the pool would
        # retry until its timeout), and the migration runs on it before any pooled connection exists.
        try:
            first = await psycopg.AsyncConnection.connect(
                url, autocommit=True, connect_timeout=max(1, int(connect_timeout))
            )
        except psycopg.Error as exc:
            raise StoreUnavailable(
                f"PostgreSQL at {redact_url(url)} did not answer: {_reason(exc)}"
            ) from None
        try:
            found = await migrate(first)
        except SchemaTooNew as exc:
            raise StoreError(str(exc)) from None
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"PostgreSQL at {redact_url(url)} failed: {_reason(exc)}") from None
        except psycopg.Error as exc:  # e.g. no right to create tables: the operator must act
            raise StoreError(f"PostgreSQL at {redact_url(url)} refused the schema: {_reason(exc)}") from None
        finally:
            await first.close()
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            open=False,
            kwargs={"autocommit": True, "connect_timeout": max(1, int(connect_timeout))},
            check=AsyncConnectionPool.check_connection,  # a connection the server dropped is replaced
            name="cortex-store",
        )
        try:
            await pool.open(wait=True, timeout=connect_timeout)
        except Exception as exc:
            await pool.close()
            raise StoreUnavailable(
                f"PostgreSQL at {redact_url(url)} did not answer: {_reason(exc)}"
            ) from None
        store = cls(pool, url, pool_timeout)
        logger.info("store: PostgreSQL at %s (schema found at version %d)", store.url, found)
        return store

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[Conn]:
        try:
            async with self._pool.connection(timeout=self._pool_timeout) as conn:
                yield conn
        except (StoreError, pg_errors.IntegrityError):
            raise
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"PostgreSQL at {self.url} failed: {_reason(exc)}") from None
        except psycopg.Error as exc:
            # Anything else from the engine (a query it refused) is ours to fix, but never a traceback
            # with the URL: the caller sees a store error and the log has the detail.
            logger.error("PostgreSQL at %s refused a query: %s", self.url, _reason(exc))
            raise StoreUnavailable(f"PostgreSQL at {self.url} failed: {_reason(exc)}") from None

    async def _one(self, query: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
        async with self._conn() as conn:
            cur = await conn.execute(query, params)
            row: tuple[Any, ...] | None = await cur.fetchone()
            return row

    async def _all(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        async with self._conn() as conn:
            cur = await conn.execute(query, params)
            rows: list[tuple[Any, ...]] = await cur.fetchall()
            return rows

    # -- nodes ---------------------------------------------------------------------------------------

    async def enroll_node(self, name: str, workspace: str) -> str:
        validate_name(name, "node name")
        validate_name(workspace, "workspace")
        credential = CREDENTIAL_PREFIX + secrets.token_urlsafe(32)
        stored = _hash_credential(credential, secrets.token_bytes(16))
        try:
            async with self._conn() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (ENROLLMENTS_LOCK,))  # rule 3
                await conn.execute(
                    "INSERT INTO nodes (name, workspace, credential_hash, created_at)"
                    " VALUES (%s, %s, %s, %s)",
                    (name, workspace, stored, time.time()),
                )
        except pg_errors.UniqueViolation:
            raise NodeExists(f"node {name!r} is already enrolled") from None
        logger.info("enrolled node %r in workspace %r", name, workspace)
        return credential

    async def verify_credential(self, name: str, credential: str) -> NodeRecord | None:
        if not isinstance(name, str) or not isinstance(credential, str):
            return None
        if len(credential) > _MAX_CREDENTIAL_LEN or not NAME_PATTERN.fullmatch(name):
            return None
        row = await self._one(
            "SELECT name, workspace, created_at, revoked_at, credential_hash FROM nodes WHERE name = %s",
            (name,),
        )
        ok = _check_credential(credential, row[4] if row else _DUMMY_HASH)  # same work for unknown names
        if row is None or not ok or row[3] is not None:
            return None
        return NodeRecord(row[0], row[1], row[2], row[3])

    async def get_node(self, name: str) -> NodeRecord | None:
        row = await self._one(
            "SELECT name, workspace, created_at, revoked_at FROM nodes WHERE name = %s", (name,)
        )
        return NodeRecord(*row) if row else None

    async def list_nodes(self, workspace: str | None = None) -> list[NodeRecord]:
        if workspace is None:
            rows = await self._all("SELECT name, workspace, created_at, revoked_at FROM nodes ORDER BY name")
        else:
            rows = await self._all(
                "SELECT name, workspace, created_at, revoked_at FROM nodes WHERE workspace = %s"
                " ORDER BY name",
                (workspace,),
            )
        return [NodeRecord(*row) for row in rows]

    async def is_revoked(self, name: str) -> bool:
        node = await self.get_node(name)
        return node is not None and node.revoked_at is not None

    # -- revocation ----------------------------------------------------------------------------------

    async def revoke_node(self, name: str) -> bool:
        now = time.time()
        async with self._conn() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (REVOCATIONS_LOCK,))  # rule 3
            cur = await conn.execute(
                "UPDATE nodes SET revoked_at = %s WHERE name = %s AND revoked_at IS NULL", (now, name)
            )
            changed = cur.rowcount == 1
            if changed:
                await conn.execute("INSERT INTO revocations (node, revoked_at) VALUES (%s, %s)", (name, now))
        if changed:
            logger.info("revoked node %r", name)
        return changed

    async def revocations_after(self, seq: int) -> list[tuple[int, str]]:
        rows = await self._all("SELECT seq, node FROM revocations WHERE seq > %s ORDER BY seq", (int(seq),))
        return [(int(s), str(n)) for s, n in rows]

    async def last_revocation_seq(self) -> int:
        row = await self._one("SELECT COALESCE(MAX(seq), 0) FROM revocations")
        return int(row[0]) if row else 0

    async def enrollments_after(self, seq: int) -> list[tuple[int, NodeRecord]]:
        rows = await self._all(
            "SELECT rowid, name, workspace, created_at, revoked_at FROM nodes WHERE rowid > %s"
            " ORDER BY rowid",
            (int(seq),),
        )
        return [(int(r[0]), NodeRecord(r[1], r[2], r[3], r[4])) for r in rows]

    async def last_enrollment_seq(self) -> int:
        row = await self._one("SELECT COALESCE(MAX(rowid), 0) FROM nodes")
        return int(row[0]) if row else 0

    # -- users ---------------------------------------------------------------------------------------

    async def revoke_user(self, sub: str, workspace: str | None = None) -> UserRevocation:
        if not isinstance(sub, str) or not sub or len(sub) > 128 or not sub.isprintable():
            raise StoreError(f"invalid user name {sub!r}")
        if workspace is not None:
            validate_name(workspace, "workspace")
        now = time.time()
        async with self._conn() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (USER_REVOCATIONS_LOCK,))  # rule 3
            cur = await conn.execute(
                "INSERT INTO user_revocations (sub, workspace, revoked_at) VALUES (%s, %s, %s) RETURNING seq",
                (sub, workspace, now),
            )
            row = await cur.fetchone()
        seq = int(row[0]) if row else 0
        logger.info("revoked user %r (workspace %s)", sub, workspace or "*")
        return UserRevocation(seq, sub, workspace, now)

    async def user_revocations_after(self, seq: int) -> list[UserRevocation]:
        rows = await self._all(
            "SELECT seq, sub, workspace, revoked_at FROM user_revocations WHERE seq > %s ORDER BY seq",
            (int(seq),),
        )
        return [UserRevocation(int(r[0]), str(r[1]), r[2], float(r[3])) for r in rows]

    # -- audit heads ---------------------------------------------------------------------------------

    async def audit_heads(self) -> dict[str, AuditHead]:
        rows = await self._all("SELECT node, seq, hash, status, reason FROM audit_heads")
        return {r[0]: AuditHead(r[0], int(r[1]), r[2], r[3], r[4]) for r in rows}

    async def get_audit_head(self, node: str) -> AuditHead | None:
        row = await self._one(
            "SELECT node, seq, hash, status, reason FROM audit_heads WHERE node = %s", (node,)
        )
        return AuditHead(row[0], int(row[1]), row[2], row[3], row[4]) if row else None

    async def observe_audit_head(self, node: str, seq: int, head_hash: str | None) -> AuditHead:
        if type(seq) is not int or seq < 0 or seq > 2**62:
            raise StoreError("audit head seq must be a non-negative integer")
        if head_hash is not None and (not isinstance(head_hash, str) or len(head_hash) > _MAX_HASH_LEN):
            raise StoreError("audit head hash must be a short string")
        now = time.time()
        async with self._conn() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (AUDIT_LOCK, node))
            cur = await conn.execute(
                "SELECT seq, hash, status, reason FROM audit_heads WHERE node = %s", (node,)
            )
            row = await cur.fetchone()
            status, reason = AUDIT_OK, None
            if row is not None:
                status, reason = row[2], row[3]
                if seq < int(row[0]):
                    status = AUDIT_REWOUND
                    reason = f"head went back from seq {int(row[0])} to {seq}"
                elif seq == int(row[0]) and head_hash != row[1]:
                    status = AUDIT_REWOUND
                    reason = f"record {seq} changed its hash"
            if row is None or (seq, head_hash, status) != (int(row[0]), row[1], row[2]):
                await conn.execute(
                    "INSERT INTO audit_heads (node, seq, hash, status, reason, updated_at)"
                    " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (node) DO UPDATE SET seq = excluded.seq,"
                    " hash = excluded.hash, status = excluded.status, reason = excluded.reason,"
                    " updated_at = excluded.updated_at",
                    (node, seq, head_hash, status, reason, now),
                )
        if row is not None and status == AUDIT_REWOUND and row[2] != AUDIT_REWOUND:
            logger.warning("node %r audit log rewound: %s", node, reason)
        return AuditHead(node, seq, head_hash, status, reason)

    async def acknowledge_audit(self, node: str) -> AuditHead | None:
        async with self._conn() as conn:
            await conn.execute(
                "UPDATE audit_heads SET status = %s, reason = NULL, updated_at = %s WHERE node = %s",
                (AUDIT_OK, time.time(), node),
            )
        return await self.get_audit_head(node)

    # -- signing keys --------------------------------------------------------------------------------

    async def load_or_create_signing_key(self) -> OKPKey:
        async with self._conn() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (SIGNING_KEY_LOCK,))  # rule 2
            cur = await conn.execute("SELECT jwk FROM signing_keys ORDER BY created_at DESC, kid LIMIT 1")
            row = await cur.fetchone()
            if row is not None:
                return OKPKey.import_key(json.loads(row[0]))
            key = OKPKey.generate_key("Ed25519", auto_kid=True)
            await conn.execute(
                "INSERT INTO signing_keys (kid, jwk, created_at) VALUES (%s, %s, %s)",
                (key.kid, json.dumps(key.as_dict(private=True)), time.time()),
            )
        logger.info("created signing key kid=%s", key.kid)
        return key

    async def signing_keys(self) -> list[OKPKey]:
        rows = await self._all("SELECT jwk FROM signing_keys ORDER BY created_at DESC, kid")
        return [OKPKey.import_key(json.loads(row[0])) for row in rows]

    async def close(self) -> None:
        await self._pool.close()


def _reason(exc: BaseException) -> str:
    """A one-line reason from a psycopg error, with any URL in it redacted."""
    text = str(exc).strip().splitlines()
    return redact_url(text[0] if text else type(exc).__name__)
