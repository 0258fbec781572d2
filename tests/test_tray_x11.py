"""The tray agent on a real X server: Xvfb + trayer as the tray host + `cortex-agent tray` as a child process.

Everything is real: the icon docks in trayer through the XEMBED system-tray protocol, its colour is read
from screenshots of the virtual screen (`import -window root`), clicks are real X button presses
(`xdotool`), and the node it drives is connected to a real `cortex-server serve` child. The screen has
no event to wait on, so colour checks poll screenshots, bounded in count and time. Screenshots are kept
as artifacts in a temporary directory whose path is printed.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from desktop_agent.credentials import Credentials, save_credentials
from desktop_agent.tray_view import AMBER, GREEN, GREY
from tests.support.procs import REPO, ServerProc
from tests.support.xdisplay import x_display

TOOLS = ("Xvfb", "trayer", "xdotool", "import")
pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None for t in TOOLS),
    reason=f"needs {', '.join(TOOLS)} (apt-get install xvfb trayer xdotool imagemagick)",
)

Colour = tuple[int, int, int]


class XSession:
    """Xvfb on a display number it picks itself (-displayfd), and trayer owning the system-tray selection."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.display = ""
        self.log = tempfile.TemporaryFile()
        self.icon_title = ""  # the icon window's name (pystray's xorg tooltip), read with its geometry

    def start(self) -> XSession:
        read_fd, write_fd = os.pipe()
        xvfb = subprocess.Popen(
            ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
            pass_fds=(write_fd,),
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        self.procs.append(xvfb)
        os.close(write_fd)
        # Xvfb writes "N" then "\n" (two writes) once it accepts clients, and dies if the pipe is closed
        # between them: read up to the newline.
        received = b""
        deadline = time.monotonic() + 15
        try:
            while not received.endswith(b"\n") and len(received) < 32:
                ready, _, _ = select.select([read_fd], [], [], max(0.0, deadline - time.monotonic()))
                chunk = os.read(read_fd, 32) if ready else b""
                if not chunk:
                    break
                received += chunk
        finally:
            os.close(read_fd)
        number = received.decode().strip() if received.endswith(b"\n") else ""
        if not number:
            raise RuntimeError(f"Xvfb did not start: {self.output()}")
        self.display = f":{number}"
        try:
            self._start_tray_host()
        except Exception as exc:
            raise RuntimeError(f"no tray host on {self.display}: {exc}\n{self.output()}") from exc
        return self

    def _start_tray_host(self) -> None:
        import Xlib.X

        with x_display(self.display) as display:
            root = display.screen().root
            root.change_attributes(event_mask=Xlib.X.StructureNotifyMask)
            selection = display.intern_atom("_NET_SYSTEM_TRAY_S0")
            display.sync()
            trayer = subprocess.Popen(
                [
                    "trayer",
                    "--edge",
                    "top",
                    "--align",
                    "right",
                    "--widthtype",
                    "request",
                    "--height",
                    "32",
                    "--transparent",
                    "false",
                    "--tint",
                    "0x202020",
                    "--SetDockType",
                    "true",
                ],
                env=self.env(),
                stdout=self.log,
                stderr=self.log,
            )
            self.procs.append(trayer)
            # The tray manager announces itself with a MANAGER client message on the root window.
            deadline = time.monotonic() + 15
            while display.get_selection_owner(selection) == Xlib.X.NONE:
                left = deadline - time.monotonic()
                ready, _, _ = select.select([display.fileno()], [], [], max(0.0, left))
                if not ready:
                    raise RuntimeError("trayer did not take the system-tray selection")
                for _ in range(display.pending_events()):
                    display.next_event()  # MANAGER (or unrelated structure events): check the owner again

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-2000:]

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CORTEX_")}
        env.update(DISPLAY=self.display, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", **extra)
        return env

    def icon_geometry(self, wm_class: str = "cortex-agent") -> tuple[int, int, int, int] | None:
        """(x, y, width, height) on the screen of our icon once it is docked (reparented), else None."""
        with x_display(self.display) as display:
            root = display.screen().root
            stack = [root]
            while stack:
                window = stack.pop()
                for child in window.query_tree().children:
                    stack.append(child)
                    cls = child.get_wm_class()
                    if cls and wm_class in cls and child.query_tree().parent != root:
                        geometry = child.get_geometry()
                        at = child.translate_coords(root, 0, 0)
                        self.icon_title = str(child.get_wm_name() or "")
                        return (-at.x, -at.y, geometry.width, geometry.height)
            return None

    def screenshot(self, path: Path) -> Image.Image:
        subprocess.run(["import", "-window", "root", str(path)], env=self.env(), check=True, timeout=30)
        with Image.open(path) as image:
            return image.convert("RGB")

    def click(self, x: int, y: int) -> None:
        self.button(x, y, button=1)

    def button(self, x: int, y: int, button: int) -> None:
        """Move the pointer to (x, y) and press and release `button` (1 left, 3 right)."""
        subprocess.run(
            ["xdotool", "mousemove", str(x), str(y), "click", str(button)],
            env=self.env(),
            check=True,
            timeout=30,
        )

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        self.log.close()


@pytest.fixture
def xsession() -> Iterator[XSession]:
    session = XSession()
    try:
        yield session.start()
    finally:
        session.close()


class TrayProc:
    """`cortex-agent tray` as a child process on the virtual display.

    xorg backend by default, for determinism; `backend=None` lets the tray choose, `launcher` prefixes
    the command (e.g. `dbus-run-session --`).
    """

    def __init__(
        self,
        xs: XSession,
        home: Path,
        server: str,
        name: str,
        *,
        backend: str | None = "xorg",
        launcher: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.output: list[str] = []
        child_env = xs.env(**(env or {}))
        child_env.pop("PYSTRAY_BACKEND", None)
        if backend is not None:
            child_env["PYSTRAY_BACKEND"] = backend
        self.proc = subprocess.Popen(
            [
                *launcher,
                sys.executable,
                "-m",
                "desktop_agent.cli",
                "tray",
                "--home",
                str(home),
                "--server",
                server,
                "--name",
                name,
            ],
            env=child_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO,
            start_new_session=True,
        )
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    def log(self) -> str:
        return "".join(self.output[-40:])

    def menus_opened(self) -> int:
        return sum("menu window open at" in line for line in list(self.output))

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own group: a launcher's child goes too
            self.proc.wait(10)
        self._pump.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def wait_log(tray: TrayProc, text: str, timeout: float = 20.0) -> bool:
    pause = threading.Event()
    for _ in range(int(timeout / 0.1)):
        if any(text in line for line in list(tray.output)):
            return True
        pause.wait(0.1)
    return False


def wait_menu_item(tray: TrayProc, text: str, after: int, timeout: float = 20.0) -> tuple[int, int]:
    """The centre of menu item `text` in the menu window opened after the first `after` ones (its log)."""
    pause = threading.Event()
    for _ in range(int(timeout / 0.1)):
        lines = list(tray.output)
        opened = [i for i, line in enumerate(lines) if "menu window open at" in line]
        if len(opened) > after:
            for line in lines[opened[after] :]:
                marker = f"menu item {text!r} at "
                if marker in line:
                    at, size = line.split(marker, 1)[1].split()
                    x, y = (int(v) for v in at.split(","))
                    w, h = (int(v) for v in size.split("x"))
                    return x + w // 2, y + h // 2
        pause.wait(0.1)
    raise AssertionError(f"no menu item {text!r} shown:\n{tray.log()}")


def nearest(colour: Colour) -> Colour | None:
    """Which icon colour a pixel is (tolerant of resampling), or None for anything else."""
    for candidate in (GREEN, AMBER, GREY):
        if all(abs(a - b) <= 12 for a, b in zip(colour, candidate, strict=True)):
            return candidate
    return None


def _thread_stacks(pid: int) -> str:
    """Every thread's stack in process `pid` (py-spy, when installed): what a tray that stopped
    drawing was doing, for a failure seen once in a while in full runs and never alone."""
    spy = shutil.which("py-spy")
    if spy is None:
        return ""
    try:
        done = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"\n(py-spy dump failed: {exc})"
    return "\nthreads of the tray:\n" + done.stdout + done.stderr


class IconWatcher:
    def __init__(self, xs: XSession, tray: TrayProc, shots: Path) -> None:
        self.xs, self.tray, self.shots = xs, tray, shots
        self.geometry: tuple[int, int, int, int] | None = None

    @property
    def centre(self) -> tuple[int, int]:
        assert self.geometry is not None
        x, y, w, h = self.geometry
        return x + w // 2, y + h // 2

    def wait_colour(self, expected: Colour, step: str, timeout: float = 30.0) -> Path:
        """Re-take a screenshot every ~0.3 s until the icon's centre shows `expected` (bounded)."""
        path = self.shots / f"{step}.png"
        pause = threading.Event()
        seen: Any = None
        for _ in range(int(timeout / 0.3) + 1):
            if self.tray.proc.poll() is not None:
                break
            # Re-read every time: a tray may embed the icon at a transient size (gtk: 1 px wide) first.
            self.geometry = self.xs.icon_geometry() or self.geometry
            if self.geometry is not None:
                seen = self.xs.screenshot(path).getpixel(self.centre)
                if nearest(tuple(seen)) == expected:
                    return path
            pause.wait(0.3)
        raise AssertionError(
            f"{step}: icon at {self.geometry} shows {seen}, expected {expected} (screenshot {path})\n"
            + self.tray.log()
            + _thread_stacks(self.tray.proc.pid)
        )


def test_tray_icon_docks_toggles_and_follows_the_server(xsession: XSession, tmp_path: Path) -> None:
    shots = Path(tempfile.mkdtemp(prefix="cortex-tray-x11-"))
    print(f"tray screenshots in {shots}")
    server = ServerProc(tmp_path / "server", args=["--heartbeat-interval", "1"]).start()
    home = tmp_path / "home"
    save_credentials(home, Credentials(server.url, "traynode", server.enroll("traynode")))
    tray = TrayProc(xsession, home, server.url, "traynode", env={"CORTEX_LOG_LEVEL": "debug"})
    try:
        icon = IconWatcher(xsession, tray, shots)
        icon.wait_colour(GREEN, "1-connected")
        server.wait_status("traynode", "connected")
        _x, y, w, h = icon.geometry or (0, 0, 0, 0)
        assert w >= 16 and h >= 16 and y < 32  # docked in trayer's panel at the top edge
        xsession.icon_geometry()
        assert xsession.icon_title == f"Cortex node traynode: connected to {server.url}"

        # Hovering shows the status as a tooltip (pystray's xorg icon has none of its own).
        subprocess.run(["xdotool", "mousemove", str(icon.centre[0]), str(icon.centre[1])],
                       env=xsession.env(), check=True, timeout=30)  # fmt: skip
        assert wait_log(tray, f"tooltip shown: Cortex node traynode: connected to {server.url}")
        xsession.screenshot(shots / "1a-tooltip.png")

        # A click opens the menu window (status line + actions); nothing changes until an item is chosen.
        xsession.click(*icon.centre)
        disconnect = wait_menu_item(tray, "Disconnect", after=0)
        xsession.screenshot(shots / "2a-menu-open.png")
        assert server.node("traynode")["status"] == "connected"
        xsession.click(*disconnect)
        server.wait_status("traynode", "disconnected")
        icon.wait_colour(GREY, "2-disconnected")
        xsession.icon_geometry()
        assert "disconnected from" in xsession.icon_title

        opened = tray.menus_opened()
        xsession.button(*icon.centre, button=3)  # a right click opens it too: connect again
        xsession.click(*wait_menu_item(tray, "Connect", after=opened))
        server.wait_status("traynode", "connected")
        icon.wait_colour(GREEN, "3-reconnected")

        server.kill()
        icon.wait_colour(AMBER, "4-server-down")
        server.start()
        icon.wait_colour(GREEN, "5-server-back")
        server.wait_status("traynode", "connected")

        tray.proc.send_signal(signal.SIGTERM)  # what Quit does: stop the agent, close the tunnel cleanly
        assert tray.proc.wait(20) == 0, tray.log()
        server.wait_status("traynode", "disconnected")
        records = [json.loads(line) for line in (home / "audit.log").read_text().splitlines()]
        assert [r["event"] for r in records][-2:] == ["node.connected", "node.disconnected"]
        assert records[-1]["code"] == 1000  # a normal close, not a dropped link
    finally:
        tray.close()
        server.stop()
