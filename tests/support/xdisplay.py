"""A python-xlib connection for tests that never leaves its socket open.

python-xlib 0.33 leaks its socket in two places (python-xlib PR #291 is still open): a connect that
fails (it creates the socket, `connect` raises, and nothing closes it — the Unix attempt is even
followed by a TCP one) and `Display.close()` on a broken connection (it flushes first, the flush
raises, and the socket is never closed). Either surfaced later, in whichever test the garbage collector
happened to run in, as `ResourceWarning: unclosed <socket.socket ...>` — an error under
`filterwarnings = error`. `x_display` closes what python-xlib leaves open instead of filtering it:
a failed connect's socket is finalised right away (under a filter for exactly that warning, since the
socket object is out of reach), and a close that fails closes the socket itself.
"""

from __future__ import annotations

import gc
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["CONNECT_TRIES", "x_display"]

CONNECT_TRIES = 5  # a busy Xvfb may refuse a connection for a moment
RETRY_PAUSE_S = 0.2


def _connect(name: str) -> Any:
    import Xlib.display
    import Xlib.error

    failure = ""
    for attempt in range(CONNECT_TRIES):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"unclosed <socket\.socket", category=ResourceWarning)
            try:
                return Xlib.display.Display(name)
            except Xlib.error.DisplayError as exc:
                failure = str(exc)  # the traceback (and with it the leaked socket) goes when this block ends
            gc.collect()  # and any cycle that still holds it, while the filter applies
        if attempt + 1 < CONNECT_TRIES:
            threading.Event().wait(RETRY_PAUSE_S)
    raise ConnectionError(f"cannot connect to X display {name}: {failure}")


@contextmanager
def x_display(name: str) -> Iterator[Any]:
    """An `Xlib.display.Display` on `name`, closed (socket included) whatever happens."""
    display = _connect(name)
    try:
        yield display
    finally:
        try:
            display.close()
        except Exception:  # the connection broke: python-xlib's close raised before closing the socket
            display.display.socket.close()
