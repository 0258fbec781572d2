"""The tray's approval state on a real X server: Xvfb + trayer + `cortex-agent tray` + a real server.

A call to a tool in `[approval] require` turns the docked icon blue (read from screenshots of the virtual
screen), its window name (the xorg tooltip) names the request with redacted arguments, and "Allow once"
in the menu window (a real X click) lets the call run; the icon is green again afterwards. The harness
(XSession, TrayProc, menu item geometry) is the one of tests/test_tray_x11.py.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
from pathlib import Path
from typing import Any

from desktop_agent.credentials import Credentials, save_credentials
from desktop_agent.tray_view import BLUE, GREEN, TrayView, view_for
from sdk import AsyncClient
from tests.support.procs import ServerProc
from tests.test_tray_x11 import TrayProc, XSession, pytestmark, wait_menu_item, xsession  # noqa: F401

SECRET = "ghp_abcdefghijklmnopqrstuvwxyz0123456789"


def close_to(seen: Any, expected: tuple[int, int, int]) -> bool:
    return all(abs(a - b) <= 12 for a, b in zip(tuple(seen)[:3], expected, strict=True))


def wait_icon(
    xs: XSession, tray: TrayProc, expected: tuple[int, int, int], shot: Path, timeout: float = 30
) -> None:
    """Screenshot every ~0.3 s until the icon's centre pixel is `expected` (bounded in count and time)."""
    pause = threading.Event()
    seen: Any = None
    for _ in range(int(timeout / 0.3) + 1):
        if tray.proc.poll() is not None:
            break
        geometry = xs.icon_geometry()
        if geometry is not None:
            x, y, w, h = geometry
            seen = xs.screenshot(shot).getpixel((x + w // 2, y + h // 2))
            if close_to(seen, expected):
                return
        pause.wait(0.3)
    raise AssertionError(f"icon shows {seen}, expected {expected} ({shot})\n{tray.log()}")


def icon_centre(xs: XSession) -> tuple[int, int]:
    geometry = xs.icon_geometry()
    assert geometry is not None
    x, y, w, h = geometry
    return x + w // 2, y + h // 2


def test_view_for_waiting_approvals_is_blue_and_names_the_request() -> None:
    from desktop_agent.connection import AgentState, AgentStatus

    status = AgentStatus(AgentState.CONNECTED, "http://s")
    plain = view_for(status, "laptop", 0)
    waiting = view_for(status, "laptop", 0, (("ab12", 'echo {"text": "hi"} from alice'),))
    assert plain.colour == GREEN and waiting.colour == BLUE
    assert 'echo {"text": "hi"} from alice' in waiting.title and "approval" in waiting.title
    assert isinstance(waiting, TrayView) and waiting.can_disconnect


def test_tray_turns_blue_and_allow_once_runs_the_call(xsession: XSession, tmp_path: Path) -> None:  # noqa: F811
    shots = Path(tempfile.mkdtemp(prefix="cortex-tray-approval-"))
    print(f"tray screenshots in {shots}")
    server = ServerProc(tmp_path / "server", args=["--heartbeat-interval", "1"]).start()
    home = tmp_path / "home"
    save_credentials(home, Credentials(server.url, "traynode", server.enroll("traynode")))
    (home / "agent.toml").write_text(
        '[browser]\nenabled = false\n[approval]\nrequire = ["echo"]\ntimeout_s = 90\n'
    )
    tray = TrayProc(xsession, home, server.url, "traynode", env={"CORTEX_LOG_LEVEL": "debug"})
    loop = asyncio.new_event_loop()
    try:
        wait_icon(xsession, tray, GREEN, shots / "1-connected.png")
        server.wait_status("traynode", "connected")

        async def call() -> Any:
            async with AsyncClient(server.url, token=server.token()) as client:
                return await client.call("traynode", "echo", {"text": f"token {SECRET}"}, timeout=80)

        result: list[Any] = []
        runner = threading.Thread(target=lambda: result.append(loop.run_until_complete(call())), daemon=True)
        runner.start()
        wait_icon(xsession, tray, BLUE, shots / "2-waiting.png")
        xsession.icon_geometry()
        assert "waiting for your approval" in xsession.icon_title and "echo" in xsession.icon_title
        assert "alice" in xsession.icon_title and SECRET not in xsession.icon_title

        xsession.click(*icon_centre(xsession))
        allow = wait_menu_item(tray, "Allow once", after=0)
        xsession.screenshot(shots / "3-menu.png")
        xsession.click(*allow)
        runner.join(30)
        assert result and not result[0].is_error and SECRET in result[0].text
        wait_icon(xsession, tray, GREEN, shots / "4-answered.png")
        records = [json.loads(line) for line in (home / "audit.log").read_text().splitlines()]
        (approved,) = [r for r in records if r["event"] == "tool.approved"]
        assert approved["via"] == "tray" and approved["scope"] == "once"
    finally:
        tray.close()
        server.stop()
        loop.close()
