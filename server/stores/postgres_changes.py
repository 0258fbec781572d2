"""The change feed of replicas sharing one PostgreSQL database: ``LISTEN``/``NOTIFY`` plus a catch-up.

Where it sits: a `server.changes.ChangeFeed` beside the embedded `SQLiteChangeFeed`, chosen by
`server.state.build_state` when ``--database-url postgresql://…`` is set. Below it only the database:
the notifications are sent by triggers (`NOTIFY_TRIGGERS`, which each feed installs: `install_triggers`), so
whatever writes the tables — ``cortex-server enroll-node | revoke-node | revoke-user`` in another
process or host, the fleet API of any replica, a replica persisting an audit head — notifies every
replica, and no writer can forget to.

Why PostgreSQL and not a Redis stream: the admin commands take ``--database-url`` only (``--redis-url``
is a ``serve`` flag), so the database is the one thing every writer shares; and a trigger's
``pg_notify`` is delivered only when the writing transaction commits, with it, so a notification never
announces a row a reader cannot see yet, and a rolled-back write announces nothing.

Rules:

1. Every row inserted into ``nodes``, ``revocations``, ``user_revocations`` and every row written to
   ``audit_heads`` sends one notification on channel `CHANNEL` in the writing transaction. The payload
   carries the row's fields, each cut to a bound (the store bounds them already; the trigger runs in
   the writer's transaction, and a payload over PostgreSQL's 8000-byte limit would fail the write), so
   a replica applies it without a query.
2. `watch` listens first, then catches up from the database, then applies notifications as they come:
   nothing committed while the feed was not listening (before the first connection, or during a lost
   connection) is missed. Catching up re-reads every live node (idempotent enrollments), every node
   revocation and user revocation after the newest one seen minus `CATCH_UP_OVERLAP` (sequence numbers
   are taken before commit, so a lower one can commit after a higher one was seen), and every audit head.
3. A change is delivered at most once per sequence number (revocations, user revocations; a bounded
   set remembers the delivered ones); enrollments and audit heads may repeat after a reconnect, and
   applying them again changes nothing.
4. A lost connection is retried forever with full-jitter back-off (base `RETRY_BASE_S`, cap
   `RETRY_CAP_S`); a connection that stays silent is probed every `probe_s` seconds, so a dead
   database is noticed. Neither a bad payload (logged, skipped) nor a failing handler (logged) ends
   `watch`; only cancellation does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import OrderedDict
from typing import Any

from server.changes import AuditHeadChanged, Change, ChangeHandler, NodeEnrolled, NodeRevoked, UserRevoked
from server.store import AuditHead, NodeRecord, UserRevocation

__all__ = [
    "CATCH_UP_OVERLAP",
    "CHANNEL",
    "NOTIFY_TRIGGERS",
    "TRIGGERS_VERSION",
    "PostgresChangeFeed",
    "install_triggers",
]

logger = logging.getLogger(__name__)

CHANNEL = "cortex_changes"
APPLICATION_NAME = "cortex-change-feed"
"""How the feed's connection names itself in ``pg_stat_activity``."""
CATCH_UP_OVERLAP = 256
RETRY_BASE_S = 0.1
RETRY_CAP_S = 5.0
_DELIVERED_KEPT = 4096

NOTIFY_TRIGGERS = f"""
CREATE OR REPLACE FUNCTION cortex_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'nodes' THEN
        PERFORM pg_notify('{CHANNEL}', json_build_object('kind', 'enrolled', 'name', NEW.name,
            'workspace', NEW.workspace, 'created_at', NEW.created_at)::text);
    ELSIF TG_TABLE_NAME = 'revocations' THEN
        PERFORM pg_notify('{CHANNEL}', json_build_object('kind', 'revoked', 'seq', NEW.seq,
            'name', NEW.node)::text);
    ELSIF TG_TABLE_NAME = 'user_revocations' THEN
        PERFORM pg_notify('{CHANNEL}', json_build_object('kind', 'user_revoked', 'seq', NEW.seq,
            'sub', left(NEW.sub, 256), 'workspace', NEW.workspace, 'revoked_at', NEW.revoked_at)::text);
    ELSIF TG_TABLE_NAME = 'audit_heads' THEN
        PERFORM pg_notify('{CHANNEL}', json_build_object('kind', 'audit', 'node', NEW.node,
            'seq', NEW.seq, 'hash', left(NEW.hash, 128), 'status', left(NEW.status, 32),
            'reason', left(NEW.reason, 1000))::text);
    END IF;
    RETURN NULL;
END
$$;
CREATE OR REPLACE TRIGGER cortex_nodes_notify AFTER INSERT ON nodes
    FOR EACH ROW EXECUTE FUNCTION cortex_notify_change();
CREATE OR REPLACE TRIGGER cortex_revocations_notify AFTER INSERT ON revocations
    FOR EACH ROW EXECUTE FUNCTION cortex_notify_change();
CREATE OR REPLACE TRIGGER cortex_user_revocations_notify AFTER INSERT ON user_revocations
    FOR EACH ROW EXECUTE FUNCTION cortex_notify_change();
CREATE OR REPLACE TRIGGER cortex_audit_heads_notify AFTER INSERT OR UPDATE ON audit_heads
    FOR EACH ROW EXECUTE FUNCTION cortex_notify_change();
"""
"""Rule 1 (idempotent: ``CREATE OR REPLACE``), installed by `install_triggers`."""

TRIGGERS_VERSION = "cortex-notify-v1"
MIGRATION_LOCK = 0x435458_0001
"""The advisory lock the PostgreSQL migrations hold (`server.stores.postgres_schema.MIGRATION_LOCK`)."""


_Seq = tuple[Change, int | None]
"""A change and, for revocations, its sequence number in its table."""


def _parse(payload: str) -> _Seq | None:
    """The change a notification announces, or None for a payload that is not one (rule 4)."""
    data = json.loads(payload)
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind == "enrolled":
        record = NodeRecord(str(data["name"]), str(data["workspace"]), float(data["created_at"]), None)
        return NodeEnrolled(record), None
    if kind == "revoked":
        return NodeRevoked(str(data["name"])), int(data["seq"])
    if kind == "user_revoked":
        workspace = data.get("workspace")
        revocation = UserRevocation(
            int(data["seq"]),
            str(data["sub"]),
            None if workspace is None else str(workspace),
            float(data["revoked_at"]),
        )
        return UserRevoked(revocation), revocation.seq
    if kind == "audit":
        head_hash, reason = data.get("hash"), data.get("reason")
        return AuditHeadChanged(
            AuditHead(
                str(data["node"]),
                int(data["seq"]),
                None if head_hash is None else str(head_hash),
                str(data["status"]),
                None if reason is None else str(reason),
            )
        ), None
    return None


async def install_triggers(conn: Any) -> bool:
    """Install (or bring up to `TRIGGERS_VERSION`) the notify triggers of rule 1; True if it did.

    Run by every feed when it connects, after the store has migrated the tables, in one transaction
    under the migration advisory lock (replicas starting together install once). The version is the
    trigger function's comment, so a later Cortex replaces the function when its payloads change. The
    triggers live beside the versioned migrations, not in them: they exist only for PostgreSQL (the
    SQLite schema's steps must match this engine's one for one), and a database written by admin
    commands before any replica ran needs none (the feeds catch up when they connect: rule 2).
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        cur = await conn.execute(
            "SELECT obj_description(p.oid, 'pg_proc') FROM pg_proc p WHERE p.proname = 'cortex_notify_change'"
        )
        row = await cur.fetchone()
        cur = await conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'cortex\\_%%\\_notify'")
        triggers = int((await cur.fetchone())[0])
        if row is not None and row[0] == TRIGGERS_VERSION and triggers == 4:
            return False
        await conn.execute(NOTIFY_TRIGGERS)
        await conn.execute(f"COMMENT ON FUNCTION cortex_notify_change() IS '{TRIGGERS_VERSION}'")
        logger.info("installed the change-feed triggers (%s)", TRIGGERS_VERSION)
        return True


class _Delivered:
    """Sequence numbers already delivered, the newest `_DELIVERED_KEPT` of them (rule 3)."""

    def __init__(self, after: int) -> None:
        self.newest = after
        self._floor = after  # everything at or below was applied before the feed started, or forgotten
        self._seen: OrderedDict[int, None] = OrderedDict()

    def first_time(self, seq: int) -> bool:
        if seq <= self._floor or seq in self._seen:
            return False
        self._seen[seq] = None
        while len(self._seen) > _DELIVERED_KEPT:
            forgotten, _ = self._seen.popitem(last=False)
            self._floor = max(self._floor, forgotten)
        self.newest = max(self.newest, seq)
        return True


class PostgresChangeFeed:
    """`ChangeFeed` over ``LISTEN cortex_changes`` on the shared database (see the module rules).

    *revocation_after* and *user_after* are the newest node and user revocations the app has already
    applied (it read them when it started); the first catch-up delivers what came after them.
    """

    def __init__(
        self,
        url: str,
        *,
        revocation_after: int = 0,
        user_after: int = 0,
        probe_s: float = 10.0,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self._url = url
        self._revocations = _Delivered(revocation_after)
        self._users = _Delivered(user_after)
        self._probe_s = probe_s
        self._connect_timeout_s = connect_timeout_s
        self.ready = asyncio.Event()
        """Set while the feed listens (cleared when the connection is lost)."""
        self.connections = 0
        """How many times the feed (re)connected (for tests)."""

    async def watch(self, handler: ChangeHandler) -> None:
        attempt = 0
        while True:
            try:
                await self._listen(handler)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.ready.clear()
                attempt += 1
                delay = random.uniform(0, min(RETRY_CAP_S, RETRY_BASE_S * 2 ** min(attempt, 16)))
                logger.warning(
                    "change feed lost the database (%s); reconnecting in %.2f s", type(exc).__name__, delay
                )
                await asyncio.sleep(delay)
            else:
                attempt = 0

    async def _listen(self, handler: ChangeHandler) -> None:
        import psycopg

        async with await psycopg.AsyncConnection.connect(
            self._url,
            autocommit=True,
            connect_timeout=max(1, int(self._connect_timeout_s)),
            application_name=APPLICATION_NAME,
        ) as conn:
            await install_triggers(conn)
            await conn.execute(f"LISTEN {CHANNEL}")
            self.connections += 1
            for change, seq in await self._catch_up(conn):
                await self._deliver(handler, change, seq)
            self.ready.set()
            logger.info("change feed listening on the shared database")
            while True:
                got_one = False
                async for notify in conn.notifies(timeout=self._probe_s):
                    got_one = True
                    try:
                        parsed = _parse(notify.payload)
                    except (ValueError, KeyError, TypeError):
                        parsed = None
                    if parsed is None:
                        logger.warning("change feed: a notification that is not a change; skipped")
                        continue
                    await self._deliver(handler, *parsed)
                if not got_one:  # rule 4: a dead server raises here, a silent network times out
                    async with asyncio.timeout(self._probe_s):
                        await conn.execute("SELECT 1")

    async def _catch_up(self, conn: Any) -> list[_Seq]:
        changes: list[_Seq] = []
        cur = await conn.execute(
            "SELECT name, workspace, created_at FROM nodes WHERE revoked_at IS NULL ORDER BY name"
        )
        for name, workspace, created_at in await cur.fetchall():
            changes.append(
                (NodeEnrolled(NodeRecord(str(name), str(workspace), float(created_at), None)), None)
            )
        cur = await conn.execute(
            "SELECT seq, node FROM revocations WHERE seq > %s ORDER BY seq",
            (self._revocations.newest - CATCH_UP_OVERLAP,),
        )
        revoked = [(int(seq), str(node)) for seq, node in await cur.fetchall()]
        cur = await conn.execute(
            "SELECT seq, sub, workspace, revoked_at FROM user_revocations WHERE seq > %s ORDER BY seq",
            (self._users.newest - CATCH_UP_OVERLAP,),
        )
        users = [UserRevocation(int(r[0]), str(r[1]), r[2], float(r[3])) for r in await cur.fetchall()]
        cur = await conn.execute("SELECT node, seq, hash, status, reason FROM audit_heads ORDER BY node")
        heads = [AuditHead(str(r[0]), int(r[1]), r[2], str(r[3]), r[4]) for r in await cur.fetchall()]
        changes.extend((NodeRevoked(node), seq) for seq, node in revoked)
        changes.extend((UserRevoked(u), u.seq) for u in users)
        changes.extend((AuditHeadChanged(head), None) for head in heads)
        return changes

    async def _deliver(self, handler: ChangeHandler, change: Change, seq: int | None) -> None:
        if seq is not None:
            delivered = self._users if isinstance(change, UserRevoked) else self._revocations
            if not delivered.first_time(seq):
                return
        try:
            await handler(change)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("change handler failed for %r", change)
