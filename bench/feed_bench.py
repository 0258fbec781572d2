"""Change-feed delivery: a revocation committed by one writer, seen by every replica's feed.

Where it sits: a `bench` module (``main(quick) -> list[dict]``, run by ``python3 -m bench``). It starts
a real PostgreSQL 15 (the Debian binaries, as the tests do: `tests.support.engines.PostgresServer`),
runs three `server.stores.postgres_changes.PostgresChangeFeed` listeners (three replicas' worth),
revokes N nodes one at a time from a separate connection, as ``cortex-server revoke-node`` would, and
measures from the start of the writing transaction to the moment the last of the three feeds delivered
it. The reference, in the same run: the embedded `SQLiteChangeFeed` (one process polling the SQLite
file at its default 0.5 s). Target (issue 15): ≤ 1 s to every replica.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import percentile

__all__ = ["main"]

SCHEMA = """
CREATE TABLE nodes (name TEXT PRIMARY KEY, workspace TEXT NOT NULL, credential_hash TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL, revoked_at DOUBLE PRECISION NULL);
CREATE TABLE revocations (seq BIGSERIAL PRIMARY KEY, node TEXT NOT NULL,
    revoked_at DOUBLE PRECISION NOT NULL);
CREATE TABLE user_revocations (seq BIGSERIAL PRIMARY KEY, sub TEXT NOT NULL, workspace TEXT NULL,
    revoked_at DOUBLE PRECISION NOT NULL);
CREATE TABLE audit_heads (node TEXT PRIMARY KEY, seq BIGINT NOT NULL, hash TEXT NULL,
    status TEXT NOT NULL DEFAULT 'ok', reason TEXT NULL, updated_at DOUBLE PRECISION NOT NULL);
"""


async def _postgres_latencies(url: str, count: int, replicas: int) -> list[float]:
    import psycopg

    from server.changes import NodeRevoked
    from server.stores.postgres_changes import PostgresChangeFeed

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SCHEMA)
    arrivals: list[dict[str, float]] = [{} for _ in range(replicas)]
    arrived = asyncio.Event()

    def handler_for(seen: dict[str, float]) -> Any:
        async def handler(change: Any) -> None:
            if isinstance(change, NodeRevoked):
                seen[change.name] = time.monotonic()
                arrived.set()

        return handler

    feeds = [PostgresChangeFeed(url) for _ in range(replicas)]
    tasks = [asyncio.create_task(f.watch(handler_for(seen))) for f, seen in zip(feeds, arrivals, strict=True)]
    latencies: list[float] = []
    try:
        async with asyncio.timeout(30):
            for feed in feeds:
                await feed.ready.wait()
        writer = await psycopg.AsyncConnection.connect(url, autocommit=True)
        async with writer:
            for i in range(count):
                name = f"n{i}"
                await writer.execute(
                    "INSERT INTO nodes (name, workspace, credential_hash, created_at)"
                    " VALUES (%s, 'w', 'x', 0)",
                    (name,),
                )
                started = time.monotonic()
                async with writer.transaction():
                    await writer.execute("UPDATE nodes SET revoked_at = 1 WHERE name = %s", (name,))
                    await writer.execute("INSERT INTO revocations (node, revoked_at) VALUES (%s, 1)", (name,))
                async with asyncio.timeout(10):
                    while not all(name in seen for seen in arrivals):
                        arrived.clear()
                        await arrived.wait()
                latencies.append(max(seen[name] for seen in arrivals) - started)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return latencies


async def _sqlite_latencies(count: int) -> list[float]:
    from server.changes import NodeRevoked, SQLiteChangeFeed
    from server.store import ServerStore
    from server.stores.sqlite import SQLiteStore

    with tempfile.TemporaryDirectory() as tmp:
        server, cli = ServerStore(Path(tmp)), ServerStore(Path(tmp))
        seen: dict[str, float] = {}
        arrived = asyncio.Event()

        async def handler(change: Any) -> None:
            if isinstance(change, NodeRevoked):
                seen[change.name] = time.monotonic()
                arrived.set()

        feed = SQLiteChangeFeed(SQLiteStore(server), 0)  # the default interval, 0.5 s
        task = asyncio.create_task(feed.watch(handler))
        latencies: list[float] = []
        try:
            async with asyncio.timeout(10):
                await feed.ready.wait()
            for i in range(count):
                name = f"n{i}"
                await asyncio.to_thread(cli.enroll_node, name, "w")
                started = time.monotonic()
                await asyncio.to_thread(cli.revoke_node, name)
                async with asyncio.timeout(10):
                    while name not in seen:
                        arrived.clear()
                        await arrived.wait()
                latencies.append(seen[name] - started)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            server.close()
            cli.close()
    return latencies


def main(quick: bool) -> list[dict[str, Any]]:
    from tests.support.engines import PostgresServer, postgres_bindir

    count = 20 if quick else 100
    bindir = postgres_bindir()
    if bindir is None:
        return []  # PostgreSQL not installed: no row (the suite says so)
    reference = asyncio.run(_sqlite_latencies(min(count, 20)))
    with PostgresServer(bindir) as pg:
        ours = asyncio.run(_postgres_latencies(pg.create_database(), count, 3))
    rows = []
    for label, pick in (("p50", lambda xs: percentile(xs, 50)), ("max", max)):
        rows.append(
            {
                "scenario": f"change feed: revocation -> 3 replicas, {label} (PG NOTIFY vs SQLite poll)",
                "ours": round(pick(ours) * 1000, 2),
                "reference": round(pick(reference) * 1000, 2),
                "unit": "ms",
                "higher_is_better": False,
                "target": "<= 1000 ms",
                "note": f"n={len(ours)} x 3 feeds; reference: one SQLite poll feed, n={len(reference)}",
            }
        )
    return rows


if __name__ == "__main__":
    for row in main(quick=True):
        print(row)
