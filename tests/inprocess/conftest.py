"""The in-process tier: the real server app and a real `ToolEngine`, linked in memory.

`build_app` runs its real lifespan (store, registry, router, feeds, MCP); the node's tunnel is a real
`server.tunnel.NodeSession` and the agent's side a real `desktop_agent.connection.NodeAgent` over a
`spec.link` memory pair where the WebSocket would be; an SDK `AsyncClient` reaches the real
`server.rpc.ClientSession` over a second pair. No TCP sockets, no subprocesses (the engine's own
approval control socket aside), so a test here costs milliseconds where the e2e tier spawns processes.
What this tier skips — the HTTP handshake (token and subprotocol checks), uvicorn and websockets'
framing — stays covered by the e2e tier (tests/test_tunnel_e2e.py, tests/test_identity_e2e.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from desktop_agent.connection import ConnectSettings, NodeAgent
from desktop_agent.engine import ToolEngine
from sdk import AsyncClient
from server.app import build_app
from server.config import ServerConfig
from server.router import Caller
from server.rpc import ClientSession
from server.tunnel import NodeSession
from spec.link import MemoryLink, memory_link_pair

NODE = "local"
WORKSPACE = "ws1"
BOUND = 10.0  # every wait in this tier; a loaded machine needs headroom, a hang fails


@dataclass
class InProcess:
    """One wired system: `client` calls `NODE` through the real server app."""

    state: Any
    engine: ToolEngine
    agent: NodeAgent
    client: AsyncClient
    home: Path
    root: Path
    server_end: MemoryLink  # the server's end of the node's link (close it to drop the node)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)


def write_agent_toml(home: Path, root: Path, extra: str = "") -> None:
    (home / "agent.toml").write_text(
        f'allowed_roots = ["{root}"]\n[browser]\nenabled = false\n{extra}\n', encoding="utf-8"
    )


@pytest.fixture
def agent_toml_extra() -> str:
    """Override in a test module to add agent.toml sections (e.g. an approval rule)."""
    return ""


@pytest.fixture
async def wired(tmp_path: Path, agent_toml_extra: str) -> AsyncIterator[InProcess]:
    config = ServerConfig(data_dir=tmp_path / "server")
    app = build_app(config)
    home, root = tmp_path / "home", tmp_path / "root"
    home.mkdir()
    root.mkdir()
    write_agent_toml(home, root, agent_toml_extra)
    # The lifespan runs in a task of its own: its MCP task group must be entered and left by one task,
    # and a fixture's setup and teardown may run in different ones.
    started, stop = asyncio.Event(), asyncio.Event()

    async def lifespan() -> None:
        async with app.router.lifespan_context(app):
            started.set()
            await stop.wait()

    life = asyncio.create_task(lifespan())
    async with asyncio.timeout(BOUND):
        await asyncio.wait({life, asyncio.create_task(started.wait())}, return_when=asyncio.FIRST_COMPLETED)
    if life.done():
        life.result()  # the lifespan failed: show why
    try:
        state = app.state.cortex
        token, expires_in = state.authority.mint_node_token(NODE, WORKSPACE)
        claims = state.authority.verify_node_token(token)
        engine = ToolEngine(home, watch_poll_ms=100)
        await engine.start()
        settings = ConnectSettings(server="http://in-process.invalid", name=NODE, credential="unused")
        agent = NodeAgent(settings, engine, seed=1)
        server_end, node_end = memory_link_pair(config.max_frame_bytes, names=("server", "node"))
        client_end, rpc_end = memory_link_pair(config.max_frame_bytes, names=("sdk", "rpc"))
        tasks: list[asyncio.Task[Any]] = []
        with state.registry.subscribe() as events:
            tasks.append(
                asyncio.create_task(NodeSession(server_end, state, NODE, WORKSPACE, claims.exp).run())
            )
            tasks.append(asyncio.create_task(agent.serve_link(node_end, max(expires_in, 3600))))
            async with asyncio.timeout(BOUND):
                while (await events.get())[0] != "node.connected":
                    pass
        caller = Caller(sub="alice", ws=WORKSPACE, role="member")
        tasks.append(asyncio.create_task(ClientSession(rpc_end, state, caller).run()))
        client = AsyncClient("http://in-process.invalid")
        client.attach(client_end)
        system = InProcess(state, engine, agent, client, home, root, server_end, tasks)
        try:
            yield system
        finally:
            await client.aclose()
            await server_end.close(1001, "test over")
            async with asyncio.timeout(BOUND):
                for task in tasks:
                    with contextlib.suppress(Exception):
                        await task
            await engine.aclose()
    finally:
        stop.set()
        async with asyncio.timeout(BOUND):
            await life
