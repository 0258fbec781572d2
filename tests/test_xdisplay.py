"""tests/support/xdisplay.py: a failed X connect leaves no socket open (python-xlib leaks it itself)."""

from __future__ import annotations

import gc
import warnings

import pytest

from tests.support import xdisplay

NO_SUCH_DISPLAY = ":4987"  # no /tmp/.X11-unix/X4987 and nothing on TCP 10987: both attempts fail


def _resource_warnings(body: object) -> list[str]:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert callable(body)
        body()
        gc.collect()
    return [str(w.message) for w in seen if issubclass(w.category, ResourceWarning)]


def test_python_xlib_alone_leaks_the_socket_of_a_failed_connect() -> None:
    # The control: what the helper is for (if python-xlib fixes it, this fails and the helper can go).
    import Xlib.display
    import Xlib.error

    def connect() -> None:
        with pytest.raises(Xlib.error.DisplayError):
            Xlib.display.Display(NO_SUCH_DISPLAY)

    assert any("unclosed <socket.socket" in m for m in _resource_warnings(connect))


def test_x_display_leaves_nothing_open_when_the_connect_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(xdisplay, "RETRY_PAUSE_S", 0.0)

    def connect() -> None:
        with pytest.raises(ConnectionError), xdisplay.x_display(NO_SUCH_DISPLAY):
            pass

    assert _resource_warnings(connect) == []
