"""MCP through a real HAProxy over three replicas, with the official `mcp` client (issue 15).

A replica keeps each streamable-HTTP session in its own memory, so HAProxy routes every request that
carries an ``Mcp-Session-Id`` to the replica whose response set it (`server.haproxy` rule 3). The second
test removes that stick table and shows the official client's session breaking on plain round-robin:
the reason the stick table is there.

Real processes only: redis-server (tests.support.engines), three `cortex-server serve --redis-url`
replicas sharing one data dir, Debian's HAProxy, `cortex-agent run` nodes each connected straight to
one replica (so the session's replica must reach nodes held by the others).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import mcp_types as types
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.support.engines import HaproxyFactory
from tests.support.procs import AgentProc, ServerProc

REPLICA_ARGS = ["--heartbeat-interval", "1", "--replica-lease", "1.5"]


@pytest.fixture
def replicas(tmp_path: Path, redis_url: str) -> Iterator[list[ServerProc]]:
    data = tmp_path / "server"
    servers = [ServerProc(data, args=[*REPLICA_ARGS, "--redis-url", redis_url]) for _ in range(3)]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def node_on(tmp_path: Path) -> Iterator[Callable[[ServerProc, str], AgentProc]]:
    agents: list[AgentProc] = []

    def start(server: ServerProc, name: str) -> AgentProc:
        root = tmp_path / f"{name}-root"
        root.mkdir(exist_ok=True)
        agent = AgentProc(
            tmp_path / f"{name}-home",
            server.url,
            name,
            server.enroll(name, "ws1"),
            ["--allow-root", str(root), "--no-browser"],
        )
        agents.append(agent)
        agent.start()
        return agent

    try:
        yield start
    finally:
        for agent in agents:
            agent.stop()


def _wait_connected(servers: list[ServerProc], name: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    for server in servers:
        while server_status(server, name) != "connected":
            assert time.monotonic() < deadline, f"{name} not connected on {server.url}"
            time.sleep(0.05)


def server_status(server: ServerProc, name: str) -> str | None:
    with server.http() as http:
        response = http.get(f"/api/v1/nodes/{name}")
    return response.json().get("status") if response.status_code == 200 else None


@asynccontextmanager
async def mcp_session(
    url: str, token: str, seen: list[tuple[str, int]], on_message: Callable[[Any], Any] | None = None
) -> AsyncIterator[ClientSession]:
    """The official client through `url`; `seen` gets (method, status) of every HTTP exchange."""

    async def record(response: httpx2.Response) -> None:
        seen.append((response.request.method, response.status_code))

    async with (
        httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx2.Timeout(60.0),
            event_hooks={"response": [record]},
        ) as http,
        streamable_http_client(f"{url}/mcp", http_client=http) as (read, write),
    ):
        kwargs: dict[str, Any] = {} if on_message is None else {"message_handler": on_message}
        async with ClientSession(read, write, **kwargs) as session:
            await session.initialize()
            yield session


def _text(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def test_mcp_session_through_haproxy_reaches_nodes_on_every_replica(
    replicas: list[ServerProc], node_on: Callable[[ServerProc, str], AgentProc], haproxy: HaproxyFactory
) -> None:
    a, b, c = replicas
    lb = await asyncio.to_thread(haproxy, [r.url for r in replicas])
    node_on(a, "desk-a")
    node_on(b, "desk-b")
    await asyncio.to_thread(_wait_connected, replicas, "desk-a")
    await asyncio.to_thread(_wait_connected, replicas, "desk-b")
    changed = asyncio.Event()

    async def on_message(message: object) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    seen: list[tuple[str, int]] = []
    async with mcp_session(lb.url, a.token(), seen, on_message) as session:
        names = {t.name for t in (await session.list_tools()).tools}
        assert {"desk-a__echo", "desk-b__echo"} <= names
        assert not any(n.startswith("desk-c__") for n in names)
        for _round in range(3):  # more requests than replicas: round-robin would have moved them
            assert _text(await session.call_tool("desk-a__echo", {"text": "to a"})) == "to a"
            assert _text(await session.call_tool("desk-b__echo", {"text": "to b"})) == "to b"
        # A node connecting to the third replica is announced on the session's standalone stream.
        node_on(c, "desk-c")
        async with asyncio.timeout(30):
            await changed.wait()
        assert "desk-c__echo" in {t.name for t in (await session.list_tools()).tools}
        assert _text(await session.call_tool("desk-c__echo", {"text": "to c"})) == "to c"
    assert [s for _m, s in seen if s >= 400] == [], seen  # no request of the session went astray


async def test_round_robin_without_stickiness_loses_the_session(
    replicas: list[ServerProc], node_on: Callable[[ServerProc, str], AgentProc], haproxy: HaproxyFactory
) -> None:
    """The defence above, removed: the official client's session dies on the first request that HAProxy
    sends to a replica other than the one that opened it (404 "session not found")."""
    lb = await asyncio.to_thread(haproxy, [r.url for r in replicas], sticky_mcp=False)
    node_on(replicas[0], "desk-a")
    await asyncio.to_thread(_wait_connected, replicas, "desk-a")
    seen: list[tuple[str, int]] = []
    with pytest.raises(BaseException) as failed:  # an MCPError, maybe inside the client's ExceptionGroup
        async with asyncio.timeout(60), mcp_session(lb.url, replicas[0].token(), seen) as session:
            for _round in range(6):
                await session.call_tool("desk-a__echo", {"text": "x"})
    assert any(isinstance(e, MCPError) for e in _leaves(failed.value)), repr(failed.value)
    assert any(status == 404 for _m, status in seen), seen


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]
