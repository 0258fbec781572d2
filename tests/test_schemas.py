"""The frames both peers produce validate against spec/schemas (envelope + each method's params/result)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from desktop_agent.connection import ConnectSettings, NodeAgent
from desktop_agent.engine import ToolEngine
from desktop_agent.policy import Overrides
from spec.schemas import message_problems
from spec.session import RpcSession, make_methods


async def test_every_frame_of_a_session_validates(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    engine = ToolEngine(tmp_path / "home", Overrides(allowed_roots=(root,), browser_enabled=False))
    agent = NodeAgent(ConnectSettings("http://127.0.0.1:1", "n1", "secret"), engine)
    frames: list[tuple[str, dict[str, Any]]] = []
    server: RpcSession
    node: RpcSession

    async def to_node(text: str) -> None:
        frames.append(("server", json.loads(text)))
        asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(node.feed(text)))

    async def to_server(text: str) -> None:
        frames.append(("node", json.loads(text)))
        asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(server.feed(text)))

    server = RpcSession(to_node, {}, name="server")
    node = RpcSession(to_server, make_methods(agent._methods()), name="node")
    progress: list[dict[str, Any]] = []
    async with asyncio.timeout(20):
        await server.request(
            "initialize",
            {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "0"},
            },
        )
        await server.notify("notifications/initialized")
        tools = await server.request("tools/list")
        assert {"echo", "system_info"} <= {t["name"] for t in tools["tools"]}
        caller = {"sub": "alice", "ws": "ws1"}
        await server.request(
            "tools/call", {"name": "echo", "arguments": {"text": "x"}, "_meta": {"cortex/caller": caller}}
        )
        await server.request(
            "tools/call",
            {"name": "shell_exec", "arguments": {"command": "echo hi"}, "_meta": {"cortex/caller": caller}},
            on_progress=progress.append,
        )
        await server.request("audit/read", {"after_seq": 0, "limit": 10})
        await server.request("ping")
    methods: dict[int, str] = {}
    for side, frame in frames:
        if "method" in frame and "id" in frame:
            methods[frame["id"]] = frame["method"]
        problems = message_problems(frame, methods.get(frame.get("id", -1)))
        assert problems == [], (side, frame, problems)
    assert any(f.get("method") == "notifications/progress" for _, f in frames)
