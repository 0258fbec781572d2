"""The tray's gtk backend on a real X server: Xvfb + trayer + `cortex-agent tray` under `dbus-run-session`.

Sits beside tests/test_tray_x11.py (whose X session, tray process and screenshot helpers it reuses):
there the xorg backend is forced; here the tray picks its backend itself, which must be gtk when PyGObject
is installed. The icon is a Gtk.StatusIcon docked in trayer; a real right click (`xdotool click 3`) opens
the real GTK menu, whose items are found on a screenshot of the menu window (the separators split it into
groups of known items) and clicked by position. Effects are checked where a user sees them: the server's
registry (ServerProc.wait_status), the icon's colour on screenshots and the agent's audit log. The screen
has no event to wait on, so screen checks poll, bounded in count and time.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from PIL import Image

from desktop_agent.credentials import Credentials, save_credentials
from desktop_agent.tray_view import GREEN, GREY
from tests.support.procs import ServerProc
from tests.support.xdisplay import x_display
from tests.test_tray_x11 import IconWatcher, TrayProc, XSession, xsession

__all__ = ["xsession"]  # the fixture, re-exported so pytest finds it here

TOOLS = ("Xvfb", "trayer", "xdotool", "import", "dbus-run-session")
pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None for t in TOOLS),
    reason=f"needs {', '.join(TOOLS)} (apt-get install xvfb trayer xdotool imagemagick dbus)",
)

POLL_S = 0.2
T = TypeVar("T")


@pytest.fixture(scope="module")
def gtk_available() -> None:
    """Skip unless PyGObject and the Gtk 3 typelib are installed (checked in a child: no gi in pytest)."""
    if importlib.util.find_spec("gi") is None:
        pytest.skip('PyGObject is not installed (pip install "PyGObject<3.51"): the tray uses xorg')
    probe = subprocess.run(
        [sys.executable, "-c", "import gi; gi.require_version('Gtk', '3.0')"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        pytest.skip(f"no Gtk 3 typelib (apt-get install gir1.2-gtk-3.0): {probe.stderr.strip()[-200:]}")


def poll(probe: Callable[[], T | None], what: str, timeout: float = 15.0) -> T:
    """Call `probe` every POLL_S until it returns something (bounded in count and time)."""
    pause = threading.Event()
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / POLL_S) + 1):
        found = probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            break
        pause.wait(POLL_S)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@dataclass(frozen=True)
class MenuLayout:
    """Screen positions of the tray menu's items, read from a screenshot of the open menu."""

    connect: tuple[int, int]
    disconnect: tuple[int, int]
    quit: tuple[int, int]


def popup_window(xs: XSession, kind: str = "POPUP_MENU") -> tuple[int, int, int, int] | None:
    """(x, y, width, height) of our viewable window of _NET_WM_WINDOW_TYPE_<kind> (a menu, a tooltip)."""
    import Xlib.error
    import Xlib.X

    with x_display(xs.display) as display:
        root = display.screen().root
        window_type = display.intern_atom("_NET_WM_WINDOW_TYPE")
        wanted = display.intern_atom(f"_NET_WM_WINDOW_TYPE_{kind}")
        for child in root.query_tree().children:
            try:
                if child.get_attributes().map_state != Xlib.X.IsViewable:
                    continue
                cls = child.get_wm_class()
                types = child.get_full_property(window_type, Xlib.X.AnyPropertyType)
                if cls and "cortex-agent" in cls and types is not None and wanted in types.value:
                    geometry = child.get_geometry()
                    return (geometry.x, geometry.y, geometry.width, geometry.height)
            except (Xlib.error.BadWindow, Xlib.error.BadDrawable):
                continue  # destroyed since the tree was read (a menu closing): not there any more
        return None


def menu_layout(shot: Image.Image, geometry: tuple[int, int, int, int]) -> MenuLayout | None:
    """Item positions from the menu's three separators, or None while it is not drawn yet.

    The menu is: title | Connect, Disconnect | Open audit log, Open dashboard | Quit. A separator is a
    row of one colour across the menu that is not the menu's background; items in a group share its
    height equally.
    """
    x0, y0, width, height = geometry
    menu = shot.crop((x0, y0, x0 + width, y0 + height))
    background = max(menu.getcolors(width * height) or [(0, None)], key=lambda c: c[0])[1]
    rows: list[int] = []
    for y in range(1, height - 1):  # rows 0 and height-1 are the menu's border
        row = {menu.getpixel((x, y)) for x in range(2, width - 2)}
        if len(row) == 1 and row != {background}:
            rows.append(y)
    separators: list[int] = []
    for y in rows:  # a separator may be more than one pixel thick
        if not separators or y > separators[-1] + 3:
            separators.append(y)
    if len(separators) != 3:
        return None
    first, second, third = separators
    x = x0 + width // 2
    return MenuLayout(
        connect=(x, y0 + first + (second - first) // 4),
        disconnect=(x, y0 + first + 3 * (second - first) // 4),
        quit=(x, y0 + (third + height) // 2),
    )


class TrayMenu:
    """Opens the tray's real menu with a right click and clicks its items by position."""

    def __init__(self, xs: XSession, icon: IconWatcher, shots: Path) -> None:
        self.xs, self.icon, self.shots = xs, icon, shots
        self.opened = 0

    def open(self, button: int = 3) -> MenuLayout:
        self.opened += 1
        path = self.shots / f"menu-{self.opened}.png"
        self.xs.button(*self.icon.centre, button=button)
        geometry = poll(lambda: popup_window(self.xs), "the tray menu to open")

        def drawn() -> MenuLayout | None:
            return menu_layout(self.xs.screenshot(path), geometry)

        return poll(drawn, f"the tray menu at {geometry} to be drawn (screenshot {path})")

    def choose(self, item: Callable[[MenuLayout], tuple[int, int]], button: int = 3) -> None:
        self.xs.button(*item(self.open(button)), button=1)
        poll(lambda: True if popup_window(self.xs) is None else None, "the tray menu to close")


def audit_events(home: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (home / "audit.log").read_text().splitlines()]


def gtk_tray(xs: XSession, tmp_path: Path, name: str, **kwargs: object) -> tuple[ServerProc, Path, TrayProc]:
    server = ServerProc(tmp_path / "server", args=["--heartbeat-interval", "1"]).start()
    home = tmp_path / "home"
    save_credentials(home, Credentials(server.url, name, server.enroll(name)))
    tray = TrayProc(xs, home, server.url, name, backend=None, **kwargs)  # type: ignore[arg-type]
    return server, home, tray


def wait_backend(tray: TrayProc, backend: str) -> None:
    marker = f"tray running ({backend} backend)"
    poll(lambda: True if marker in "".join(tray.output) else None, marker)


def test_gtk_menu_disconnects_reconnects_and_quits(
    gtk_available: None, xsession: XSession, tmp_path: Path
) -> None:
    shots = Path(tempfile.mkdtemp(prefix="cortex-tray-gtk-"))
    print(f"tray screenshots in {shots}")
    server, home, tray = gtk_tray(xsession, tmp_path, "gtknode", launcher=("dbus-run-session", "--"))
    try:
        icon = IconWatcher(xsession, tray, shots)
        icon.wait_colour(GREEN, "1-connected")
        wait_backend(tray, "gtk")  # chosen by the tray itself: PyGObject is installed
        server.wait_status("gtknode", "connected")
        _x, y, w, h = icon.geometry or (0, 0, 0, 0)
        assert w >= 16 and h >= 16 and y < 32  # docked in trayer's panel at the top edge
        xsession.icon_geometry()
        assert xsession.icon_title == f"Cortex node gtknode: connected to {server.url}"
        subprocess.run(["xdotool", "mousemove", *map(str, icon.centre)], env=xsession.env(), timeout=30)
        poll(lambda: popup_window(xsession, "TOOLTIP"), "the icon's tooltip on hover")  # rule 6

        menu = TrayMenu(xsession, icon, shots)
        menu.choose(lambda m: m.disconnect, button=1)  # a left click opens the menu too
        server.wait_status("gtknode", "disconnected")
        icon.wait_colour(GREY, "2-disconnected")
        xsession.icon_geometry()
        assert xsession.icon_title == f"Cortex node gtknode: disconnected from {server.url}"

        menu.choose(lambda m: m.connect)
        server.wait_status("gtknode", "connected")
        icon.wait_colour(GREEN, "3-reconnected")

        menu.choose(lambda m: m.quit)
        assert tray.proc.wait(20) == 0, tray.log()
        server.wait_status("gtknode", "disconnected")
        events = audit_events(home)
        assert [e["event"] for e in events] == [
            "node.connected",
            "node.disconnected",
            "node.connected",
            "node.disconnected",
        ]
        assert events[-1]["code"] == 1000  # Quit closes the tunnel normally
        assert "Traceback" not in tray.log()
    finally:
        tray.close()
        server.stop()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_gtk_tray_needs_no_session_bus_and_quits_on_a_signal(
    gtk_available: None, xsession: XSession, tmp_path: Path, signum: signal.Signals
) -> None:
    """With no session bus (no notifier) gtk still runs; a signal reaches the GLib loop and quits cleanly."""
    shots = Path(tempfile.mkdtemp(prefix="cortex-tray-gtk-"))
    server, home, tray = gtk_tray(xsession, tmp_path, "gtksig", env={"DBUS_SESSION_BUS_ADDRESS": "disabled:"})
    try:
        IconWatcher(xsession, tray, shots).wait_colour(GREEN, "connected")
        wait_backend(tray, "gtk")
        server.wait_status("gtksig", "connected")
        tray.proc.send_signal(signum)
        assert tray.proc.wait(20) == 0, tray.log()
        server.wait_status("gtksig", "disconnected")
        events = audit_events(home)
        assert [e["event"] for e in events] == ["node.connected", "node.disconnected"]
        assert events[-1]["code"] == 1000
        assert "Traceback" not in tray.log()
    finally:
        tray.close()
        server.stop()


def test_tray_falls_back_to_xorg_when_gtk_cannot_start(
    gtk_available: None, xsession: XSession, tmp_path: Path
) -> None:
    """gtk chosen by the tray, but Gtk cannot open a display (GDK_BACKEND=wayland, none here): xorg docks."""
    shots = Path(tempfile.mkdtemp(prefix="cortex-tray-gtk-"))
    server, _home, tray = gtk_tray(xsession, tmp_path, "gtkfall", env={"GDK_BACKEND": "wayland"})
    try:
        IconWatcher(xsession, tray, shots).wait_colour(GREEN, "connected")
        wait_backend(tray, "xorg")
        assert "gtk tray backend unavailable" in "".join(tray.output)
        tray.proc.send_signal(signal.SIGTERM)
        assert tray.proc.wait(20) == 0, tray.log()
    finally:
        tray.close()
        server.stop()
