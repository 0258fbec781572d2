"""The pystray backends of the tray: which one to use, and our fixes to pystray's xorg and gtk icons.

Layering: under desktop_agent.tray (which builds the icon and runs it), above pystray and python-xlib /
PyGObject, each imported only when its backend is chosen. Rules 5 (backend choice, the clickable xorg
icon) and 6 (the gtk status icon without a notifier) of desktop_agent.tray's docstring are implemented here.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import select
import sys
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["XORG_QUEUE_CHECK_S", "choose_backend", "icon_class"]

logger = logging.getLogger(__name__)

XORG_QUEUE_CHECK_S = 0.1


def choose_backend(env: dict[str, str] | None = None) -> str:
    """PYSTRAY_BACKEND if set; gtk when PyGObject is importable and there is a display; else xorg."""
    env = dict(os.environ) if env is None else env
    forced = env.get("PYSTRAY_BACKEND")
    if forced:
        return forced
    if env.get("DISPLAY") and importlib.util.find_spec("gi") is not None:
        return "gtk"
    return "xorg"


def _clickable_xorg_icon(base: type) -> type:
    """pystray's xorg Icon with ButtonPress selected on its window, so clicks reach `_on_button_press`."""
    import Xlib.display
    import Xlib.X

    class ClickableXorgIcon(base):  # type: ignore[misc]
        def _create_window(self) -> Any:
            window = super()._create_window()
            window.change_attributes(
                event_mask=Xlib.X.ExposureMask
                | Xlib.X.StructureNotifyMask
                | Xlib.X.ButtonPressMask
                | Xlib.X.EnterWindowMask
                | Xlib.X.LeaveWindowMask
            )
            return window

        def _rewrite_implementation(self, *methods: Any) -> None:
            # pystray makes `_show`, `_update_icon`, `_update_title`, `_stop`... run in the icon's thread:
            # a caller elsewhere sends a client message on the icon's display, flushes it, and waits. But
            # python-xlib's display is not safe for that: a thread flushing while the icon's thread waits
            # for a reply (`get_geometry` on an Expose) may leave without waking it, and the icon hangs
            # for good (seen as a tray whose icon stays black or grey). So the message goes out on a
            # display connection of its own, used by one caller at a time, and the icon's display is
            # used by the icon's thread alone.
            super()._rewrite_implementation(*methods)
            waker = Xlib.display.Display(self._display.get_display_name())
            self._waker, self._waker_lock = waker, threading.Lock()
            for method in methods:
                atom = self._display.intern_atom(f"_PYSTRAY_{method.__name__.upper()}")  # pystray's own
                setattr(self, method.__name__, self._dispatcher(method, atom))

        def _dispatcher(self, method: Any, atom: int) -> Any:
            def dispatch() -> None:
                thread = getattr(self, "_thread", None)
                if thread is not None and thread.ident == threading.get_ident():
                    method()
                    return
                with self._waker_lock:
                    window = self._waker.create_resource_object("window", self._window.id)
                    message = Xlib.display.event.ClientMessage(
                        window=window, client_type=atom, data=(32, (Xlib.X.CurrentTime, 0, 0, 0, 0))
                    )
                    self._waker.send_event(window, message, event_mask=Xlib.X.NoEventMask)
                    self._waker.flush()
                result = self._queue.get()  # put by pystray's handler once the icon's thread ran `method`
                if result is not True:
                    raise result[1].with_traceback(result[2])

            dispatch.__name__ = method.__name__
            return dispatch

        def __del__(self) -> None:
            try:
                super().__del__()
            finally:
                waker = getattr(self, "_waker", None)  # None when the icon failed before it made one
                if waker is not None:
                    waker.close()

        def _run(self) -> None:
            # pystray sets `_thread` only after releasing the setup thread, which may already be calling
            # methods that dispatch on it.
            self._thread = threading.current_thread()
            super()._run()

        def _events(self) -> Iterator[Any]:
            # Drain what python-xlib has already queued before waiting on the socket (one read may
            # queue several events, which `select` would not see); the short timeout is a safety net.
            display = self._display
            while True:
                while display.pending_events():
                    event = display.next_event()
                    if not self._hover(event):
                        yield event
                select.select([display.fileno()], [], [], XORG_QUEUE_CHECK_S)

        def _hover(self, event: Any) -> bool:
            """Enter/Leave on the icon show and hide our tooltip (xorg has none); True when handled."""
            tooltip = getattr(self, "tooltip", None)
            if event.type == Xlib.X.EnterNotify and tooltip is not None:
                tooltip.show(int(event.root_x), int(event.root_y))
                return True
            if event.type == Xlib.X.LeaveNotify and tooltip is not None:
                tooltip.hide()
                return True
            return False

        def _on_button_press(self, event: Any) -> None:
            # pystray runs the default action (toggle the connection) on a left click; a tray icon's
            # click should offer the actions instead: open our menu window at the pointer (rule 5).
            window = getattr(self, "menu_window", None)
            if window is None:
                super()._on_button_press(event)
            elif event.detail in (1, 3):
                tooltip = getattr(self, "tooltip", None)
                if tooltip is not None:
                    tooltip.hide()
                window.toggle(int(event.root_x), int(event.root_y))

        def _assert_docked(self) -> None:
            # pystray re-sends the dock request on every icon update; once docked, redrawing is enough.
            if self._systray_manager is None:
                super()._assert_docked()

    return ClickableXorgIcon


def _gtk_status_icon(base: type) -> type:
    """pystray's gtk Icon (a Gtk.StatusIcon) without its notifier, with the title as the tooltip (rule 6)."""
    from gi.repository import GLib

    class GtkStatusTrayIcon(base):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._update_title()  # pystray applies only titles changed after construction

        def _on_status_icon_activate(self, status_icon: Any) -> None:
            # A left click opens the same menu as a right click, rather than running the default
            # action (which would disconnect at once, without asking).
            from gi.repository import Gtk

            self._on_status_icon_popup_menu(status_icon, 1, Gtk.get_current_event_time())

        def _initialize(self) -> None:
            # pystray would reset SIGINT to SIG_DFL and open a D-Bus notifier here (rule 6).
            self._mark_ready()

        def _finalize(self) -> None:
            self._remove_fs_icon()

        def _notify(self, message: str, title: str | None = None) -> None:
            logger.info("notification (not shown): %s", message)

        def _remove_notification(self) -> None:
            pass

        def _update_title(self) -> None:
            title = self.title

            def apply() -> bool:
                self._status_icon.set_title(title)
                self._status_icon.set_tooltip_text(title)  # pystray sets only the title, which no tray shows
                return False  # run once

            GLib.idle_add(apply)

    return GtkStatusTrayIcon


def icon_class(backend: str) -> type:
    """The pystray Icon class for `backend` (importing pystray with that backend on first use)."""
    os.environ["PYSTRAY_BACKEND"] = backend  # read by `pystray/__init__` on its first (successful) import
    # The backend's own module: pystray may already be loaded with another backend (a gtk → xorg fallback).
    # Gtk initialises on import and parses sys.argv as its own options (it would take our `--name NODE` as
    # the program's WM_CLASS): let it see only a program name.
    argv, sys.argv = sys.argv, ["cortex-agent"]
    try:
        module = importlib.import_module(f"pystray._{backend}")
    finally:
        sys.argv = argv
    if backend == "xorg":
        return _clickable_xorg_icon(module.Icon)
    if backend == "gtk":
        return _gtk_status_icon(module.Icon)
    return module.Icon  # type: ignore[no-any-return]
