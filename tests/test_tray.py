"""The tray agent without a display: pystray's dummy backend, a real NodeAgent against a real server process.

The state → icon mapping is pure and checked for every AgentState; the menu is pystray's own Menu
object driven the way a backend drives it (`item(icon)`, `icon()` for the default action); the agent
behind it is the real `NodeAgent` built by desktop_agent.assembly (as for `cortex-agent run`), connected
to a real `cortex-server serve` child on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from desktop_agent.assembly import build_agent
from desktop_agent.autostart import autostart_path, desktop_entry
from desktop_agent.connection import AgentState, AgentStatus, ConnectSettings, NodeAgent
from desktop_agent.credentials import Credentials, save_credentials
from desktop_agent.engine import ToolEngine
from desktop_agent.tray import TrayController, start_agent_thread
from desktop_agent.tray_backends import choose_backend
from desktop_agent.tray_view import AMBER, GREEN, GREY, LOGIN_HINT, RED, TrayView, icon_image, view_for
from tests.support.procs import REPO, ServerProc

SERVER = "http://127.0.0.1:9"
NOW = 1_700_000_000.0


@pytest.fixture(scope="module")
def pystray_dummy() -> Iterator[Any]:
    """pystray imported with the dummy backend (it needs no display); the env is restored afterwards."""
    saved = os.environ.get("PYSTRAY_BACKEND")
    os.environ["PYSTRAY_BACKEND"] = "dummy"
    try:
        import pystray
        import pystray._base

        yield pystray
    finally:
        if saved is None:
            os.environ.pop("PYSTRAY_BACKEND", None)
        else:
            os.environ["PYSTRAY_BACKEND"] = saved


@pytest.fixture
def icon_class(pystray_dummy: Any) -> type:
    class DummyIcon(pystray_dummy._base.Icon):  # type: ignore[misc]
        """A backend with no window: the hooks record what a real backend would draw."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.stopped = False
            self.menu_updates = 0

        def _show(self) -> None: ...
        def _hide(self) -> None: ...
        def _update_icon(self) -> None:
            self._icon_valid = True

        def _update_title(self) -> None: ...
        def _update_menu(self) -> None:
            self.menu_updates += 1

        def stop(self) -> None:
            self.stopped = True

    return DummyIcon


def centre(icon: Any) -> tuple[int, int, int]:
    image = icon.icon.convert("RGB")
    pixel = image.getpixel((image.width // 2, image.height // 2))
    return (int(pixel[0]), int(pixel[1]), int(pixel[2]))


def item(menu: Any, text: str) -> Any:
    return next(i for i in menu.items if i.text == text)


# -- the pure mapping ------------------------------------------
@pytest.mark.parametrize(
    ("state", "colour", "can_connect", "can_disconnect", "words"),
    [
        (AgentState.CONNECTED, GREEN, False, True, "connected to"),
        (AgentState.CONNECTING, AMBER, False, True, "connecting to"),
        (AgentState.BACKOFF, AMBER, False, True, "reconnecting to"),
        (AgentState.DISCONNECTED, GREY, True, False, "disconnected from"),
        (AgentState.AUTH_FAILED, RED, True, False, "refused the node credential"),
    ],
)
def test_every_agent_state_has_its_colour_and_tooltip(
    state: AgentState, colour: tuple[int, int, int], can_connect: bool, can_disconnect: bool, words: str
) -> None:
    view = view_for(AgentStatus(state, SERVER, "why", NOW + 7), "laptop", NOW)
    assert view == TrayView(state, colour, view.title, can_connect, can_disconnect)
    assert words in view.title and SERVER in view.title and "laptop" in view.title


def test_backoff_tooltip_names_the_next_retry_time() -> None:
    retry_at = NOW + 12
    view = view_for(AgentStatus(AgentState.BACKOFF, SERVER, "ConnectError", retry_at), "laptop", NOW)
    assert time.strftime("%H:%M:%S", time.localtime(retry_at)) in view.title
    assert "in 12 s" in view.title and "ConnectError" in view.title


def test_auth_failed_and_no_credentials_tell_how_to_log_in() -> None:
    failed = view_for(AgentStatus(AgentState.AUTH_FAILED, SERVER, "401", NOW + 30), "laptop", NOW)
    assert LOGIN_HINT in failed.title
    for status in (None, AgentStatus(AgentState.NO_CREDENTIALS, SERVER)):
        view = view_for(status, "", NOW)
        assert view.state is AgentState.NO_CREDENTIALS and view.colour == GREY
        assert LOGIN_HINT in view.title and not view.can_connect and not view.can_disconnect


def test_icon_is_a_filled_circle_on_transparent_background() -> None:
    image = icon_image(RED)
    assert image.mode == "RGBA" and image.size == (64, 64)
    assert image.getpixel((32, 32)) == (*RED, 255)
    assert image.getpixel((0, 0))[3] == 0  # type: ignore[index]


def test_icon_edge_is_anti_aliased_and_not_set_up_looks_different() -> None:
    image = icon_image(GREEN)
    alphas = {image.getpixel((x, 32))[3] for x in range(0, 8)}  # type: ignore[index]
    assert 0 in alphas and 255 in alphas and alphas - {0, 255}, alphas  # a soft edge, not a hard step
    unset = icon_image(GREY, not_set_up=True)
    disconnected = icon_image(GREY)
    assert unset.getpixel((32, 32)) == disconnected.getpixel((32, 32)) == (*GREY, 255)
    assert unset.getpixel((32, 18))[3] < 128 < disconnected.getpixel((32, 18))[3]  # type: ignore[index]


def test_backend_choice() -> None:
    assert choose_backend({"PYSTRAY_BACKEND": "dummy", "DISPLAY": ":0"}) == "dummy"
    assert choose_backend({}) == "xorg"


# -- the menu ------------------------------------------
def unstarted_agent(tmp_path: Path) -> NodeAgent:
    return NodeAgent(ConnectSettings(server=SERVER, name="laptop", credential="x"), ToolEngine(tmp_path))


def test_only_the_applicable_command_is_enabled(tmp_path: Path, pystray_dummy: Any) -> None:
    controller = TrayController(unstarted_agent(tmp_path), home=tmp_path, name="laptop", dashboard_url=SERVER)
    menu = controller.menu()
    for state, connect, disconnect in [
        (AgentState.CONNECTED, False, True),
        (AgentState.CONNECTING, False, True),
        (AgentState.BACKOFF, False, True),
        (AgentState.DISCONNECTED, True, False),
        (AgentState.AUTH_FAILED, True, False),
    ]:
        controller.on_status(AgentStatus(state, SERVER, "", NOW))
        assert (item(menu, "Connect").enabled, item(menu, "Disconnect").enabled) == (connect, disconnect), (
            state
        )
        assert menu.items[0].text == controller.view.title  # the status line follows the state
    visible = [i.text for i in menu if i is not pystray_dummy.Menu.SEPARATOR]
    assert visible[-5:] == ["Connect", "Disconnect", "Open audit log", "Open dashboard", "Quit"]


def test_without_credentials_the_menu_explains_login_and_quit_stops_the_icon(
    tmp_path: Path, icon_class: type
) -> None:
    controller = TrayController(None, home=tmp_path, name="", dashboard_url=SERVER)
    icon = icon_class("cortex-agent", icon_image(GREY), "t", controller.menu())
    controller.start_painting(icon)
    assert centre(icon) == GREY and LOGIN_HINT in icon.title
    texts = [i.text for i in icon.menu]
    assert any(LOGIN_HINT in t for t in texts)
    assert not item(icon.menu, "Connect").enabled and not item(icon.menu, "Disconnect").enabled
    icon()  # the default action has nothing to toggle: no crash
    item(icon.menu, "Quit")(icon)
    assert icon.stopped


# -- the real agent behind it ------------------------------------------
def test_menu_actions_drive_the_real_agent(server_proc: ServerProc, tmp_path: Path, icon_class: type) -> None:
    home = tmp_path / "home"
    save_credentials(home, Credentials(server_proc.url, "traynode", server_proc.enroll("traynode")))
    args = argparse.Namespace(server=None, name=None, no_browser=True, allow_roots=[tmp_path])
    built = build_agent(args, home)
    assert built is not None
    engine, agent = built
    assert isinstance(agent, NodeAgent)
    opened: list[str] = []
    controller = TrayController(
        agent, home=home, name="traynode", dashboard_url=server_proc.url + "/", opener=opened.append
    )
    icon = icon_class("cortex-agent", icon_image(GREY), "t", controller.menu())
    controller.start_painting(icon)
    thread = start_agent_thread(engine, agent, controller)
    try:
        controller.wait_painted(lambda v: v.state is AgentState.CONNECTED, 20)
        server_proc.wait_status("traynode", "connected")
        assert centre(icon) == GREEN and server_proc.url in icon.title

        item(icon.menu, "Disconnect")(icon)
        server_proc.wait_status("traynode", "disconnected")
        controller.wait_painted(lambda v: v.state is AgentState.DISCONNECTED, 20)
        assert centre(icon) == GREY and item(icon.menu, "Connect").enabled

        icon()  # the default action (a left click) toggles: connect again
        server_proc.wait_status("traynode", "connected")
        controller.wait_painted(lambda v: v.state is AgentState.CONNECTED, 20)
        assert centre(icon) == GREEN

        item(icon.menu, "Open audit log")(icon)
        item(icon.menu, "Open dashboard")(icon)
        assert opened == [str(home / "audit.log"), server_proc.url + "/"]

        item(icon.menu, "Quit")(icon)
        server_proc.wait_status("traynode", "disconnected")
        thread.join(20)
        assert not thread.is_alive() and icon.stopped
    finally:
        controller.quit()
        thread.join(20)
    events = [json.loads(line)["event"] for line in (home / "audit.log").read_text().splitlines()]
    assert events == ["node.connected", "node.disconnected", "node.connected", "node.disconnected"]


def test_a_refused_credential_turns_the_icon_red(
    server_proc: ServerProc, tmp_path: Path, icon_class: type
) -> None:
    home = tmp_path / "home"
    save_credentials(home, Credentials(server_proc.url, "ghost", "not-a-credential"))
    built = build_agent(
        argparse.Namespace(server=None, name=None, no_browser=True, allow_roots=[tmp_path]), home
    )
    assert built is not None
    engine, agent = built
    assert isinstance(agent, NodeAgent)
    controller = TrayController(agent, home=home, name="ghost", dashboard_url=server_proc.url)
    icon = icon_class("cortex-agent", icon_image(GREY), "t", controller.menu())
    controller.start_painting(icon)
    thread = start_agent_thread(engine, agent, controller)
    try:
        view = controller.wait_painted(lambda v: v.state is AgentState.AUTH_FAILED, 20)
        assert centre(icon) == RED and LOGIN_HINT in icon.title and view.can_connect
        assert agent.status.next_retry_at is not None and agent.status.next_retry_at - time.time() > 20
    finally:
        controller.quit()  # also ends the wait before the next (cap-interval) attempt
        thread.join(20)
    assert not thread.is_alive() and icon.stopped


# -- the command line ------------------------------------------
def agent_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "desktop_agent.cli", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CORTEX_") and k not in ("DISPLAY", "PYSTRAY_BACKEND")
    }
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def test_autostart_on_writes_and_off_removes_the_entry(tmp_path: Path) -> None:
    env = clean_env(XDG_CONFIG_HOME=str(tmp_path / "config"))
    home = tmp_path / "my home"
    entry = tmp_path / "config" / "autostart" / "cortex-agent.desktop"
    assert autostart_path(env) == entry

    on = agent_cli("tray", "--autostart", "on", "--home", str(home), env=env)
    assert on.returncode == 0, on.stderr
    text = entry.read_text()
    assert "[Desktop Entry]" in text and "Type=Application" in text
    assert f'Exec=cortex-agent tray --home "{home.resolve()}"' in text.splitlines()
    assert text == desktop_entry(home)

    off = agent_cli("tray", "--autostart", "off", "--home", str(home), env=env)
    assert off.returncode == 0, off.stderr
    assert not entry.exists()
    again = agent_cli("tray", "--autostart", "off", env=env)
    assert again.returncode == 0 and "no autostart entry" in again.stdout


def test_tray_without_a_display_says_so_instead_of_crashing(tmp_path: Path) -> None:
    result = agent_cli("tray", "--home", str(tmp_path), env=clean_env())
    assert result.returncode == 1
    assert "cannot show a tray icon" in result.stderr and "Traceback" not in result.stderr
