"""Tier (c): MCP resources on `/mcp` with the official `mcp` client — artifacts, audit logs, list_changed.

A real server, real agent nodes, the official client with its defaults (its 1 MiB cap on one SSE event
included), on both protocol revisions: the 2025-11-25 handshake and the stateless 2026-07-28.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx2
import mcp_types as types
import pytest
from mcp import Client, ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from server.mcp_resources import AuditRef, parse_resource_uri
from tests.support.procs import REPO, AgentProc, ServerProc
from tests.test_mcp import mcp_client

INVALID_PARAMS = -32602


@contextlib.asynccontextmanager
async def modern_client(server: ServerProc, token: str) -> AsyncIterator[Client]:
    """The official client pinned to the stateless 2026-07-28 revision."""
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(60.0))
    async with (
        http,
        Client(streamable_http_client(f"{server.url}/mcp", http_client=http)) as client,
    ):
        assert client.protocol_version == "2026-07-28"  # negotiated by server/discover
        yield client


def _node_root(tmp_path: Path, name: str) -> Path:
    return tmp_path / f"{name}-root"  # the allowed root the start_node fixture gives each node


async def test_a_large_image_is_read_with_the_same_session(
    server_proc: ServerProc, start_node: Callable[..., AgentProc], tmp_path: Path
) -> None:
    start_node("laptop")
    start_node("desk", workspace="ws2")
    image = b"\x89PNG\r\n\x1a\n" + os.urandom(1024 * 1024 - 8)  # 1 MiB: ~1.4 MiB of base64
    big = _node_root(tmp_path, "laptop") / "big.png"
    await asyncio.to_thread(big.write_bytes, image)
    async with asyncio.timeout(60), mcp_client(server_proc, server_proc.token()) as session:
        result = await session.call_tool("laptop__fs_read", {"path": str(big)})
        links = [c for c in result.content if isinstance(c, types.ResourceLink)]
        assert links and not any(isinstance(c, types.ImageContent) for c in result.content)
        (link,) = [c for c in links if c.mime_type == "image/png"]
        assert f"{server_proc.url}/api/v1/artifacts/" in str(link.uri) and link.mime_type == "image/png"
        # The default client caps one SSE event at 1 MiB: the answer must come whole all the same.
        read = await session.read_resource(str(link.uri))
        (contents,) = read.contents
        assert isinstance(contents, types.BlobResourceContents)
        assert contents.mime_type == "image/png" and base64.b64decode(contents.blob) == image
        # Its short name is the same resource.
        assert link.meta is not None and link.meta["cortex/uri"].startswith("cortex://artifacts/")
        short = await session.read_resource(link.meta["cortex/uri"])
        assert isinstance(short.contents[0], types.BlobResourceContents)
        assert base64.b64decode(short.contents[0].blob) == image
        # The session goes on working after the large answer.
        echoed = await session.call_tool("laptop__echo", {"text": "after"})
        assert not echoed.is_error
    async with modern_client(server_proc, server_proc.token()) as client:
        modern = await client.read_resource(str(link.uri))
        assert isinstance(modern.contents[0], types.BlobResourceContents)
        assert base64.b64decode(modern.contents[0].blob) == image
        assert modern.cache_scope == "private" and modern.ttl_ms > 0
    # Knowing the id is not authorization: another workspace gets the not-found error.
    async with mcp_client(server_proc, server_proc.token("mallory", "ws2")) as other:
        with pytest.raises(MCPError) as refused:
            await other.read_resource(str(link.uri))
        assert refused.value.error.code == INVALID_PARAMS


async def test_audit_resources_stay_in_their_workspace(
    server_proc: ServerProc, start_node: Callable[..., AgentProc]
) -> None:
    start_node("laptop")
    start_node("desk", workspace="ws2")
    async with asyncio.timeout(60), mcp_client(server_proc, server_proc.token()) as session:
        caps = session.initialize_result.capabilities if session.initialize_result else None
        assert caps is not None and caps.resources is not None and caps.resources.list_changed
        listed = {str(r.uri) for r in (await session.list_resources()).resources}
        assert listed == {"cortex://nodes/laptop/audit"}
        templates = {t.uri_template for t in (await session.list_resource_templates()).resource_templates}
        assert templates == {"cortex://artifacts/{id}", "cortex://nodes/{node}/audit{?after,limit}"}
        assert (await session.list_prompts()).prompts == []
        await session.call_tool("laptop__echo", {"text": "audited"})
        read = await session.read_resource("cortex://nodes/laptop/audit?after=0&limit=1000")
        assert isinstance(read.contents[0], types.TextResourceContents)
        audit = json.loads(read.contents[0].text)
        assert audit["head"]["seq"] >= 1 and any("echo" in json.dumps(r) for r in audit["records"])
        # A node of another workspace is exactly as invisible as a node that does not exist.
        for uri in ("cortex://nodes/desk/audit", "cortex://nodes/nosuch/audit"):
            with pytest.raises(MCPError) as refused:
                await session.read_resource(uri)
            assert refused.value.error.code == INVALID_PARAMS and refused.value.error.data == {"uri": uri}
    async with modern_client(server_proc, server_proc.token("mallory", "ws2")) as client:
        listed = await client.list_resources()
        assert {str(r.uri) for r in listed.resources} == {"cortex://nodes/desk/audit"}
        assert listed.cache_scope == "private"
        with pytest.raises(MCPError):
            await client.read_resource("cortex://nodes/laptop/audit")
    async with mcp_client(server_proc, server_proc.admin_token) as admin:
        listed = {str(r.uri) for r in (await admin.list_resources()).resources}
        assert listed == {"cortex://nodes/laptop/audit", "cortex://nodes/desk/audit"}


async def test_list_changed_reaches_both_revisions(
    server_proc: ServerProc, start_node: Callable[..., AgentProc]
) -> None:
    start_node("laptop")
    legacy_seen: dict[str, asyncio.Event] = {"tools": asyncio.Event(), "resources": asyncio.Event()}

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            legacy_seen["tools"].set()
        if isinstance(message, types.ResourceListChangedNotification):
            legacy_seen["resources"].set()

    async with (
        asyncio.timeout(60),
        mcp_client(server_proc, server_proc.token(), on_message) as legacy,
        modern_client(server_proc, server_proc.token()) as modern,
        modern.listen(tools_list_changed=True, resources_list_changed=True) as stream,
    ):
        assert stream.honored.tools_list_changed and stream.honored.resources_list_changed
        caps = modern.server_capabilities  # only what the server does: no prompt changes, no resource updates
        assert caps.tools is not None and caps.tools.list_changed
        assert caps.resources is not None and caps.resources.list_changed and not caps.resources.subscribe
        assert caps.prompts is not None and not caps.prompts.list_changed
        await legacy.list_tools()  # the handshake-era session is now known to the server
        await asyncio.to_thread(start_node, "desk")
        kinds: set[str] = set()
        async for event in stream:
            kinds.add(type(event).__name__)
            if {"ToolsListChanged", "ResourcesListChanged"} <= kinds:
                break
        await legacy_seen["tools"].wait()
        await legacy_seen["resources"].wait()
        assert "desk__echo" in {t.name for t in (await modern.list_tools()).tools}
        assert "cortex://nodes/desk/audit" in {str(r.uri) for r in (await modern.list_resources()).resources}


async def test_the_stdio_bridge_relays_resources(
    server_proc: ServerProc, start_node: Callable[..., AgentProc], tmp_path: Path
) -> None:
    start_node("laptop")
    image = b"\x89PNG\r\n\x1a\n" + os.urandom(1024 * 1024 - 8)
    big = _node_root(tmp_path, "laptop") / "big.png"
    await asyncio.to_thread(big.write_bytes, image)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORTEX_")}
    env.update({"PYTHONPATH": str(REPO), "CORTEX_TOKEN": server_proc.token()})
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "sdk.cli", "--server", server_proc.url, "mcp-stdio"],
        env=env,
        cwd=REPO,
    )
    errlog = await asyncio.to_thread(open, os.devnull, "w")
    with errlog:
        async with (
            asyncio.timeout(60),
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            listed = {str(r.uri) for r in (await session.list_resources()).resources}
            assert listed == {"cortex://nodes/laptop/audit"}
            assert len((await session.list_resource_templates()).resource_templates) == 2
            assert (await session.list_prompts()).prompts == []
            result = await session.call_tool("laptop__fs_read", {"path": str(big)})
            # The image's link (a result too big for one frame also links its whole CallToolResult).
            (link,) = [
                c for c in result.content if isinstance(c, types.ResourceLink) and c.mime_type == "image/png"
            ]
            blob = (await session.read_resource(str(link.uri))).contents[0]
            assert isinstance(blob, types.BlobResourceContents) and base64.b64decode(blob.blob) == image


def test_resource_uris_are_parsed_strictly() -> None:
    assert parse_resource_uri("cortex://artifacts/AbC-_9") == "AbC-_9"
    assert parse_resource_uri("https://h:1/api/v1/artifacts/AbC") == "AbC"
    assert parse_resource_uri("https://h/behind/proxy/api/v1/artifacts/AbC") == "AbC"
    assert parse_resource_uri("cortex://nodes/laptop/audit") == AuditRef("laptop", 0, 100)
    assert parse_resource_uri("cortex://nodes/laptop/audit?after=5&limit=7") == AuditRef("laptop", 5, 7)
    for hostile in (
        "cortex://artifacts/../etc",
        "cortex://artifacts/a/b",
        "cortex://artifacts/a?x=1",
        "https://h/api/v1/artifacts/a?x=1",
        "https://h/api/v1/artifacts/",
        "https://h/api/v1/nodes/a",
        "ftp://h/api/v1/artifacts/a",
        "cortex://artifacts/" + "a" * 65,
        "cortex://nodes/Laptop/audit",
        "cortex://nodes/laptop/audit?limit=0",
        "cortex://nodes/laptop/audit?limit=1001",
        "cortex://nodes/laptop/audit?after=-1",
        "cortex://nodes/laptop/audit?after=x",
        "cortex://nodes/laptop/audit?after=1&after=2",
        "cortex://nodes/laptop/audit?other=1",
        "cortex://nodes/laptop/secrets",
        "file:///etc/passwd",
        "cortex://nodes/" + "a" * 3000 + "/audit",
        "",
    ):
        assert parse_resource_uri(hostile) is None, hostile


async def test_an_oversized_body_is_refused_without_being_read(server_proc: ServerProc) -> None:
    # The JSON-reply wrapper reads request bodies ahead: it must not wait for (or hold) one over the limit.
    reader, writer = await asyncio.open_connection("127.0.0.1", server_proc.port)
    try:
        head = (
            "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Accept: application/json, text/event-stream\r\n"
            f"Authorization: Bearer {server_proc.token()}\r\nContent-Length: {1 << 30}\r\n\r\n"
        )
        writer.write(head.encode() + b'{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"')
        await writer.drain()
        async with asyncio.timeout(10):
            status = await reader.readline()
        assert status.split()[1] == b"413", status
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
