"""server.changes: the SQLite change feed delivers typed changes made by another process, in order."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from server.changes import Change, NodeRevoked, SQLiteChangeFeed, UserRevoked
from server.store import ServerStore
from server.stores.sqlite import SQLiteStore


async def test_changes_from_another_store_arrive_typed_and_a_failing_handler_does_not_end_the_feed(
    tmp_path: Path,
) -> None:
    server, cli = ServerStore(tmp_path / "data"), ServerStore(tmp_path / "data")
    try:
        for name in ("a", "b"):
            server.enroll_node(name, "team")
        seen: asyncio.Queue[Change] = asyncio.Queue()

        async def handler(change: Change) -> None:
            await seen.put(change)
            if change == NodeRevoked("a"):
                raise RuntimeError("handler bug")  # logged; the next change still arrives

        feed = SQLiteChangeFeed(SQLiteStore(server), user_after_seq=0, interval=0.02)
        task = asyncio.create_task(feed.watch(handler))
        async with asyncio.timeout(5):
            await feed.ready.wait()
        await asyncio.to_thread(cli.revoke_node, "a")
        revocation = await asyncio.to_thread(cli.revoke_user, "alice", "team")
        await asyncio.to_thread(cli.revoke_node, "b")
        got: list[Change] = []
        async with asyncio.timeout(10):
            while len(got) < 3:
                got.append(await seen.get())
        nodes = [c for c in got if isinstance(c, NodeRevoked)]
        assert nodes == [NodeRevoked("a"), NodeRevoked("b")]  # in the order the table recorded them
        assert [c for c in got if isinstance(c, UserRevoked)] == [UserRevoked(revocation)]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        server.close()
        cli.close()
