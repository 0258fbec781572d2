"""In-process tier: calls that wait for the node owner's approval (no sockets, see conftest.py).

A call to `echo` waits for approval here: the wait is the in-process stand-in for a long call (it sends
a progress message, can be cancelled, and is in flight when the node drops) without a subprocess.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from sdk import CallCancelled, NodeDisconnected
from tests.inprocess.conftest import BOUND, NODE, InProcess

pytestmark = pytest.mark.inprocess


def audit_events(system: InProcess) -> list[dict[str, Any]]:
    lines = (system.home / "audit.log").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture
def agent_toml_extra() -> str:
    return '[approval]\nrequire = ["echo"]\ntimeout_s = 60\n'


async def _waiting(system: InProcess) -> Any:
    changed = asyncio.Event()
    system.engine.approvals.on_change(lambda _waiting: changed.set())
    async with asyncio.timeout(BOUND):
        while not system.engine.approvals.pending():
            changed.clear()
            await changed.wait()
    return system.engine.approvals.pending()[0]


async def test_progress_reaches_the_caller_in_order(wired: InProcess) -> None:
    seen: list[str] = []
    call = wired.client.start(
        NODE, "echo", {"text": "after approval"}, on_progress=lambda p: seen.append(p["message"])
    )
    pending = await _waiting(wired)
    wired.engine.approvals.answer(pending.id, approve=True, approver="owner", via="cli")
    async with asyncio.timeout(BOUND):
        result = await call
    assert result.text == "after approval"
    assert seen == [f"waiting for approval on {NODE}"]


async def test_cancel_reaches_the_node_and_is_audited(wired: InProcess) -> None:
    call = wired.client.start(NODE, "echo", {"text": "never"})
    await _waiting(wired)
    async with asyncio.timeout(BOUND):
        await call.cancel()
        with pytest.raises(CallCancelled):
            await call
        # The node's handler was cancelled: the approval is withdrawn and the denial audited.
        changed = asyncio.Event()
        wired.engine.approvals.on_change(lambda _waiting: changed.set())
        while wired.engine.approvals.pending():
            changed.clear()
            await changed.wait()
        # One more audited call: the audit log appends in order, so the withdrawal is written by its end.
        await wired.client.call(NODE, "system_info")
    denied = [r for r in audit_events(wired) if r["event"] == "tool.denied"]
    assert [r["reason"] for r in denied] == ["withdrawn"]


async def test_a_node_that_drops_fails_its_calls_with_node_disconnected(wired: InProcess) -> None:
    call = wired.client.start(NODE, "echo", {"text": "never"})
    await _waiting(wired)
    await wired.server_end.close(1006, "gone")
    async with asyncio.timeout(BOUND):
        with pytest.raises(NodeDisconnected):
            await call
        nodes = await wired.client.nodes()
    assert [n["status"] for n in nodes if n["name"] == NODE] in ([], ["disconnected"])
