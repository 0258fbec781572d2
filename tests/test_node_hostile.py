"""A node cannot hurt the server: schema regexes, node info, tools/list floods, request floods, log lines.

Hostile nodes are `RawNode`s on real tunnel sockets of a real server process; a second, well-behaved
node beside them shows the server keeps serving everyone else. The request bound is also checked on
two session cores wired text to text (deterministic, no timing).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from sdk import AsyncClient
from sdk.exceptions import CortexError
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


MALFORMED: dict[str, Any] = {
    "a number": 5,
    "content a string": {"content": "abc", "isError": False},
    "an unknown item": {"content": [{"type": "bogus"}], "isError": False},
    "no isError": {"content": [{"type": "text", "text": "hi"}]},
    "a reference without a digest": {
        "content": [],
        "isError": False,
        "_meta": {"cortex/artifact": {"id": "x"}},
    },
    "resource without text": {
        "content": [{"type": "resource", "resource": {"uri": "file:///x"}}],
        "isError": False,
    },
}
MCP_ONLY = "resource without text"
"""Our protocol's shape but not MCP's (a resource needs text or blob there): REST and the SDK pass it on."""
WHOLE: dict[str, bytes] = {
    "whole not json": b"not json at all",
    "whole nested": b"[" * 5000 + b"]" * 5000,
    "whole not a result": b'{"content": 5, "isError": false}',
}


async def _upload(node: RawNode, data: bytes, id_: int) -> dict[str, Any]:
    """A whole result the node uploads itself (`artifacts/write`, one chunk); its reference."""
    digest = hashlib.sha256(data).hexdigest()
    params = {"id": f"up{id_}", "offset": 0, "final": True, "size": len(data), "sha256": digest}
    answer = await node.request("artifacts/write", id_, {**params, "data": base64.b64encode(data).decode()})
    artifact = answer["result"]["artifact"]
    return {"id": artifact["id"], "bytes": len(data), "sha256": digest}


async def test_a_malformed_result_is_a_clear_error_on_every_surface(server: ServerProc) -> None:
    # Before: a result that was not an object was HTTP 500 / -32603 with a traceback, content that was
    # a string reached the SDK as a list of characters, MCP answered -32602 "Invalid request
    # parameters", and a whole result of other bytes than a CallToolResult failed MCP's expansion.
    answers: dict[str, Any] = dict(MALFORMED)

    def answer(arguments: dict[str, Any]) -> Any:
        return answers[arguments["text"]]

    async with (
        RawNode(await raw_node_socket(server, "garbled"), answer=answer) as evil,
        RawNode(await raw_node_socket(server, "fine")) as good,
    ):
        await _connected(server, evil, "garbled")
        await _connected(server, good, "fine")
        for number, (name, data) in enumerate(WHOLE.items(), start=100):
            ref = await _upload(evil, data, number)
            answers[name] = {"content": [{"type": "text", "text": "preview"}], "isError": False,
                             "_meta": {"cortex/artifact": ref}}  # fmt: skip
        headers = {"Authorization": f"Bearer {server.admin_token}"}
        async with (
            httpx2.AsyncClient(base_url=server.url, headers=headers, timeout=10) as http,
            AsyncClient(server.url, token=server.admin_token) as sdk,
            httpx2.AsyncClient(headers=headers, timeout=10) as mcp_http,
            streamable_http_client(f"{server.url}/mcp", http_client=mcp_http) as (read, write),
            ClientSession(read, write) as mcp,
        ):
            await mcp.initialize()
            for name in MALFORMED:
                response = await http.post(
                    "/api/v1/nodes/garbled/tools/echo/call", json={"arguments": {"text": name}}
                )
                assert response.status_code == 200, (name, response.text)
                via_mcp = await mcp.call_tool("garbled__echo", {"text": name})
                said = "not an MCP CallToolResult" if name == MCP_ONLY else "not a CallToolResult"
                assert via_mcp.is_error and said in str(via_mcp.content), (name, via_mcp)
                if name == MCP_ONLY:
                    continue
                assert response.json()["isError"] is True and said in response.text, name
                via_sdk = await sdk.call("garbled", "echo", {"text": name})
                assert via_sdk.is_error and said in str(via_sdk.content), name
            for name in WHOLE:
                via_mcp = await mcp.call_tool("garbled__echo", {"text": name})
                assert via_mcp.is_error and "not a CallToolResult" in str(via_mcp.content), (name, via_mcp)
                assert any(getattr(c, "type", "") == "resource_link" for c in via_mcp.content), name
                with pytest.raises(CortexError, match="not a CallToolResult"):
                    await sdk.call("garbled", "echo", {"text": name})
            echo = await http.post("/api/v1/nodes/fine/tools/echo/call", json={"arguments": {"text": "hi"}})
            assert echo.json()["content"][0]["text"] == "hi"
    assert not [line for line in server.output if "Traceback" in line]


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
