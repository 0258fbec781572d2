"""Tier (c): the official `mcp` Python client against `/mcp` of a real server with real agent nodes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx2
import mcp_types as types
import pytest
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from tests.support.pids import descendants_with, wait_gone
from tests.support.procs import REPO, AgentProc, ServerProc


@contextlib.asynccontextmanager
async def mcp_client(
    server: ServerProc, token: str, on_message: Callable[[Any], Any] | None = None
) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(60.0)) as http,
        streamable_http_client(f"{server.url}/mcp", http_client=http) as (read, write),
    ):
        kwargs: dict[str, Any] = {}
        if on_message is not None:
            kwargs["message_handler"] = on_message
        async with ClientSession(read, write, **kwargs) as session:
            await session.initialize()
            yield session


def _text(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


def _sleep_children(agent_pid: int, marker: str) -> list[int]:
    """Processes descended from the agent whose command line contains `marker`."""
    return descendants_with(agent_pid, marker)


def wait_no_children(agent_pid: int, marker: str, timeout: float) -> bool:
    """Wait (bounded, on pidfds) until no such descendant of the agent is left."""
    return wait_gone(descendants_with(agent_pid, marker), timeout)


async def test_list_and_call_tools(server_proc: ServerProc, start_node: Callable[..., AgentProc]) -> None:
    start_node("laptop")
    async with mcp_client(server_proc, server_proc.token()) as session:
        assert session.initialize_result is not None
        assert session.initialize_result.capabilities.tools is not None
        assert session.initialize_result.capabilities.tools.list_changed
        listed = {t.name: t for t in (await session.list_tools()).tools}
        assert {"laptop__echo", "laptop__shell_exec", "laptop__fs_read"} <= set(listed)
        echo = listed["laptop__echo"]
        assert "laptop" in (echo.description or "")
        assert echo.input_schema["required"] == ["text"]
        assert listed["laptop__fs_read"].annotations is not None
        assert listed["laptop__fs_read"].annotations.read_only_hint

        result = await session.call_tool("laptop__echo", {"text": "hello mcp"})
        assert not result.is_error and _text(result) == "hello mcp"

        shell = await session.call_tool("laptop__shell_exec", {"command": "echo from-shell; exit 3"})
        assert shell.structured_content is not None
        assert shell.structured_content["exit_code"] == 3
        assert "from-shell" in shell.structured_content["stdout"]

        bad = await session.call_tool("laptop__echo", {"text": 5})
        assert bad.is_error and "text" in _text(bad)


async def test_progress_is_forwarded(server_proc: ServerProc, start_node: Callable[..., AgentProc]) -> None:
    start_node("laptop")
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    command = "for i in 1 2 3; do echo tick-$i; sleep 0.3; done"
    async with mcp_client(server_proc, server_proc.token()) as session:
        result = await session.call_tool(
            "laptop__shell_exec", {"command": command}, progress_callback=on_progress
        )
    assert not result.is_error
    assert seen, "no progress notification reached the MCP client"
    assert "tick-1" in "".join(m or "" for _, _, m in seen)


async def test_cancel_kills_the_process_on_the_node(
    server_proc: ServerProc, start_node: Callable[..., AgentProc]
) -> None:
    agent = start_node("laptop")
    started = asyncio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        if message and "ready" in message:
            started.set()

    async with mcp_client(server_proc, server_proc.token()) as session:
        call = asyncio.create_task(
            session.call_tool(
                "laptop__shell_exec", {"command": "echo ready; sleep 600"}, progress_callback=on_progress
            )
        )
        async with asyncio.timeout(15):
            await started.wait()
        assert _sleep_children(agent.pid, "sleep 600"), "the command did not start on the node"
        call.cancel()  # the official client sends notifications/cancelled itself
        with contextlib.suppress(asyncio.CancelledError):
            await call
        assert await asyncio.to_thread(wait_no_children, agent.pid, "sleep 600", 15.0)
        # The session still works after the cancel.
        assert _text(await session.call_tool("laptop__echo", {"text": "still here"})) == "still here"


async def test_list_changes_when_a_node_connects(
    server_proc: ServerProc, start_node: Callable[..., AgentProc]
) -> None:
    start_node("laptop")
    changed = asyncio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async with mcp_client(server_proc, server_proc.token(), on_message) as session:
        names = {t.name for t in (await session.list_tools()).tools}
        assert not any(n.startswith("desk__") for n in names)
        await asyncio.to_thread(start_node, "desk")
        async with asyncio.timeout(15):
            await changed.wait()
        names = {t.name for t in (await session.list_tools()).tools}
        assert "desk__echo" in names and "laptop__echo" in names


async def test_disconnected_node_is_a_tool_error(
    server_proc: ServerProc, start_node: Callable[..., AgentProc]
) -> None:
    agent = start_node("laptop")
    changed = asyncio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async with mcp_client(server_proc, server_proc.token(), on_message) as session:
        assert "laptop__echo" in {t.name for t in (await session.list_tools()).tools}
        await asyncio.to_thread(agent.stop)
        async with asyncio.timeout(15):
            await changed.wait()
        assert "laptop__echo" not in {t.name for t in (await session.list_tools()).tools}
        result = await session.call_tool("laptop__echo", {"text": "anyone?"})
        assert result.is_error and "not connected" in _text(result)


async def test_refused_without_a_token_and_workspaces_are_separate(
    server_proc: ServerProc, start_node: Callable[..., AgentProc]
) -> None:
    start_node("laptop", workspace="ws1")
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    async with httpx2.AsyncClient(timeout=10) as http:
        for headers in ({}, {"Authorization": "Bearer not-a-token"}):
            response = await http.post(
                f"{server_proc.url}/mcp",
                json=body,
                headers={"Accept": "application/json, text/event-stream", **headers},
            )
            assert response.status_code == 401
            assert response.headers["www-authenticate"].startswith("Bearer")
    async with mcp_client(server_proc, server_proc.token("mallory", "ws2")) as session:
        assert (await session.list_tools()).tools == []
        with pytest.raises(Exception):  # noqa: B017 - an MCPError for a name that names no visible node
            await session.call_tool("laptop__echo", {"text": "sneaky"})


async def test_foreign_host_header_is_refused(server_proc: ServerProc) -> None:
    async with httpx2.AsyncClient(timeout=10) as http:
        response = await http.post(
            f"{server_proc.url}/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            headers={
                "Authorization": f"Bearer {server_proc.token()}",
                "Accept": "application/json, text/event-stream",
                "Host": "evil.example:80",
            },
        )
    assert response.status_code == 421


async def test_stdio_bridge_relays_to_the_server(
    server_proc: ServerProc, start_node: Callable[..., AgentProc]
) -> None:
    start_node("laptop")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORTEX_")}
    env.update({"PYTHONPATH": str(REPO), "CORTEX_TOKEN": server_proc.token()})
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "sdk.cli", "--server", server_proc.url, "mcp-stdio"],
        env=env,
        cwd=REPO,
    )
    seen: list[str | None] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(message)

    errlog = await asyncio.to_thread(open, os.devnull, "w")
    with errlog:
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write) as session,
        ):
            async with asyncio.timeout(30):
                await session.initialize()
                names = {t.name for t in (await session.list_tools()).tools}
                assert "laptop__echo" in names
                result = await session.call_tool("laptop__echo", {"text": "via stdio"})
                assert _text(result) == "via stdio"
                shell = await session.call_tool(
                    "laptop__shell_exec", {"command": "echo piped"}, progress_callback=on_progress
                )
                assert shell.structured_content is not None and "piped" in shell.structured_content["stdout"]


def test_readme_documents_mcp() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "/mcp" in readme and "mcp-stdio" in readme and "Authorization: Bearer" in readme


def test_artifact_store_bounds_and_workspaces(tmp_path: Path) -> None:
    from server.artifact_store import ArtifactLimits, DiskArtifactStore
    from server.router import Caller

    store = DiskArtifactStore(tmp_path / "a", ArtifactLimits(ttl_s=60, total_bytes=10))
    first = store.put(b"123456", "image/png", node="laptop", workspace="ws1")
    assert store.get(first, Caller("alice", "ws1")) is not None
    assert store.get(first, Caller("mallory", "ws2")) is None
    assert store.get(first, Caller("root", "ws2", "admin")) is not None
    second = store.put(b"7890ab", "image/png", node="laptop", workspace="ws1")  # evicts the oldest
    assert store.get(first, Caller("alice", "ws1")) is None
    assert store.get(second, Caller("alice", "ws1")) is not None
    expired = DiskArtifactStore(tmp_path / "b", ArtifactLimits(ttl_s=0))
    gone = expired.put(b"x", "image/png", node="laptop", workspace="ws1")
    assert expired.get(gone, Caller("alice", "ws1")) is None


def test_artifact_endpoint_needs_a_token(server_proc: ServerProc) -> None:
    with httpx2.Client(base_url=server_proc.url, timeout=10) as http:
        refused = http.get("/api/v1/artifacts/abc")
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    with server_proc.http(server_proc.token()) as http:
        assert http.get("/api/v1/artifacts/abc").json()["error"] == "artifact_not_found"
