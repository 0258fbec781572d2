"""A node cannot hurt the server: schema regexes, node info, tools/list floods, request floods, log lines.

Hostile nodes are `RawNode`s on real tunnel sockets of a real server process; a second, well-behaved
node beside them shows the server keeps serving everyone else. The request bound is also checked on
two session cores wired text to text (deterministic, no timing).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from spec import errors
from spec.session import CallContext, RpcSession, make_methods
from tests.support.procs import ServerProc, raw_node_socket
from tests.support.rawnode import ECHO_TOOL, RawNode

REDOS = "^(a+)+$"
HOSTILE_TOOLS: list[dict[str, Any]] = [
    ECHO_TOOL,
    {
        "name": "match",
        "inputSchema": {"type": "object", "properties": {"s": {"type": "string", "pattern": REDOS}}},
    },
    {
        "name": "keys",
        "inputSchema": {
            "type": "object",
            "patternProperties": {REDOS: {"type": "integer"}},
            "additionalProperties": False,
        },
    },
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    proc = ServerProc(tmp_path_factory.mktemp("hostile") / "server").start()
    try:
        yield proc
    finally:
        proc.stop()


async def _connected(server: ServerProc, node: RawNode, name: str) -> None:
    """Wait (bounded) until the server reports `name` connected (its handshake is done), on its event
    stream (which starts with every node's current state, so nothing before it is missed)."""
    await asyncio.to_thread(server.wait_status, name, "connected", 15)


async def test_redos_schema_patterns_cost_the_server_nothing(server: ServerProc) -> None:
    async with (
        RawNode(await raw_node_socket(server, "evil"), tools=HOSTILE_TOOLS) as evil,
        RawNode(await raw_node_socket(server, "good")) as good,
    ):
        await _connected(server, evil, "evil")
        await _connected(server, good, "good")
        headers = {"Authorization": f"Bearer {server.admin_token}"}
        async with httpx2.AsyncClient(base_url=server.url, headers=headers, timeout=5) as http:
            hostile = [
                ("match", {"s": "a" * 40 + "!"}),
                ("keys", {"a" * 40 + "!": 1}),
            ]
            for tool, arguments in hostile:
                # With backtracking `re` this takes ~2^40 steps: the 5 s client timeout would fail it.
                response = await http.post(
                    f"/api/v1/nodes/evil/tools/{tool}/call", json={"arguments": arguments}
                )
                assert response.status_code == 422, response.text
            # Matching arguments still pass (the same regexes, only linear).
            ok = await http.post("/api/v1/nodes/evil/tools/match/call", json={"arguments": {"s": "aaa"}})
            assert ok.status_code == 200
            echo = await http.post("/api/v1/nodes/good/tools/echo/call", json={"arguments": {"text": "hi"}})
            assert echo.json()["content"][0]["text"] == "hi"


async def test_node_info_is_capped_in_listings(server: ServerProc) -> None:
    info = {"hostname": "h" * 1_000_000, "os": "Linux", "nested": {"a": [1] * 1000}}
    info.update({f"k{i}": i for i in range(100)})
    async with RawNode(await raw_node_socket(server, "bighost"), info=info) as node:
        await _connected(server, node, "bighost")
        listed = server.node("bighost")["info"]
        assert len(json.dumps(listed)) < 8192
        assert listed["hostname"] == "h" * 256 and listed["os"] == "Linux"
        assert "nested" not in listed


async def test_tools_list_changed_floods_are_coalesced(server: ServerProc) -> None:
    async with RawNode(await raw_node_socket(server, "flood"), list_delay=0.2) as node:
        await _connected(server, node, "flood")
        notification = json.dumps({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
        for _ in range(2000):
            await node.ws.send(notification)
        async with asyncio.timeout(10):
            assert (await node.request("ping", 1))["result"] == {}  # every notification was read by now
            while node.lists_in_flight or node.asked.get("tools/list", 0) < 2:
                node.list_answered.clear()
                await node.list_answered.wait()
            await asyncio.sleep(0.5)  # time is the feature: no further fetch may start after the last
        assert node.max_lists_in_flight == 1
        assert node.asked["tools/list"] <= 3  # the handshake's, one, and one coalesced for the rest


async def test_node_messages_cannot_forge_log_lines(server: ServerProc) -> None:
    async with RawNode(await raw_node_socket(server, "liar")) as node:
        await _connected(server, node, "liar")
        forged = "ok\n2026-01-01 00:00:00,000 INFO server.auth: FORGED admin login\r\x1b[2J"
        message = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"data": forged}}
        await node.ws.send(json.dumps(message))
        assert server.wait_output("FORGED", timeout=10)
    lines = [line for line in server.output if "FORGED" in line]
    assert len(lines) == 1 and "node liar says: ok\\n2026" in lines[0]
    assert "\x1b" not in lines[0] and "\\x1b[2J" in lines[0]


async def test_a_link_bounds_the_requests_it_runs_for_the_other_side() -> None:
    release = asyncio.Event()
    sent: list[dict[str, Any]] = []

    async def slow(ctx: CallContext) -> dict[str, Any]:
        await release.wait()
        return {}

    all_answered = asyncio.Event()

    async def collect(text: str) -> None:
        sent.append(json.loads(text))
        if len(sent) == 11:
            all_answered.set()

    session = RpcSession(collect, make_methods({"slow": slow}), max_incoming=4)
    for i in range(10):
        await session.feed(json.dumps({"jsonrpc": "2.0", "method": "slow", "id": i}))
    await session.feed(json.dumps({"jsonrpc": "2.0", "method": "slow", "id": 0}))  # still in flight
    refused = {m["id"]: m["error"]["code"] for m in sent}
    assert refused == {**dict.fromkeys(range(4, 10), errors.OVERLOADED), 0: errors.INVALID_REQUEST}
    release.set()
    async with asyncio.timeout(5):
        await all_answered.wait()
    assert sorted(m["id"] for m in sent if "result" in m) == [0, 1, 2, 3]
    session.close()
