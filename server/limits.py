"""Server limits in one place: request bodies, JSON shape, handshake deadlines, connection count, logs.

Where it sits: around everything else. `BodyLimits` is the outermost ASGI middleware of the app
(`server.app.build_app`); `protocol_classes` gives the uvicorn HTTP and WebSocket protocols that
`server.cli` hands to uvicorn; `AcceptErrorLog` is the event loop's exception handler for failed
`accept()`s; `EscapingFormatter` formats every server log line. Rules:

1. A request body over its limit (`/oauth/token` 64 KiB, every other path the frame limit) gets 413 and
   a closed connection before it is read whole: a `Content-Length` over the limit is refused before a
   byte of the body is read, and a chunked or under-declared body is counted as it arrives. All the
   bodies held at once (read and not yet answered) share a budget, the frame limit by default: a body
   that would exceed it gets 503 `overloaded` with Retry-After, so parallel large bodies cannot add
   up to more memory than one largest body.
2. A body that is not JSON, or nests deeper than `spec.json_limits.MAX_DEPTH`, gets 400
   ``{"error": "invalid_request", "message"}`` (`server.http_errors`) on every endpoint but `/oauth/token`; on
   `/mcp` the same 400 carries a JSON-RPC -32700/-32600 error object, the shape MCP clients read.
3. A connection must complete its HTTP request (headers and body) within the handshake timeout,
   counted from the connection, or for a keep-alive connection from the first byte of the next request;
   a WebSocket must complete its upgrade (the app accepted or refused it) within the same time.
   Otherwise the server closes it. uvicorn 0.54 has no such deadline of its own: a socket that sends
   nothing, or half a header, is held forever.
4. Past `max_connections` live connections (HTTP and WebSocket together) a new connection gets a bare
   503 and is closed at once; connections already open are untouched. The listen backlog is
   `accept_backlog` (256): asyncio accepts up to that many connections in one turn of the event loop,
   each a task, so uvicorn's 2,048 let a connection flood hold the loop (and every link) for seconds.
5. A failing `accept()` (EMFILE and the like) is logged at most once per interval, without traceback,
   with the count of the ones left unlogged; asyncio retries accepting by itself.
6. Log lines carry input from nodes and callers: control characters (CR, LF, ESC, ...) in a record's
   message are escaped, so no input can forge a log line or drive a terminal.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from server.http_errors import error_bytes
from server.ws_protocol import QueuedReadWebSocketProtocol
from spec import json_limits

__all__ = [
    "AcceptErrorLog",
    "BodyLimits",
    "EscapingFormatter",
    "Limits",
    "cap_node_info",
    "escape_control",
    "protocol_classes",
    "raise_fd_limit",
]

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TOKEN_PATH = "/oauth/token"
MCP_PATH = "/mcp"


@dataclass(frozen=True)
class Limits:
    """What one `serve` process allows (the CLI's flags, the contract's defaults)."""

    frame_bytes: int = 16 * 1024 * 1024
    token_body_bytes: int = 64 * 1024
    handshake_timeout: float = 10.0
    max_connections: int = 10_000
    accept_log_interval: float = 10.0
    body_budget_bytes: int | None = None  # None: the frame limit (rule 1)
    accept_backlog: int = 256  # rule 4: the listen backlog, also the most connections accepted per loop turn

    def body_limit(self, path: str) -> int:
        return self.token_body_bytes if path == TOKEN_PATH else self.frame_bytes

    @property
    def body_budget(self) -> int:
        return self.body_budget_bytes if self.body_budget_bytes is not None else self.frame_bytes


# -- rule 6: escaped log lines ---------------------------------------------------------------------------
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]}
_CONTROL.update({0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"})
_CONTROL.update({c: f"\\u{c:04x}" for c in (0x85, 0x2028, 0x2029)})  # line breaks to str.splitlines


def escape_control(text: str) -> str:
    """`text` with every control character written as an escape (one line, nothing for a terminal)."""
    return text.translate(_CONTROL)


class EscapingFormatter(logging.Formatter):
    """A formatter whose message part never holds a control character; tracebacks keep their lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_control(record.message)
        return super().formatMessage(record)


# -- node info ---------------------------------------------------------------------------------------------
INFO_MAX_KEYS = 16
INFO_MAX_KEY = 64
INFO_MAX_VALUE = 256


def cap_node_info(info: Any) -> dict[str, Any]:
    """A node's self-description, bounded before it is copied into every listing and SSE event.

    At most `INFO_MAX_KEYS` entries with string keys; strings cut to `INFO_MAX_VALUE` characters;
    numbers, booleans and null kept; nested values dropped.
    """
    if not isinstance(info, dict):
        return {}
    capped: dict[str, Any] = {}
    for key, value in info.items():
        if len(capped) >= INFO_MAX_KEYS:
            break
        if not isinstance(key, str) or len(key) > INFO_MAX_KEY:
            continue
        if isinstance(value, str):
            capped[key] = value[:INFO_MAX_VALUE]
        elif value is None or isinstance(value, bool | int | float):
            capped[key] = value
    return capped


# -- rules 1 and 2: bodies -----------------------------------------------------------------------------
class _TooLarge(Exception):
    pass


class _OverBudget(Exception):
    pass


_BUSY = error_bytes("overloaded", "too many large request bodies in flight, retry later")


class BodyLimits:
    """ASGI middleware: rules 1 and 2 for every HTTP request; other scopes pass through."""

    def __init__(self, app: ASGIApp, limits: Limits) -> None:
        self.app = app
        self.limits = limits
        self.held = 0  # bytes of bodies read and not yet answered, across all requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        limit = self.limits.body_limit(path)
        declared: int | None = None
        chunked = False
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
            elif name == b"transfer-encoding":
                chunked = True
        if declared is not None and declared > limit:
            await _too_large(send, limit)
            return
        if not chunked and not declared:
            await self.app(scope, receive, send)  # no body: nothing to hold or check
            return
        reserved = [0]
        try:
            try:
                body = await self._read_body(receive, limit, reserved)
            except _TooLarge:
                await _too_large(send, limit)
                return
            except _OverBudget:
                await _respond(send, 503, _BUSY, close=True, retry_after=True)
                return
            if body is None:
                return  # the client went away
            if body and path != TOKEN_PATH:
                problem = _json_problem(body)
                if problem is not None:
                    await _invalid_json(send, path, *problem)
                    return
            await self.app(scope, _replay(body, receive), send)
        finally:
            self.held -= reserved[0]

    async def _read_body(self, receive: Receive, limit: int, reserved: list[int]) -> bytes | None:
        """The whole body, reserving its bytes in the shared budget as they arrive (`reserved[0]`)."""
        chunks: list[bytes] = []
        budget = self.limits.body_budget
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            if reserved[0] + len(chunk) > limit:
                raise _TooLarge
            if self.held + len(chunk) > budget:
                raise _OverBudget
            self.held += len(chunk)
            reserved[0] += len(chunk)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _json_problem(body: bytes) -> tuple[int, str] | None:
    """(JSON-RPC code, message) when `body` is no acceptable JSON, else None."""
    try:
        json_limits.loads(body)
    except json_limits.JsonDepthError:
        return -32600, f"the body nests deeper than {json_limits.MAX_DEPTH}"
    except json_limits.JsonSyntaxError:
        return -32700, "the body is not valid JSON"
    return None


async def _respond(
    send: Send, status: int, payload: bytes, *, close: bool = False, retry_after: bool = False
) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if retry_after:
        headers.append((b"retry-after", b"1"))
    if close:
        headers.append((b"connection", b"close"))  # h11 then closes instead of reading the rest
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def _too_large(send: Send, limit: int) -> None:
    payload = error_bytes("request_too_large", f"the body is larger than {limit} bytes")
    await _respond(send, 413, payload, close=True)


async def _invalid_json(send: Send, path: str, code: int, message: str) -> None:
    if path == MCP_PATH:
        text = f'{{"jsonrpc":"2.0","id":null,"error":{{"code":{code},"message":"{message}"}}}}'
        await _respond(send, 400, text.encode())
    else:
        await _respond(send, 400, error_bytes("invalid_request", message))


# -- rules 3 and 4: connections ------------------------------------------------------------------------
_REQUEST_DONE = frozenset({h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR, h11.SWITCHED_PROTOCOL})
_REFUSAL = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class _RefusalLog:
    """Rate-limited warning for connections refused by rule 4 (one line per interval)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.refused = 0
        self._last = -float("inf")
        self._unlogged = 0

    def note(self) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self._last < self.interval:
            self._unlogged += 1
            return
        logger.warning("connection limit reached: refusing new connections (%d more)", self._unlogged)
        self._last, self._unlogged = now, 0


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with rules 3 (request deadline) and 4 (connection count)."""

    limits = Limits()
    refusals = _RefusalLog(10.0)
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self.refusals.note()
            transport.write(_REFUSAL)
            transport.close()
            return
        self._arm()

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(self.limits.handshake_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            logger.debug("closing a connection that did not complete its request in time")
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self.conn.their_state not in _REQUEST_DONE:
            self._arm()  # the first byte of a new request on a kept-alive connection
        super().data_received(data)
        if self._deadline is not None and self.conn.their_state in _REQUEST_DONE:
            self._disarm()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._disarm()  # the WebSocket protocol keeps its own deadline
        super().handle_websocket_upgrade(event)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


class LimitedWebSocketProtocol(QueuedReadWebSocketProtocol):
    """The server's WebSocket protocol with rule 3: the upgrade completes within the deadline."""

    limits = Limits()
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._deadline = self.loop.call_later(self.limits.handshake_timeout, self._expired)

    def _expired(self) -> None:
        self._deadline = None
        if not self.handshake_complete and not self.transport.is_closing():
            logger.debug("closing a WebSocket that did not complete its handshake in time")
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().connection_lost(exc)


def protocol_classes(limits: Limits) -> tuple[type[LimitedH11Protocol], type[LimitedWebSocketProtocol]]:
    """The (http, ws) protocol classes for uvicorn, bound to `limits` (fresh classes per call)."""
    refusals = _RefusalLog(limits.accept_log_interval)
    http = type("CortexH11Protocol", (LimitedH11Protocol,), {"limits": limits, "refusals": refusals})
    ws = type("CortexWebSocketProtocol", (LimitedWebSocketProtocol,), {"limits": limits})
    return http, ws


# -- rule 5: accept errors -------------------------------------------------------------------------------
class AcceptErrorLog:
    """An event-loop exception handler that rate-limits asyncio's accept-failure reports."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.failures = 0
        self._last = -float("inf")
        self._unlogged = 0
        self._previous: Any = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        self._previous = loop.get_exception_handler()
        loop.set_exception_handler(self._handle)

    def _handle(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and "accept" in str(context.get("message", "")):
            self.failures += 1
            now = time.monotonic()
            if now - self._last < self.interval:
                self._unlogged += 1
                return
            logger.error("accept() failed: %s (%d more since the last report)", exc, self._unlogged)
            self._last, self._unlogged = now, 0
            return
        if self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's open-file soft limit towards `wanted` (at most the hard limit); the new soft."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError):
            return soft
    return soft
