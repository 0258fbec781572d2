"""`cortex-agent tray`: the system-tray desktop agent.

Layering: pystray (the tray icon, main thread) → `TrayController` (this module: state → icon mapping and
menu actions, no pystray import of its own; what the icon shows is desktop_agent.tray_view, the
pystray backends desktop_agent.tray_backends) → `NodeAgent` (desktop_agent.connection, the same core as
`cortex-agent run`, built by desktop_agent.assembly, on its own asyncio loop in a second thread) →
`ToolEngine`. This module never imports desktop_agent.cli (the command line dispatches here).

Rules:
1. The agent's loop never waits for the GUI: its status listener only records the newest status and
   wakes the painter thread, which applies it to the icon (some pystray backends block until their own
   loop has drawn).
2. The GUI never waits for the agent: menu actions hand commands over with `NodeAgent.submit`.
3. Quit stops the agent (the tunnel closes normally, the audit log records `node.disconnected`); the
   agent thread stops the icon once its loop is done, so the process exits after a clean close.
4. "Open audit log" opens the local `<home>/audit.log` (always there, needs no user token), not the
   dashboard's page for the node; "Open dashboard" opens `--dashboard-url` or the server URL.
5. Backend: `PYSTRAY_BACKEND` when set, else gtk (real menus) when PyGObject is installed and a display
   is set, else xorg. When gtk was chosen automatically but cannot be loaded or built (no Gtk typelib,
   Gtk cannot open the display), the tray falls back to xorg. pystray's xorg icon ignores clicks (its
   window never selects ButtonPress, pystray issue #151) and has no menu: `_clickable_xorg_icon` adds
   the mask, and a left or right click opens a small menu window (desktop_agent.tray_popup) with the
   status line and every action, rather than toggling the connection. A change made from another
   thread (title, image, stop) wakes the icon's thread over a display connection of its own: python-xlib
   cannot share the icon's connection between threads (an icon could hang for good).
6. gtk (`_gtk_status_icon`, a Gtk.StatusIcon docked over XEMBED): a left or a right click opens the
   menu (a left click never changes the connection by itself). pystray's D-Bus notifier is not used
   (the tray shows no notifications but rule 7's): it needs a session bus to start and raises
   GLib.Error on stop without a notification daemon. pystray would also reset SIGINT to its default
   (a kill without a clean close); our SIGINT/SIGTERM handlers run Quit instead.
7. Approval (desktop_agent.approval): while calls wait for the owner the icon is blue, the tooltip names
   the oldest request (tool, redacted arguments, caller), and the menu offers Allow once / Allow this
   caller for `ALLOW_MINUTES` minutes / Deny for each (up to `MENU_APPROVALS`; the xorg menu window for
   the oldest). A new request also raises a desktop notification where the desktop has one (notify-send
   on a session bus, else pystray's notify), guarded: its failure changes nothing. The answers are
   handed to the agent's loop like every other command (rule 2), audited with ``via`` tray.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import webbrowser
from collections.abc import Callable
from pathlib import Path
from typing import Any

from desktop_agent.approval import PendingApproval, UnknownApproval, local_user
from desktop_agent.assembly import AgentOptions, build_agent, node_identity, settle_collector
from desktop_agent.connection import AgentStatus, NodeAgent
from desktop_agent.tray_backends import choose_backend, icon_class
from desktop_agent.tray_view import LOGIN_HINT, TrayView, icon_for, view_for

__all__ = [
    "ALLOW_MINUTES",
    "TrayController",
    "open_target",
    "start_agent_thread",
    "tray_main",
]

logger = logging.getLogger(__name__)

ALLOW_MINUTES = 15  # "Allow this caller for N minutes" (rule 7)
MENU_APPROVALS = 3  # requests offered in the menu at once; more wait their turn


def open_target(target: str) -> None:
    """Open a URL or file with the desktop's handler, without waiting for it."""
    opener = shutil.which("xdg-open")
    if opener is None:
        webbrowser.open(target if "://" in target else Path(target).resolve().as_uri())
        return
    subprocess.Popen(
        [opener, target],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


class TrayController:
    """State → icon mapping and the menu's actions, independent of any pystray backend.

    `agent` is None when the home holds no credential: the icon then explains how to log in.
    """

    allow_minutes = ALLOW_MINUTES

    def __init__(
        self,
        agent: NodeAgent | None,
        *,
        home: Path,
        name: str,
        dashboard_url: str,
        opener: Callable[[str], None] = open_target,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.agent = agent
        self.home = home
        self.name = name
        self.dashboard_url = dashboard_url
        self._opener = opener
        self._clock = clock
        self._status: AgentStatus | None = agent.status if agent is not None else None
        self._cond = threading.Condition()
        self._dirty = True
        self._closed = False
        self._painted: TrayView | None = None
        self._icon: Any = None
        self._painter: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._quitting = False
        self._approvals: tuple[tuple[str, str], ...] = ()
        self._notified: set[str] = set()

    # -- state -------------------------------------------------------------------------------------
    @property
    def view(self) -> TrayView:
        with self._cond:
            status, approvals = self._status, self._approvals
        return view_for(status, self.name, self._clock(), approvals)

    def on_approvals(self, waiting: list[PendingApproval]) -> None:
        """ApprovalRoom listener (agent's loop thread): record and wake the painter, never block (rule 1)."""
        with self._cond:
            self._approvals = tuple((p.id, p.summary()) for p in waiting)
            self._dirty = True
            self._cond.notify_all()

    def on_status(self, status: AgentStatus) -> None:
        """NodeAgent listener (runs on the agent's loop thread): record and wake the painter, never block."""
        with self._cond:
            self._status = status
            self._dirty = True
            self._cond.notify_all()

    # -- the icon ------------------------------------------------------------------------------------
    def menu(self) -> Any:
        """The pystray menu; texts and enabled-ness are read from the controller each time it is built."""
        import pystray

        item, sep = pystray.MenuItem, pystray.Menu.SEPARATOR
        no_creds = self.agent is None
        return pystray.Menu(
            item(lambda _i: self.view.title, None, enabled=False),
            *(self._approval_item(slot) for slot in range(MENU_APPROVALS)),
            item(f"Not set up: run `{LOGIN_HINT}`", None, enabled=False, visible=no_creds),
            sep,
            item("Toggle connection", self._action(self.toggle), default=True, visible=False),
            item("Connect", self._action(self.connect), enabled=lambda _i: self.view.can_connect),
            item("Disconnect", self._action(self.disconnect), enabled=lambda _i: self.view.can_disconnect),
            sep,
            item("Open audit log", self._action(self.open_audit_log)),
            item("Open dashboard", self._action(self.open_dashboard)),
            sep,
            item("Quit", self._action(self.quit)),
        )

    def _approval_item(self, slot: int) -> Any:
        """Menu slot `slot`: the slot-th waiting request with its three answers (rule 7)."""
        import pystray

        item = pystray.MenuItem

        def approval_id() -> str | None:
            approvals = self.view.approvals
            return approvals[slot][0] if slot < len(approvals) else None

        def label(_i: Any) -> str:
            approvals = self.view.approvals
            return f"Approve? {approvals[slot][1]}" if slot < len(approvals) else ""

        def answer(kind: str) -> Callable[[], None]:
            def run() -> None:
                target = approval_id()
                if target is not None:
                    self.answer(target, kind)

            return run

        return item(
            label,
            pystray.Menu(
                item("Allow once", self._action(answer("once"))),
                item(f"Allow this caller for {ALLOW_MINUTES} minutes", self._action(answer("caller"))),
                item("Deny", self._action(answer("deny"))),
            ),
            visible=lambda _i: approval_id() is not None,
        )

    def answer(self, approval_id: str, kind: str) -> None:
        """The owner's answer from the tray: kind is once | caller | deny (handed to the agent's loop)."""
        if self.agent is None:
            return
        room = self.agent.engine.approvals
        user = local_user()

        def command() -> None:
            try:
                room.answer(
                    approval_id,
                    approve=kind != "deny",
                    approver=user,
                    via="tray",
                    minutes=ALLOW_MINUTES if kind == "caller" else None,
                )
            except UnknownApproval:
                logger.info("approval %s was already answered, timed out or withdrawn", approval_id)

        self._submit(command)

    def _notify_new(self, icon: Any, view: TrayView) -> None:
        """Rule 7: one desktop notification per new request, where the desktop has a notifier."""
        new = [(i, text) for i, text in view.approvals if i not in self._notified]
        self._notified = {i for i, _ in view.approvals}
        for _i, text in new:
            message = f"{text}. Allow or deny it in the Cortex tray menu, or: cortex-agent approvals"
            try:
                notifier = shutil.which("notify-send")
                if notifier and os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
                    subprocess.Popen(
                        [notifier, "--app-name=cortex-agent", "Cortex: approval needed", message],
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                else:
                    icon.notify(message, "Cortex: approval needed")
            except Exception:  # no notifier on this desktop: the icon and menu still say it
                logger.debug("no desktop notification shown", exc_info=True)

    @staticmethod
    def _action(command: Callable[[], None]) -> Callable[[Any, Any], None]:
        def run(_icon: Any, _item: Any) -> None:
            try:
                command()
            except Exception:  # a failing action must not kill the GUI loop
                logger.exception("tray action failed")

        return run

    def start_painting(self, icon: Any) -> None:
        """Called once the icon runs: show it and keep it in step with the agent from now on."""
        self._icon = icon
        self._paint(icon, self.view)
        icon.visible = True
        self._painter = threading.Thread(target=self._paint_loop, name="tray-painter", daemon=True)
        self._painter.start()

    def _paint(self, icon: Any, view: TrayView) -> None:
        icon.title = view.title  # before the image: whoever sees the new colour also sees the new tooltip
        icon.icon = icon_for(view)
        icon.update_menu()
        if view.approvals or self._notified:
            self._notify_new(icon, view)
        with self._cond:
            self._painted = view
            self._cond.notify_all()

    def _paint_loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._dirty or self._closed)
                if self._closed:
                    return
                self._dirty = False
            try:
                self._paint(self._icon, self.view)
            except Exception:
                logger.exception("could not update the tray icon")

    def wait_painted(self, predicate: Callable[[TrayView], bool], timeout: float) -> TrayView:
        """Block until the icon shows a view satisfying `predicate` (bounded by `timeout`)."""
        with self._cond:
            ok = self._cond.wait_for(lambda: self._painted is not None and predicate(self._painted), timeout)
            if not ok or self._painted is None:
                raise TimeoutError(f"tray icon still shows {self._painted} after {timeout} s")
            return self._painted

    def close(self, stop_icon: bool = True) -> None:
        """Stop painting, then (optionally) stop the icon's loop. Safe from any thread, idempotent."""
        with self._cond:
            already, self._closed = self._closed, True
            self._cond.notify_all()
        painter = self._painter
        if painter is not None and painter is not threading.current_thread():
            painter.join(5)
        if stop_icon and not already and self._icon is not None:
            try:
                self._icon.stop()
            except Exception:  # gtk: stopping may raise a GLib notifications error (RECIPES)
                logger.debug("icon.stop() raised", exc_info=True)

    # -- actions (GUI thread) -----------------------------------------------------------------------------
    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """The agent's loop is running (called on it): commands can be handed over from now on."""
        with self._cond:
            self._loop = loop
            quitting = self._quitting
        if quitting and self.agent is not None:
            self.agent.stop()

    def _submit(self, command: Callable[[], None]) -> bool:
        """Run `command` on the agent's loop (thread-safe, never blocks); False when it is not running."""
        with self._cond:
            loop = self._loop
        if loop is None or loop.is_closed():
            return False
        loop.call_soon_threadsafe(command)
        return True

    def connect(self) -> None:
        if self.agent is not None:
            self._submit(self.agent.connect)

    def disconnect(self) -> None:
        if self.agent is not None:
            self._submit(self.agent.disconnect)

    def toggle(self) -> None:
        """The default action (a left click): disconnect when that applies, else connect."""
        view = self.view
        if view.can_disconnect:
            self.disconnect()
        elif view.can_connect:
            self.connect()

    def open_audit_log(self) -> None:
        self._opener(str(self.home / "audit.log"))

    def open_dashboard(self) -> None:
        self._opener(self.dashboard_url)

    def quit(self) -> None:
        """Stop the agent cleanly; the agent thread then stops the icon (rule 3)."""
        with self._cond:
            self._quitting = True
        if self.agent is None:
            self.close()
        else:
            self._submit(self.agent.stop)  # not running yet: `bind_loop` stops it at once

    @property
    def quitting(self) -> bool:
        return self._quitting


def _make_icon(backend: str, controller: TrayController) -> Any:
    view = controller.view
    icon = icon_class(backend)("cortex-agent", icon_for(view), view.title, controller.menu())
    if backend == "xorg":
        from desktop_agent.tray_popup import MenuWindow, Tooltip

        menu_window = MenuWindow(controller)
        icon.menu_window = menu_window  # a click opens it (rule 5)
        icon.tooltip = Tooltip(controller, suppressed=lambda: menu_window.is_open)  # the status on hover
    return icon


def _build_icon(backend: str, forced: bool, controller: TrayController) -> tuple[str, Any]:
    """(backend, icon): gtk falls back to xorg when it was not asked for and fails to load or build."""
    try:
        return backend, _make_icon(backend, controller)
    except Exception as exc:
        if forced or backend != "gtk":
            raise
        logger.warning("gtk tray backend unavailable (%s: %s); using xorg", type(exc).__name__, exc)
    return "xorg", _make_icon("xorg", controller)


def _quit_on_signals(quit_tray: Callable[[], None]) -> None:
    """SIGINT/SIGTERM → Quit (a clean close), whichever backend runs the main thread.

    Under gtk, PyGObject wakes its GLib loop to run Python signal handlers, and with a SIGINT handler of
    our own it leaves out its fallback (quit the loop, then raise KeyboardInterrupt).
    """
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _signo, _frame: quit_tray())


# -- the command ---------------------------------------------------------------------------------------
def _autostart(args: argparse.Namespace, home: Path) -> int:
    from desktop_agent.autostart import disable_autostart, enable_autostart

    if args.autostart == "on":
        extra: list[str] = []
        for flag, value in (
            ("--server", args.server),
            ("--name", args.name),
            ("--dashboard-url", args.dashboard_url),
        ):
            if value:
                extra += [flag, value]
        path = enable_autostart(home, extra)
        print(f"autostart entry written: {path}")
    else:
        removed = disable_autostart()
        print("autostart entry removed" if removed else "no autostart entry to remove")
    return 0


def start_agent_thread(engine: Any, agent: NodeAgent, controller: TrayController) -> threading.Thread:
    """Run the agent (engine.start → agent.run → engine.aclose) on its own loop in a new thread.

    When the agent is done (Quit), the thread closes the controller, which stops the icon.
    """

    async def main() -> None:
        controller.bind_loop(asyncio.get_running_loop())
        await engine.start()
        settle_collector()  # assembly rule 4
        try:
            await agent.run()
        finally:
            await engine.aclose()

    def body() -> None:
        try:
            asyncio.run(main())
        except Exception:
            logger.exception("the agent stopped with an error")
        finally:
            controller.close()

    agent.add_listener(controller.on_status)
    agent.engine.approvals.on_change(controller.on_approvals)
    thread = threading.Thread(target=body, name="cortex-agent-loop", daemon=True)
    thread.start()
    return thread


def tray_main(args: argparse.Namespace, home: Path) -> int:
    """`cortex-agent tray`: run the agent with a tray icon until Quit (or SIGTERM/SIGINT)."""
    if args.autostart:
        return _autostart(args, home)
    backend = choose_backend()
    options = AgentOptions.from_args(args)
    built = build_agent(options, home)
    agent: NodeAgent | None = None
    engine: Any = None
    if built is not None:
        engine, agent = built
        server, name = agent.settings.server, agent.settings.name
    else:
        server, name = node_identity(home, options)
        print(f"no node credential in {home}: run `{LOGIN_HINT}`", file=sys.stderr)
    controller = TrayController(
        agent, home=home, name=name, dashboard_url=args.dashboard_url or server.rstrip("/") + "/"
    )
    try:
        backend, icon = _build_icon(backend, bool(os.environ.get("PYSTRAY_BACKEND")), controller)
    except Exception as exc:  # no display, no tray library: say so instead of a traceback
        print(f"cannot show a tray icon ({backend} backend): {exc}", file=sys.stderr)
        return 1
    _quit_on_signals(controller.quit)

    agent_thread = start_agent_thread(engine, agent, controller) if agent is not None else None
    logger.info("tray running (%s backend) for node %s at %s", backend, name or "?", server)
    failed = False
    try:
        icon.run(setup=controller.start_painting)
    except Exception:  # still close the tunnel cleanly below
        logger.exception("the tray icon (%s backend) failed", backend)
        failed = True
    controller.close(stop_icon=False)
    if agent_thread is not None:
        controller.quit()  # a no-op after Quit; stops the agent cleanly if the icon went away first
        agent_thread.join(15)
    return 1 if failed else 0
