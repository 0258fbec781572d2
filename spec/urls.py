"""The one way every command line reads a server address the user typed (`--server`).

Layering: pure string handling in `spec`, imported by `desktop_agent` and `sdk` so that the agent and the
`cortex` command accept exactly the same spellings. No I/O.

Rules:
1. `host:port`, `host` and `//host:port` get `http://` (a scheme-less address is what people type).
2. `ws://` / `wss://` are accepted and read as `http://` / `https://` (the HTTP base serves both).
3. Anything else with a scheme, or without a host, is a `ValueError` naming what was typed.
4. A trailing slash is dropped, so `base + "/path"` never doubles it.
5. `ws_url` is the one derivation of a WebSocket URL from a server base: `http` → `ws`, `https` → `wss`
   (`ws`/`wss` kept), then the endpoint path.
"""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["normalize_server_url", "ws_url"]

_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}


def normalize_server_url(text: str) -> str:
    """`127.0.0.1:8765` → `http://127.0.0.1:8765`; see the module rules."""
    raw = text.strip()
    if not raw:
        raise ValueError("the server address is empty")
    if "://" not in raw:
        raw = "http://" + raw.removeprefix("//")
    parts = urlsplit(raw)
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        raise ValueError(f"{text!r} is not a server address (use http://HOST:PORT or https://HOST:PORT)")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{text!r} has a bad port (use HOST:PORT, e.g. 127.0.0.1:8765)") from None
    if not parts.hostname:
        raise ValueError(f"{text!r} has no host (use HOST:PORT, e.g. 127.0.0.1:8765)")
    del port
    rest = raw.split("://", 1)[1]
    return f"{scheme}://{rest}".rstrip("/")


_WS_SCHEMES = (("https://", "wss://"), ("http://", "ws://"))


def ws_url(base: str, path: str) -> str:
    """`http://h:1` + `/api/v1/rpc` → `ws://h:1/api/v1/rpc`; see rule 5."""
    base = base.rstrip("/")
    for http, ws in _WS_SCHEMES:
        if base.startswith(http):
            return ws + base[len(http) :] + path
    return base + path
