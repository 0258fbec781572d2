"""The xorg icon driven from other threads on a real X server (Xvfb + trayer): it must never hang.

pystray runs an icon change made in another thread (a new title, a new image) in the icon's own thread,
woken by a client message. It sent that message on the icon's own display connection, which python-xlib
cannot share between threads: a thread flushing while the icon's thread waits for a reply (its
`get_geometry` on an Expose) may return without waking it, and the icon hangs for good. The child below
changes the title from one thread while another floods the docked icon with Expose events; it must run
to its end. Without the icon's own waker connection (desktop_agent.tray_backends) it hung within about
2,000 titles in each of three runs here.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.support.procs import REPO
from tests.test_tray_x11 import TOOLS, XSession, pytestmark, xsession

__all__ = ["TOOLS", "pytestmark", "xsession"]  # the skip mark and the fixture, re-exported for pytest

TITLES, SECONDS = 6_000, 6.0  # title changes the child makes, and the most time it spends making them

CHILD = textwrap.dedent(
    f"""
    import sys, threading, time
    import Xlib.display
    from PIL import Image
    from desktop_agent.tray_backends import icon_class

    icon = icon_class("xorg")("threads", Image.new("RGB", (24, 24), (40, 170, 60)), "start")
    finished = threading.Event()

    def setup(icon):
        icon.visible = True

        def titles():
            deadline = time.monotonic() + {SECONDS}
            made = 0
            while made < {TITLES} and time.monotonic() < deadline:
                icon.title = f"title {{made}}"
                made += 1
            print("titles", made, flush=True)
            finished.set()
            icon.stop()

        def exposes():
            display = Xlib.display.Display()
            window = display.create_resource_object("window", icon._window.id)
            while not finished.wait(0.0005):
                window.clear_area(0, 0, 0, 0, exposures=True)
                display.flush()

        threading.Thread(target=titles, daemon=True).start()
        threading.Thread(target=exposes, daemon=True).start()

    icon.run(setup)
    print("stopped", flush=True)
    """
)


def test_icon_changes_from_other_threads_never_hang_the_icon(xsession: XSession) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        cwd=REPO,
        env=xsession.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = child.communicate(timeout=SECONDS + 20)
    except subprocess.TimeoutExpired:
        child.kill()
        out, err = child.communicate()
        raise AssertionError(f"the icon hung: {out!r}\n{err[-2000:]}") from None
    assert child.returncode == 0, err[-2000:]
    made = int(out.split("titles ")[1].split()[0])
    assert made > 100, out  # the icon's thread kept taking changes (thousands here)
    assert "stopped" in out, out
