"""In-process tier: SDK → server app → memory link → real agent and `ToolEngine`, no sockets.

The same journeys as the e2e tier's first tests (list, call, progress, cancel, a node that drops),
through every real layer but the sockets (see conftest.py).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from sdk import CortexError, NodeNotFound
from spec import errors
from spec.manifest import load_manifest
from tests.inprocess.conftest import BOUND, NODE, InProcess

pytestmark = pytest.mark.inprocess


def audit_events(system: InProcess) -> list[dict[str, Any]]:
    lines = (system.home / "audit.log").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


async def test_tools_list_is_the_nodes_manifest(wired: InProcess) -> None:
    async with asyncio.timeout(BOUND):
        nodes = await wired.client.nodes()
        tools = await wired.client.tools(NODE)
    assert [(n["name"], n["status"]) for n in nodes] == [(NODE, "connected")]
    names = {t["name"] for t in tools}
    assert "echo" in names and names <= {t["name"] for t in load_manifest()}
    with pytest.raises(NodeNotFound):
        async with asyncio.timeout(BOUND):
            await wired.client.tools("nobody")


async def test_echo_call_is_answered_and_audited(wired: InProcess) -> None:
    async with asyncio.timeout(BOUND):
        result = await wired.client.call(NODE, "echo", {"text": "hi there"})
    assert (result.text, result.is_error) == ("hi there", False)
    # `tool.requested` is on disk before the tool ran (tool.finished rides the next group commit).
    requested = [r for r in audit_events(wired) if r["event"] == "tool.requested"]
    assert [(r["tool"], r["caller"]) for r in requested] == [("echo", {"sub": "alice", "ws": "ws1"})]


async def test_node_errors_come_back_as_results_and_codes(wired: InProcess) -> None:
    async with asyncio.timeout(BOUND):
        # The tool ran but could not do its job: a normal result with isError (CONTRACT §4).
        outside = await wired.client.call(NODE, "fs_read", {"path": "/etc/hostname"})
        # Arguments that fail the tool's inputSchema: -32602 before the node is asked.
        with pytest.raises(CortexError) as info:
            await wired.client.call(NODE, "echo", {"text": 5})
    assert outside.is_error
    assert info.value.code == errors.INVALID_PARAMS
    # The refused arguments never reached the node: its audit log names only the fs_read.
    requested = [r["tool"] for r in audit_events(wired) if r["event"] == "tool.requested"]
    assert requested == ["fs_read"]
