"""HAProxy configuration for replicas behind one address, rendered from ``server/templates/haproxy.cfg``.

Where it sits: used by the `make cluster` runner (`server.cluster_demo`) and the tests' HAProxy fixture;
the product's request path never imports it. The README's "Several replicas" section shows the same
config for real machines.

Rules:

1. ``mode http`` everywhere: HAProxy recognises the WebSocket upgrade by itself; the upgraded connection
   is then bounded by ``timeout tunnel`` (1 h), not by the request timeouts.
2. Health checks ask ``GET /healthz`` (no token, no store): a replica failing two checks is taken out.
3. MCP sessions are sticky (``sticky_mcp``, the default): a replica keeps each streamable-HTTP session in
   its own memory, so every request that carries an ``Mcp-Session-Id`` goes to the replica whose response
   set that id (a stick table keyed by the header). Without it, round-robin sends the second request of a
   session to another replica, which answers 404 (measured: `tests/test_mcp_haproxy.py`). When the
   session's replica is down the request is redispatched; that replica answers 404 and the client opens
   a new session, as MCP asks.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from string import Template

__all__ = ["Backend", "render_config"]

_STICKY_MCP = """\
    # MCP sessions live in the replica that opened them: the Mcp-Session-Id a replica answers with is
    # stored, and every later request carrying it goes back to that replica.
    stick-table type string len 128 size 200k expire 1h
    stick store-response res.hdr(mcp-session-id)
    stick match req.hdr(mcp-session-id)
"""


@dataclass(frozen=True)
class Backend:
    """One replica: a name for HAProxy's logs and the loopback (or LAN) address it listens on."""

    name: str
    host: str
    port: int


def render_config(
    port: int,
    backends: list[Backend],
    *,
    pidfile: str,
    host: str = "127.0.0.1",
    balance: str = "roundrobin",
    sticky_mcp: bool = True,
    check_interval: str = "1s",
    maxconn: int = 20_000,
) -> str:
    """The config text for one frontend on ``host:port`` in front of `backends` (rules 1-3)."""
    if balance not in ("roundrobin", "leastconn", "source"):
        raise ValueError(f"unsupported balance {balance!r}")
    template = Template(resources.files("server").joinpath("templates/haproxy.cfg").read_text("utf-8"))
    servers = "".join(f"    server {b.name} {b.host}:{b.port}\n" for b in backends)
    return template.substitute(
        maxconn=maxconn,
        pidfile=pidfile,
        bind=f"{host}:{port}",
        balance=balance,
        check_interval=check_interval,
        stickiness=_STICKY_MCP if sticky_mcp else "",
        servers=servers,
    )
