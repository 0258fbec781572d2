"""The shared change feed (server.stores.postgres_changes) against a real PostgreSQL 15: LISTEN/NOTIFY
plus catch-up.

Writers are plain SQL on other connections (as another replica's store, or an admin command in another
process, would write): every enrollment, node revocation, user revocation and audit head reaches each of
three feeds; what was committed while a feed was not listening (before it started, or while its
connection was killed by the server) is caught up; a rolled-back write announces nothing; a hostile
payload on the channel is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from server.changes import AuditHeadChanged, NodeEnrolled, NodeRevoked, UserRevoked
from server.stores.postgres_changes import CHANNEL, TRIGGERS_VERSION, PostgresChangeFeed, install_triggers

SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (name TEXT PRIMARY KEY, workspace TEXT NOT NULL,
    credential_hash TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, revoked_at DOUBLE PRECISION NULL);
CREATE TABLE IF NOT EXISTS revocations (seq BIGSERIAL PRIMARY KEY, node TEXT NOT NULL,
    revoked_at DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS user_revocations (seq BIGSERIAL PRIMARY KEY, sub TEXT NOT NULL,
    workspace TEXT NULL, revoked_at DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS audit_heads (node TEXT PRIMARY KEY, seq BIGINT NOT NULL, hash TEXT NULL,
    status TEXT NOT NULL DEFAULT 'ok', reason TEXT NULL, updated_at DOUBLE PRECISION NOT NULL);
"""


class Seen:
    """Changes one feed delivered, with an event per arrival."""

    def __init__(self) -> None:
        self.changes: list[tuple[float, Any]] = []
        self.arrived = asyncio.Event()

    async def __call__(self, change: Any) -> None:
        self.changes.append((time.monotonic(), change))
        self.arrived.set()

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> float:
        """When the first change matching *predicate* arrived (bounded wait)."""
        async with asyncio.timeout(timeout):
            while True:
                self.arrived.clear()
                for at, change in self.changes:
                    if predicate(change):
                        return at
                await self.arrived.wait()


def _prepare(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SCHEMA)  # the feeds install their triggers themselves


@contextlib.asynccontextmanager
async def feeds(url: str, count: int, **kwargs: Any) -> AsyncIterator[list[tuple[PostgresChangeFeed, Seen]]]:
    running = []
    for _ in range(count):
        feed, seen = PostgresChangeFeed(url, **kwargs), Seen()
        running.append((feed, seen, asyncio.create_task(feed.watch(seen))))
    try:
        async with asyncio.timeout(20):
            for feed, _seen, _task in running:
                await feed.ready.wait()
        yield [(feed, seen) for feed, seen, _task in running]
    finally:
        for _feed, _seen, task in running:
            task.cancel()
        await asyncio.gather(*(task for *_x, task in running), return_exceptions=True)


def _enroll(conn: psycopg.Connection[Any], name: str, workspace: str = "ws1") -> None:
    conn.execute(
        "INSERT INTO nodes (name, workspace, credential_hash, created_at) VALUES (%s, %s, 'x', %s)",
        (name, workspace, time.time()),
    )


def _revoke(conn: psycopg.Connection[Any], name: str) -> None:
    with conn.transaction():
        conn.execute("UPDATE nodes SET revoked_at = %s WHERE name = %s", (time.time(), name))
        conn.execute("INSERT INTO revocations (node, revoked_at) VALUES (%s, %s)", (name, time.time()))


async def test_every_change_reaches_every_feed(pg_url: str) -> None:
    _prepare(pg_url)
    async with feeds(pg_url, 3) as running:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            await asyncio.to_thread(_enroll, conn, "n1")
            await asyncio.to_thread(_revoke, conn, "n1")
            await asyncio.to_thread(
                conn.execute,
                "INSERT INTO user_revocations (sub, workspace, revoked_at) VALUES ('alice', NULL, 5.0)",
            )
            await asyncio.to_thread(
                conn.execute,
                "INSERT INTO audit_heads (node, seq, hash, status, updated_at)"
                " VALUES ('n1', 3, 'h', 'rewound', 1)",
            )
        for _feed, seen in running:
            await seen.wait_for(lambda c: isinstance(c, NodeEnrolled) and c.record.name == "n1")
            await seen.wait_for(lambda c: c == NodeRevoked("n1"))
            await seen.wait_for(
                lambda c: (
                    isinstance(c, UserRevoked)
                    and (c.revocation.sub, c.revocation.workspace, c.revocation.revoked_at)
                    == ("alice", None, 5.0)
                )
            )
            await seen.wait_for(
                lambda c: isinstance(c, AuditHeadChanged) and (c.head.seq, c.head.status) == (3, "rewound")
            )


async def test_what_was_committed_before_listening_is_caught_up(pg_url: str) -> None:
    _prepare(pg_url)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        _enroll(conn, "early")
        _enroll(conn, "old")
        _revoke(conn, "old")  # revocation seq 1: the app already knew it (revocation_after=1)
        _enroll(conn, "late")
        _revoke(conn, "late")  # seq 2: made between the app's start and the feed's LISTEN
    async with feeds(pg_url, 1, revocation_after=1) as [(_feed, seen)]:
        await seen.wait_for(lambda c: c == NodeRevoked("late"))
        await seen.wait_for(lambda c: isinstance(c, NodeEnrolled) and c.record.name == "early")
        revoked = [c for _at, c in seen.changes if isinstance(c, NodeRevoked)]
        assert revoked == [NodeRevoked("late")]  # delivered once; the known one not again
        assert not any(isinstance(c, NodeEnrolled) and c.record.name == "old" for _at, c in seen.changes)


async def test_a_lost_connection_misses_nothing(pg_url: str) -> None:
    _prepare(pg_url)
    async with feeds(pg_url, 1, probe_s=0.5) as [(feed, seen)]:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            # The database server ends the feed's connection (as a restart or a failover would).
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'cortex-change-feed'"
            )
            _enroll(conn, "during")
            _revoke(conn, "during")  # while the feed was not listening
        await seen.wait_for(lambda c: c == NodeRevoked("during"), timeout=20)
        assert feed.connections >= 2
        with psycopg.connect(pg_url, autocommit=True) as conn:
            _enroll(conn, "after")
        await seen.wait_for(lambda c: isinstance(c, NodeEnrolled) and c.record.name == "after")
        assert [c for _at, c in seen.changes if isinstance(c, NodeRevoked)] == [NodeRevoked("during")]


async def test_a_rolled_back_write_and_a_hostile_payload_announce_nothing(pg_url: str) -> None:
    _prepare(pg_url)
    async with feeds(pg_url, 1) as [(_feed, seen)]:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            with contextlib.suppress(RuntimeError), conn.transaction():
                _enroll(conn, "phantom")
                raise RuntimeError("roll back")
            for payload in ["not json", "[]", '{"kind":"revoked"}', '{"kind":"nope"}', "{" * 5000]:
                conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
            _enroll(conn, "real")
        await seen.wait_for(lambda c: isinstance(c, NodeEnrolled) and c.record.name == "real")
        names = [c.record.name for _at, c in seen.changes if isinstance(c, NodeEnrolled)]
        assert names == ["real"]


@pytest.mark.parametrize("count", [20])
async def test_revocations_reach_three_feeds_within_a_second(pg_url: str, count: int) -> None:
    """The latency target (≤ 1 s to every replica), measured over *count* revocations."""
    _prepare(pg_url)
    latencies: list[float] = []
    async with feeds(pg_url, 3) as running:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            for i in range(count):
                name = f"r{i}"
                await asyncio.to_thread(_enroll, conn, name)
                committed = time.monotonic()
                await asyncio.to_thread(_revoke, conn, name)
                for _feed, seen in running:
                    at = await seen.wait_for(lambda c, name=name: c == NodeRevoked(name))
                    latencies.append(max(0.0, at - committed))
    latencies.sort()
    p50, worst = latencies[len(latencies) // 2], latencies[-1]
    print(
        f"\nrevocation -> every feed: p50 {p50 * 1000:.1f} ms, max {worst * 1000:.1f} ms (n={len(latencies)})"
    )
    assert worst < 1.0


async def test_triggers_are_installed_once_and_upgraded(pg_url: str) -> None:
    _prepare(pg_url)
    conn = await psycopg.AsyncConnection.connect(pg_url, autocommit=True)
    async with conn:
        assert await install_triggers(conn) is True
        assert await install_triggers(conn) is False  # a second replica finds them in place
        await conn.execute("COMMENT ON FUNCTION cortex_notify_change() IS 'cortex-notify-v0'")
        assert await install_triggers(conn) is True  # an older version is replaced
        cur = await conn.execute(
            "SELECT obj_description(p.oid, 'pg_proc') FROM pg_proc p WHERE p.proname = 'cortex_notify_change'"
        )
        assert (await cur.fetchone())[0] == TRIGGERS_VERSION


async def test_a_long_field_never_fails_the_writers_transaction(pg_url: str) -> None:
    """The trigger runs in the writer's transaction: a payload over PostgreSQL's 8000-byte limit would
    fail the write itself. Fields are cut to their bounds in the payload (the row keeps them whole)."""
    _prepare(pg_url)
    async with feeds(pg_url, 1) as [(_feed, seen)]:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO audit_heads (node, seq, hash, status, reason, updated_at)"
                " VALUES ('n9', 1, %s, 'rewound', %s, 1)",
                ("h" * 9000, "r" * 20000),
            )
            conn.execute(
                "INSERT INTO user_revocations (sub, workspace, revoked_at) VALUES (%s, NULL, 1)",
                ("u" * 9000,),
            )
        await seen.wait_for(lambda c: isinstance(c, AuditHeadChanged) and c.head.node == "n9")
        await seen.wait_for(lambda c: isinstance(c, UserRevoked))
