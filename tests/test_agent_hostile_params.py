"""In-process tier: what the agent's own handlers make of a `tools/call` whose fields have the wrong
JSON type (the node's peer is the server, whose frames are hostile input like any other).

A real `NodeAgent` and `ToolEngine` (audit log on disk) serve a plain `RpcSession` over an in-memory link:
a tool name that is not a string is -32602 naming what came, not -32603 from the tool table's lookup;
a caller identity that is not an object is recorded as no caller, and the call runs.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from desktop_agent.connection import ConnectSettings, NodeAgent
from desktop_agent.engine import ToolEngine
from desktop_agent.policy import Overrides
from spec.errors import RpcError
from spec.link import memory_link_pair, pump
from spec.session import RpcSession, make_methods


async def _serve(tmp_path: Path, calls: list[dict[str, Any]]) -> tuple[list[Any], ToolEngine]:
    root = tmp_path / "root"
    root.mkdir()
    engine = ToolEngine(tmp_path / "home", Overrides(allowed_roots=(root,), browser_enabled=False))
    agent = NodeAgent(ConnectSettings("http://127.0.0.1:1", "n1", "secret"), engine)
    near, far = memory_link_pair(names=("server", "node"))
    server = RpcSession(near.send, {}, name="server")
    node = RpcSession(far.send, make_methods(agent._methods()), name="node")
    pumps = [asyncio.create_task(pump(near, server)), asyncio.create_task(pump(far, node))]
    answers: list[Any] = []
    try:
        async with asyncio.timeout(20):
            for params in calls:
                try:
                    answers.append(await server.request("tools/call", params))
                except RpcError as exc:
                    answers.append(exc)
    finally:
        await near.close()
        for task in pumps:
            task.cancel()
    return answers, engine


@pytest.mark.parametrize(
    ("name", "problem"),
    [([1], "name must be a string, not an array"), ({"a": 1}, "name must be a string, not an object")],
)
async def test_a_tool_name_that_is_not_a_string_is_invalid_params(
    tmp_path: Path, name: Any, problem: str
) -> None:
    (answer,), engine = await _serve(tmp_path, [{"name": name, "arguments": {}}])
    await engine.aclose()
    assert isinstance(answer, RpcError) and (answer.code, answer.message) == (-32602, problem)


async def test_a_caller_that_is_not_an_object_is_recorded_as_no_caller(tmp_path: Path) -> None:
    params = {"name": "echo", "arguments": {"text": "hi"}, "_meta": {"cortex/caller": ["alice"]}}
    (answer,), engine = await _serve(tmp_path, [params])
    await engine.aclose()
    assert answer["content"][0]["text"] == "hi"
    records = [json.loads(line) for line in (tmp_path / "home" / "audit.log").read_text().splitlines()]
    requested = [r for r in records if r["event"] == "tool.requested"]
    assert requested[-1]["caller"] == {"sub": None, "ws": None}
