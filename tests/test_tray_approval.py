"""The tray's approval menu without a display (pystray dummy backend) driving a real ToolEngine."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from desktop_agent.connection import ConnectSettings, NodeAgent
from desktop_agent.engine import ToolEngine
from desktop_agent.tray import TrayController
from desktop_agent.tray_view import BLUE
from tests.test_tray import pystray_dummy  # noqa: F401

ALICE = {"sub": "alice", "ws": "w1"}


async def test_menu_answers_reach_the_waiting_call(tmp_path: Path, pystray_dummy: Any) -> None:  # noqa: F811
    home = tmp_path / "home"
    home.mkdir()
    (home / "agent.toml").write_text('[browser]\nenabled = false\n[approval]\nrequire = ["echo"]\n')
    engine = ToolEngine(home)
    agent = NodeAgent(ConnectSettings(server="http://s", name="laptop", credential="x"), engine)
    controller = TrayController(agent, home=home, name="laptop", dashboard_url="http://s/")
    controller.bind_loop(asyncio.get_running_loop())
    changed = asyncio.Event()
    engine.approvals.on_change(controller.on_approvals)
    engine.approvals.on_change(lambda _w: changed.set())
    await engine.start()
    try:
        menu = controller.menu()
        assert not [i for i in menu if str(i.text).startswith("Approve?")]  # nothing waits: no slot shows
        results = []
        for request_id, answer in ((1, "Deny"), (2, "Allow this caller for 15 minutes")):
            changed.clear()
            call = asyncio.create_task(
                engine.call("echo", {"text": "hi"}, request_id=request_id, caller=ALICE)
            )
            async with asyncio.timeout(10):
                await changed.wait()
            assert controller.view.colour == BLUE
            (slot,) = [i for i in menu if str(i.text).startswith("Approve?")]
            assert "echo" in slot.text and "alice" in slot.text
            (choice,) = [i for i in slot.submenu if i.text == answer]
            choice(None)  # what a click on the item runs
            async with asyncio.timeout(10):
                results.append(await call)
        assert [r["isError"] for r in results] == [True, False]
        assert controller.view.colour != BLUE
    finally:
        await engine.aclose()
    records = [json.loads(x) for x in (home / "audit.log").read_text().splitlines()]
    denied = next(r for r in records if r["event"] == "tool.denied")
    approved = next(r for r in records if r["event"] == "tool.approved")
    assert denied["via"] == "tray" and denied["reason"] == "denied"
    assert approved["via"] == "tray" and approved["scope"] == "caller" and approved["until"]
