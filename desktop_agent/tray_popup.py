"""The tray's menu on a bare X11 tray (pystray's xorg backend, which has no menu): a small Tk window.

Layering: a leaf beside `desktop_agent.tray`; `MenuWindow` is handed the `TrayController` and calls only
its thread-safe actions (connect, disconnect, open_audit_log, open_dashboard, quit). Tk is imported only
when a menu is first opened, so nothing changes for the gtk backend or headless tests.

Rules:
1. Tk lives on a thread of its own, created there and touched only there (Tk is not thread-safe); the
   X event thread of the icon only asks for the window to open or close.
2. One window at a time: a click while it is open closes it (a menu's habit), as does Escape, a click
   on an item, or "Close".
3. The window's first line is the full status (the tooltip text), so a tray without tooltips still says
   what state the node is in and what to run.
4. Every item logs its screen geometry at DEBUG, so a test can click it with a real X button press.
5. While calls wait for approval, the oldest is shown under the status line with Allow once / Allow this
   caller for N minutes / Deny (desktop_agent.tray rule 7); the others follow when it is answered.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["MenuWindow"]

logger = logging.getLogger(__name__)

WINDOW_TITLE = "Cortex node menu"


class MenuWindow:
    def __init__(self, controller: Any) -> None:
        self.controller = controller
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._root: Any = None

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._thread is not None and self._thread.is_alive()

    def toggle(self, x: int, y: int) -> None:
        """Open the window near (x, y) on the screen, or close it when it is open (rule 2)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                root = self._root
                if root is not None:
                    root.after(0, root.destroy)  # Tk's own thread-safe hand-over for a running loop
                return
            self._thread = threading.Thread(target=self._run, args=(x, y), name="tray-menu", daemon=True)
            self._thread.start()

    def close(self) -> None:
        with self._lock:
            root, thread = self._root, self._thread
        if root is not None:
            try:
                root.after(0, root.destroy)
            except RuntimeError:  # its loop already ended
                pass
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)

    def _run(self, x: int, y: int) -> None:
        import tkinter as tk

        try:
            root = tk.Tk(className="cortex-agent-menu")
        except tk.TclError as exc:
            logger.warning("cannot open the menu window: %s", exc)
            return
        with self._lock:
            self._root = root
        try:
            self._build(root, tk, x, y)
            root.mainloop()
        finally:
            with self._lock:
                self._root = None

    def _build(self, root: Any, tk: Any, x: int, y: int) -> None:
        view = self.controller.view
        root.title(WINDOW_TITLE)
        root.overrideredirect(True)  # a menu, not a window to manage
        root.configure(background="#202124", highlightthickness=1, highlightbackground="#5f6368")
        root.bind("<Escape>", lambda _e: root.destroy())
        tk.Label(
            root,
            text=view.title,
            wraplength=300,
            justify="left",
            anchor="w",
            background="#202124",
            foreground="#e8eaed",
            padx=10,
            pady=8,
        ).pack(fill="x")

        items: list[tuple[str, Callable[[], None], bool]] = []
        for approval_id, _summary in view.approvals[:1]:  # rule 5
            answer = functools.partial(self.controller.answer, approval_id)
            minutes = self.controller.allow_minutes
            items += [
                ("Allow once", functools.partial(answer, "once"), True),
                (f"Allow this caller for {minutes} minutes", functools.partial(answer, "caller"), True),
                ("Deny", functools.partial(answer, "deny"), True),
            ]
        items += [
            ("Connect", self.controller.connect, view.can_connect),
            ("Disconnect", self.controller.disconnect, view.can_disconnect),
            ("Open audit log", self.controller.open_audit_log, True),
            ("Open dashboard", self.controller.open_dashboard, True),
            ("Quit", self.controller.quit, True),
            ("Close", lambda: None, True),
        ]
        buttons: list[tuple[str, Any]] = []
        for text, action, enabled in items:

            def run(action: Callable[[], None] = action) -> None:
                root.destroy()
                try:
                    action()
                except Exception:  # a failing action must not kill the tray
                    logger.exception("tray menu action failed")

            button = tk.Button(
                root,
                text=text,
                command=run,
                state="normal" if enabled else "disabled",
                anchor="w",
                relief="flat",
                background="#202124",
                foreground="#e8eaed",
                activebackground="#3c4043",
                activeforeground="#ffffff",
                disabledforeground="#80868b",
                highlightthickness=0,
                padx=10,
                pady=4,
            )
            button.pack(fill="x")
            buttons.append((text, button))
        root.update_idletasks()
        width, height = root.winfo_reqwidth(), root.winfo_reqheight()
        screen_w, screen_h = root.winfo_screenwidth(), root.winfo_screenheight()
        left = max(0, min(x - width // 2, screen_w - width))
        top = y + 16 if y + 16 + height <= screen_h else max(0, y - 16 - height)
        root.geometry(f"+{left}+{top}")
        root.update_idletasks()
        root.update()
        logger.info("menu window open at %d,%d (%dx%d)", left, top, width, height)
        for text, button in buttons:
            logger.debug(
                "menu item %r at %d,%d %dx%d",
                text,
                button.winfo_rootx(),
                button.winfo_rooty(),
                button.winfo_width(),
                button.winfo_height(),
            )


class Tooltip:
    """The hover tooltip for the xorg icon (pystray's xorg icon has none): the status line near the pointer.

    Same threading rule as `MenuWindow` (rule 1): its Tk lives on a thread of its own. `show` after
    the pointer entered the icon, `hide` when it left or a menu opens.
    """

    def __init__(
        self, controller: Any, delay_ms: int = 400, suppressed: Callable[[], bool] = lambda: False
    ) -> None:
        self.controller = controller
        self.delay_ms = delay_ms
        self.suppressed = suppressed  # e.g. "the menu window is open": never cover it
        self._wanted = False
        self._lock = threading.Lock()
        self._root: Any = None
        self._thread: threading.Thread | None = None

    def show(self, x: int, y: int) -> None:
        """After the delay, unless hidden meanwhile: no Tk is created for a pointer that only passes by."""
        with self._lock:
            self._wanted = True
            if self._thread is not None and self._thread.is_alive():
                return
            timer = threading.Timer(self.delay_ms / 1000, self._run, args=(x, y))
            timer.name, timer.daemon = "tray-tooltip", True
            self._thread = timer
            timer.start()

    def hide(self) -> None:
        with self._lock:
            self._wanted = False  # also cancels a tooltip still waiting for its delay
            root, thread = self._root, self._thread
        if isinstance(thread, threading.Timer):
            thread.cancel()
        if root is not None:
            try:
                root.after(0, root.destroy)
            except RuntimeError:
                pass

    def _run(self, x: int, y: int) -> None:
        import tkinter as tk

        with self._lock:
            if not self._wanted or self.suppressed():
                return
        try:
            root = tk.Tk(className="cortex-agent-tooltip")
        except tk.TclError as exc:
            logger.warning("cannot show the tooltip: %s", exc)
            return
        with self._lock:
            self._root = root
        try:
            root.withdraw()
            root.overrideredirect(True)
            text = self.controller.view.title
            tk.Label(
                root,
                text=text,
                wraplength=320,
                justify="left",
                background="#ffffe1",
                foreground="#000000",
                relief="solid",
                borderwidth=1,
                padx=6,
                pady=3,
            ).pack()

            def appear() -> None:
                with self._lock:
                    wanted = self._wanted
                if not wanted or self.suppressed():
                    root.destroy()
                    return
                root.update_idletasks()
                width, height = root.winfo_reqwidth(), root.winfo_reqheight()
                left = max(0, min(x - width // 2, root.winfo_screenwidth() - width))
                top = y + 20 if y + 20 + height <= root.winfo_screenheight() else max(0, y - 20 - height)
                root.geometry(f"+{left}+{top}")
                root.deiconify()
                logger.info("tooltip shown: %s", text)

            root.after(0, appear)
            root.mainloop()
        finally:
            with self._lock:
                self._root = None
