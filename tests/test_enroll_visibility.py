"""A node enrolled while the server runs is known to it at once: 409 (not connected), never 404.

The enrollment is made by another process (the `cortex-server enroll-node` command, through the shared
SQLite store) and the call follows immediately, before any feed could have told the server: the miss
asks the store (server.node_lookup). The lookup's own bounds are checked on `NodeLookup` directly with
the real store: a flood of unknown names cannot hammer the store, one unknown name asked again and
again costs one query per TTL, and an enrollment heard from the feed clears a remembered miss.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from server.changes import Change, NodeEnrolled, NodeRevoked, SQLiteChangeFeed
from server.node_lookup import NodeLookup
from server.registry import LocalRegistry
from server.store import ServerStore
from server.stores.sqlite import SQLiteStore
from tests.support.procs import REPO, ServerProc


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProc]:
    proc = ServerProc(tmp_path / "data").start()
    yield proc
    proc.stop()


def _enroll_by_command(data_dir: Path, name: str) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "server.cli",
            "enroll-node",
            name,
            "--workspace",
            "ws1",
            "--data-dir",
            str(data_dir),
        ],
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_a_node_enrolled_while_serving_is_409_at_once(server: ServerProc) -> None:
    with server.http() as http:
        assert http.get("/api/v1/nodes").status_code == 200  # the registry has loaded what it knew
        for i in range(3):
            name = f"late-{i}"
            _enroll_by_command(server.data_dir, name)
            call = http.post(f"/api/v1/nodes/{name}/tools/echo/call", json={"arguments": {"text": "x"}})
            assert call.status_code == 409, call.text
            assert call.json()["error"] == "node_not_connected"
            node = http.get(f"/api/v1/nodes/{name}")
            assert node.status_code == 200 and node.json()["status"] == "disconnected"
        assert http.get("/api/v1/nodes/never-enrolled").status_code == 404


def test_a_node_enrolled_over_rest_is_listed_at_once(server: ServerProc) -> None:
    with server.http() as http:
        assert http.post("/api/v1/nodes", json={"name": "desk", "workspace": "ws1"}).status_code == 201
        listed = {n["name"]: n["status"] for n in http.get("/api/v1/nodes").json()["nodes"]}
    assert listed.get("desk") == "disconnected"


async def test_member_of_another_workspace_still_gets_404(server: ServerProc) -> None:
    other = server.token("bob", "ws2")
    _enroll_by_command(server.data_dir, "hidden")
    async with httpx2.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {other}"}) as http:
        response = await http.post("/api/v1/nodes/hidden/tools/echo/call", json={"arguments": {}})
    assert response.status_code == 404  # never reveal a node of another workspace


def _lookup(store: ServerStore, **bounds: float) -> tuple[LocalRegistry, NodeLookup]:
    registry = LocalRegistry(known=lambda: [])

    async def fetch(name: str):  # type: ignore[no-untyped-def]
        return await asyncio.to_thread(store.get_node, name)

    return registry, NodeLookup(registry, fetch, **bounds)  # type: ignore[arg-type]


async def test_a_flood_of_unknown_names_is_rate_limited(tmp_path: Path) -> None:
    with ServerStore(tmp_path) as store:
        _registry, lookup = _lookup(store, rate_per_s=10.0, burst=20)
        results = await asyncio.gather(*(lookup.entry(f"nobody-{i}") for i in range(2000)))
        assert all(r is None for r in results)
        assert lookup.store_queries <= 25  # the burst, plus what the bucket refilled meanwhile
        store.enroll_node("real", "ws1")
        lookup.forget_miss("real")
        # The bucket is empty: an enrolled name may wait for the feed, but the store was not hammered.
        assert lookup.store_queries <= 25


async def test_one_unknown_name_costs_one_query_per_ttl(tmp_path: Path) -> None:
    with ServerStore(tmp_path) as store:
        registry, lookup = _lookup(store, negative_ttl_s=3600.0)
        for _ in range(100):
            assert await lookup.entry("ghost") is None
        assert lookup.store_queries == 1
        await asyncio.gather(*(lookup.entry("spooky") for _ in range(50)))
        assert lookup.store_queries == 2  # concurrent lookups of one name share one query
        store.enroll_node("ghost", "ws1")
        assert await lookup.entry("ghost") is None  # still remembered missing (the feed has not spoken)
        lookup.forget_miss("ghost")  # ... the change feed delivers the enrollment
        entry = await lookup.entry("ghost")
        assert entry is not None and entry.workspace == "ws1" and entry.status == "disconnected"
        assert registry.get("ghost") is entry  # learnt: no more store queries for it
        queries = lookup.store_queries
        await lookup.entry("ghost")
        assert lookup.store_queries == queries


async def test_revoked_and_malformed_names_are_not_found(tmp_path: Path) -> None:
    with ServerStore(tmp_path) as store:
        store.enroll_node("gone", "ws1")
        store.revoke_node("gone")
        registry, lookup = _lookup(store)
        assert await lookup.entry("gone") is None
        assert registry.get("gone") is None
        assert await lookup.entry("../etc") is None
        assert await lookup.entry("x" * 100) is None
        assert lookup.store_queries == 1  # only the well-formed name reached the store


async def test_a_failing_store_is_a_miss_not_an_error() -> None:
    registry = LocalRegistry(known=lambda: [])
    calls = 0

    async def fetch(name: str):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        raise OSError("database is away")

    lookup = NodeLookup(registry, fetch)
    assert await lookup.entry("n1") is None
    assert await lookup.entry("n1") is None
    assert calls == 2  # a failure is not remembered as a miss


async def test_the_sqlite_feed_delivers_enrollments_made_by_another_process(tmp_path: Path) -> None:
    server, cli = ServerStore(tmp_path / "data"), ServerStore(tmp_path / "data")
    try:
        cli.enroll_node("before", "ws1")
        seen: asyncio.Queue[Change] = asyncio.Queue()

        async def handler(change: Change) -> None:
            await seen.put(change)

        start = server.last_enrollment_seq()  # after "before", as the app reads it when it starts
        feed = SQLiteChangeFeed(SQLiteStore(server), user_after_seq=0, interval=0.02, enrollment_after=start)
        task = asyncio.create_task(feed.watch(handler))
        try:
            async with asyncio.timeout(5):
                await feed.ready.wait()  # node revocations are followed from then on
            cli.enroll_node("after", "ws2")
            cli.enroll_node("flash", "ws1")
            cli.revoke_node("flash")
            got: list[Change] = []
            async with asyncio.timeout(10):
                while not any(c == NodeRevoked("flash") for c in got):
                    got.append(await seen.get())
                while not any(isinstance(c, NodeEnrolled) and c.record.name == "after" for c in got):
                    got.append(await seen.get())
            enrolled = [c.record for c in got if isinstance(c, NodeEnrolled)]
            assert ("after", "ws2") in [(r.name, r.workspace) for r in enrolled]
            assert "before" not in [r.name for r in enrolled]  # known when the feed was made
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        server.close()
        cli.close()
