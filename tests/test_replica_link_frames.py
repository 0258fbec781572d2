"""The replica link's frames on a real replica: ``cortex.cluster.v2`` carries several messages a frame,
``cortex.cluster.v1`` stays one message a frame (spec.frames rule 1, spec/protocol.md §15).

Real processes: a `cortex-server serve --redis-url` replica on a real redis-server and a real
`cortex-agent run` node on it; the test speaks the link with a genuine replica token over `websockets`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from sdk import AsyncClient
from tests.support.procs import AgentProc, ServerProc

V1 = "cortex.cluster.v1"
V2 = "cortex.cluster.v2"


@pytest.fixture
def holder(tmp_path: Path, redis_url: str) -> Iterator[ServerProc]:
    server = ServerProc(tmp_path / "data", args=["--redis-url", redis_url]).start()
    agent = AgentProc(tmp_path / "home", server.url, "laptop", server.enroll("laptop"), ["--no-browser"])
    try:
        agent.start()
        server.wait_status("laptop", "connected", timeout=60)
        yield server
    finally:
        agent.stop()
        server.stop()


@pytest.fixture
def caller(holder: ServerProc, redis_url: str) -> Iterator[ServerProc]:
    """A second replica (same store, same Redis) that reaches the holder's node over a replica link."""
    server = ServerProc(holder.data_dir, args=["--redis-url", redis_url]).start()
    try:
        server.wait_status("laptop", "connected", timeout=30)
        yield server
    finally:
        server.stop()


def _replica_token(server: ServerProc) -> str:
    from server import admin
    from server.auth import TokenAuthority
    from server.store import Store

    async def mint(store: Store) -> str:
        return TokenAuthority(await store.load_or_create_signing_key()).mint_replica_token("rtest")

    return admin.with_store(server.data_dir, server.database_url, mint)


def _echo(id_: int, text: str) -> str:
    params = {
        "node": "laptop",
        "method": "tools/call",
        "params": {
            "name": "echo",
            "arguments": {"text": text},
            "_meta": {"cortex/caller": {"sub": "x", "ws": "ws1"}},
        },
    }
    return json.dumps({"jsonrpc": "2.0", "id": id_, "method": "node/request", "params": params})


async def _answers(ws: ClientConnection, count: int, batched: bool) -> dict[Any, dict[str, Any]]:
    got: dict[Any, dict[str, Any]] = {}
    async with asyncio.timeout(20):
        while len(got) < count:
            frame = await ws.recv()
            assert isinstance(frame, str)
            for text in frame.split("\n") if batched else [frame]:
                message = json.loads(text)
                got[message.get("id")] = message
    return got


async def test_the_holder_answers_every_message_of_a_batched_frame(holder: ServerProc) -> None:
    async with connect(
        holder.url.replace("http", "ws") + "/api/v1/cluster/link",
        additional_headers={"Authorization": f"Bearer {_replica_token(holder)}"},
        subprotocols=[V2, V1],  # type: ignore[list-item]
    ) as ws:
        assert ws.subprotocol == V2
        await ws.send("\n".join(_echo(i, f"text-{i}") for i in range(1, 6)))
        answers = await _answers(ws, 5, batched=True)
    assert {i: a["result"]["content"][0]["text"] for i, a in answers.items()} == {
        i: f"text-{i}" for i in range(1, 6)
    }


async def test_a_v1_link_stays_one_message_a_frame(holder: ServerProc) -> None:
    async with connect(
        holder.url.replace("http", "ws") + "/api/v1/cluster/link",
        additional_headers={"Authorization": f"Bearer {_replica_token(holder)}"},
        subprotocols=[V1],  # type: ignore[list-item]  # a replica of an older release
    ) as ws:
        assert ws.subprotocol == V1
        await ws.send(_echo(1, "a") + "\n" + _echo(2, "b"))  # not one JSON text on v1
        refused = await _answers(ws, 1, batched=False)
        assert refused[None]["error"]["code"] == -32700
        await ws.send(_echo(3, "c"))
        answer = await _answers(ws, 1, batched=False)
        assert answer[3]["result"]["content"][0]["text"] == "c"


async def test_calls_in_flight_across_replicas_share_a_batched_link(
    holder: ServerProc, caller: ServerProc
) -> None:
    async with AsyncClient(caller.url, token=caller.token()) as client:
        texts = [f"call-{i}" for i in range(64)]
        async with asyncio.timeout(60):
            results = await asyncio.gather(*(client.call("laptop", "echo", {"text": t}) for t in texts))
    assert [r.text for r in results] == texts  # each call got its own answer back
    opened = [line for line in caller.output if "cluster: link to replica" in line]
    assert opened and all(V2 in line for line in opened), opened
