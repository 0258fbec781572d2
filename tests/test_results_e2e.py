"""Results of any size (issue 21): a big result travels in chunks and never costs a node its link.

Real loopback: a `cortex-server serve` (with a 1 MiB frame limit and with the default 16 MiB), a real
`cortex-agent run` node, the SDK, REST and the official MCP client. Each big result is checked whole by
its SHA-256 on every surface while echo calls on the same node keep answering, and the node's
`connected_at` shows the link never dropped.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import mcp_types as types
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from sdk import AsyncClient
from tests.support.procs import AgentProc, ServerProc

MIB = 1024 * 1024
TEXT_BYTES = 50_000_000
IMAGE_BYTES = 30_000_000
SHELL_BYTES = 20_000_000
AGENT_TOML = """
[limits]
max_read_bytes = 67108864
max_output_bytes = 33554432
"""


def sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


@dataclass
class Rig:
    server: ServerProc
    agent: AgentProc
    root: Path
    token: str
    text_sha: str
    image_sha: str
    shell_sha: str


def _start_node(server: ServerProc, home: Path, root: Path, name: str, toml: str = AGENT_TOML) -> AgentProc:
    home.mkdir(parents=True, exist_ok=True)
    (home / "agent.toml").write_text(toml)
    agent = AgentProc(
        home, server.url, name, server.enroll(name), ["--allow-root", str(root), "--no-browser"]
    )
    with server.events() as stream:
        agent.start()
        for event, data in stream.items(deadline=time.monotonic() + 30):
            if event == "node.connected" and data["name"] == name:
                return agent
    raise TimeoutError(f"node {name} did not connect:\n{''.join(agent.output[-30:])}")


@pytest.fixture(scope="module", params=[MIB, None], ids=["frame-1MiB", "frame-default"])
def rig(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    base = tmp_path_factory.mktemp("results")
    root = base / "root"
    root.mkdir()
    text = os.urandom(TEXT_BYTES // 2).hex()
    (root / "big.txt").write_text(text)
    image = b"\x89PNG\r\n\x1a\n" + os.urandom(IMAGE_BYTES - 8)
    (root / "shot.png").write_bytes(image)
    # Every surface keeps its copies for the TTL: room for all of this module's results.
    args = [
        "--heartbeat-interval",
        "1",
        "--artifact-node-bytes",
        str(4096 * MIB),
        "--artifact-total-bytes",
        str(8192 * MIB),
    ]
    if request.param is not None:
        args += ["--max-frame-bytes", str(request.param)]
    server = ServerProc(base / "server", args=args).start()
    agent: AgentProc | None = None
    try:
        agent = _start_node(server, base / "home", root, "big")
        yield Rig(server, agent, root, server.token(), sha(text), sha(image), sha(text[:SHELL_BYTES]))
    finally:
        if agent is not None:
            agent.stop()
        server.stop()


CALLS: dict[str, tuple[str, dict[str, Any]]] = {
    "text": ("fs_read", {"path": "big.txt", "limit": 64 * MIB}),
    "image": ("fs_read", {"path": "shot.png", "limit": 64 * MIB}),
    "shell": ("shell_exec", {"command": f"head -c {SHELL_BYTES} big.txt", "timeout_s": 120}),
}


def _digest_of(kind: str, result: dict[str, Any]) -> str:
    assert not result.get("isError"), str(result)[:500]
    if kind == "text":
        return sha(result["content"][0]["text"])
    if kind == "image":
        assert result["content"][0]["type"] == "image"
        return sha(base64.b64decode(result["content"][0]["data"]))
    return sha(result["structuredContent"]["stdout"])


def _expected(rig: Rig, kind: str) -> str:
    return {"text": rig.text_sha, "image": rig.image_sha, "shell": rig.shell_sha}[kind]


@contextlib.asynccontextmanager
async def echoes(client: AsyncClient) -> AsyncIterator[list[float]]:
    """Echo calls on the same node every 20 ms while the block runs; yields their latencies."""
    latencies: list[float] = []
    stop = asyncio.Event()

    async def loop() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            result = await client.call("big", "echo", {"text": "hi"}, timeout=30)
            assert result.text == "hi"
            latencies.append(time.perf_counter() - started)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.02):
                    await stop.wait()

    task = asyncio.create_task(loop())
    try:
        yield latencies
    finally:
        stop.set()
        async with asyncio.timeout(30):
            await task


@contextlib.asynccontextmanager
async def mcp_session(rig: Rig) -> AsyncIterator[tuple[ClientSession, httpx2.AsyncClient]]:
    headers = {"Authorization": f"Bearer {rig.token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(120.0)) as http,
        streamable_http_client(f"{rig.server.url}/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session, http


def _connected_at(rig: Rig) -> Any:
    return rig.server.node("big")["connected_at"]


async def test_big_results_reach_rest_whole(rig: Rig) -> None:
    before = _connected_at(rig)
    async with AsyncClient(rig.server.url, token=rig.token) as client, echoes(client) as latencies:
        async with httpx2.AsyncClient(
            base_url=rig.server.url, headers={"Authorization": f"Bearer {rig.token}"}, timeout=120
        ) as http:
            for kind, (tool, arguments) in CALLS.items():
                response = await http.post(
                    f"/api/v1/nodes/big/tools/{tool}/call", json={"arguments": arguments}
                )
                assert response.status_code == 200, response.text[:300]
                assert _digest_of(kind, response.json()) == _expected(rig, kind), kind
    assert latencies, "no echo answered during the transfers"
    assert _connected_at(rig) == before  # the link never dropped


async def test_big_results_reach_the_sdk_whole(rig: Rig) -> None:
    before = _connected_at(rig)
    async with AsyncClient(rig.server.url, token=rig.token) as client, echoes(client) as latencies:
        for kind, (tool, arguments) in CALLS.items():
            result = await client.call("big", tool, arguments, timeout=120)
            assert _digest_of(kind, result.raw) == _expected(rig, kind), kind
    assert latencies
    assert _connected_at(rig) == before


async def test_big_results_reach_mcp_as_resource_links(rig: Rig) -> None:
    before = _connected_at(rig)
    async with (
        AsyncClient(rig.server.url, token=rig.token) as client,
        echoes(client) as latencies,
        mcp_session(rig) as (session, http),
    ):
        for kind, (tool, arguments) in CALLS.items():
            result = await session.call_tool(f"big__{tool}", arguments)
            assert not result.is_error
            links = [c for c in result.content if isinstance(c, types.ResourceLink)]
            by_mime = {str(link.mime_type).split(";")[0]: str(link.uri) for link in links}
            if kind == "text":
                body = (await http.get(by_mime["text/plain"])).content
                assert sha(body) == rig.text_sha
            elif kind == "image":
                body = (await http.get(by_mime["image/png"])).content
                assert sha(body) == rig.image_sha
            else:
                whole = (await http.get(by_mime["application/json"])).json()
                assert sha(whole["structuredContent"]["stdout"]) == rig.shell_sha
                # what the model reads inline stays small
                assert len(json.dumps(result.model_dump(mode="json"))) < MIB
    assert latencies
    assert _connected_at(rig) == before


async def test_audit_covers_the_whole_result(rig: Rig) -> None:
    tool, arguments = CALLS["text"]
    with rig.server.http(rig.token) as http:
        result = http.post(f"/api/v1/nodes/big/tools/{tool}/call", json={"arguments": arguments}).json()
        records = http.get("/api/v1/nodes/big/audit", params={"after": 0, "limit": 1000}).json()["records"]
    finished = [r for r in records if r["event"] == "tool.finished" and r["tool"] == "fs_read"][-1]
    content = json.dumps(result["content"], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert finished["output_bytes"] == len(content.encode()) > TEXT_BYTES
    assert finished["output_sha256"] == sha(content)


def test_a_result_over_the_budget_is_a_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "five.txt").write_text("x" * 5_000_000)
    (root / "two.txt").write_text("y" * 2_000_000)
    server = ServerProc(
        tmp_path / "server",
        args=["--heartbeat-interval", "1", "--max-frame-bytes", str(MIB), "--artifact-node-bytes", "4000000"],
    ).start()
    agent: AgentProc | None = None
    try:
        agent = _start_node(server, tmp_path / "home", root, "big")
        before = server.node("big")["connected_at"]
        with server.http(server.token()) as http:
            over = http.post(
                "/api/v1/nodes/big/tools/fs_read/call",
                json={"arguments": {"path": "five.txt", "limit": 8 * MIB}},
            )
            assert over.status_code == 200
            assert over.json()["isError"] is True
            assert "budget" in over.json()["content"][0]["text"]
            echo = http.post("/api/v1/nodes/big/tools/echo/call", json={"arguments": {"text": "still here"}})
            assert echo.json()["content"][0]["text"] == "still here"
            fits = http.post(
                "/api/v1/nodes/big/tools/fs_read/call",
                json={"arguments": {"path": "two.txt", "limit": 8 * MIB}},
            ).json()
            assert not fits.get("isError") and fits["content"][0]["text"] == "y" * 2_000_000
        assert server.node("big")["connected_at"] == before
        assert not list((tmp_path / "server" / "artifacts").glob("*.part"))  # nothing partial kept
    finally:
        if agent is not None:
            agent.stop()
        server.stop()


def test_the_node_obeys_a_frame_limit_smaller_than_its_chunks(tmp_path: Path) -> None:
    """At 256 KiB the node's default chunk (512 KiB) would be a frame over the limit (closed 1009): the
    node must size its chunks from the limit the server told it in `initialize`."""
    root = tmp_path / "root"
    root.mkdir()
    text = os.urandom(1_500_000).hex()
    (root / "three.txt").write_text(text)
    server = ServerProc(
        tmp_path / "server", args=["--heartbeat-interval", "1", "--max-frame-bytes", str(256 * 1024)]
    ).start()
    agent: AgentProc | None = None
    try:
        agent = _start_node(server, tmp_path / "home", root, "big")
        before = server.node("big")["connected_at"]
        with server.http(server.token()) as http:
            result = http.post(
                "/api/v1/nodes/big/tools/fs_read/call",
                json={"arguments": {"path": "three.txt", "limit": 8 * MIB}},
            )
            assert result.status_code == 200, result.text[:300]
            assert sha(result.json()["content"][0]["text"]) == sha(text)
        assert server.node("big")["connected_at"] == before
        assert "1009" not in "".join(agent.output)
    finally:
        if agent is not None:
            agent.stop()
        server.stop()
