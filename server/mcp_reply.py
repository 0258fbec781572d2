"""One JSON body, not an SSE event, for `/mcp` requests whose answer may be large (`resources/read`).

Layering: an ASGI wrapper between `server/mcp.py`'s authentication and the `mcp` session manager. The
session manager answers every request POST with an SSE stream; official clients cap one SSE event
(the Python client at 1 MiB), so an artifact larger than that — the very thing `resources/read` exists
to fetch — could not arrive. Streamable HTTP lets a server answer any request POST with either
`application/json` or `text/event-stream`, so for these methods the SSE answer is collected here and sent
as the JSON-RPC response alone, which clients read whole.

Rules:
1. Only a POST whose body is one JSON-RPC request for a method in `JSON_REPLY_METHODS` is touched; every
   other request (and every non-SSE answer: errors, 202, 404 of an unknown session) passes through as it is.
2. At most the app's body limit is read ahead; a larger body goes to the app as it arrives (it answers 413).
3. The session manager still does all the validation (session id, protocol-version headers, Accept,
   credential binding); this wrapper changes only the framing of the answer.
4. The answer is the SSE event carrying the response with the request's id; notifications before it
   are dropped (none are sent for these methods). If the stream ends without one, what was buffered is
   sent unchanged.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["JSON_REPLY_METHODS", "serve_with_json_reply"]

JSON_REPLY_METHODS = frozenset({"resources/read"})
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_SKIP_HEADERS = frozenset({b"content-type", b"content-length", b"transfer-encoding"})


def _declared_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _read_body(receive: Receive, limit: int) -> tuple[bytes | None, list[Message]]:
    """The whole body, or None (with what was read) once it is over `limit` or not a plain body."""
    chunks: list[bytes] = []
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return None, messages
        chunk = message.get("body", b"")
        size += len(chunk)
        chunks.append(chunk)
        if size > limit:
            return None, messages
        if not message.get("more_body", False):
            return b"".join(chunks), messages


def _json_reply_id(body: bytes) -> tuple[bool, Any]:
    """(True, id) when the body is one request for a JSON-reply method."""
    if not any(m.encode() in body for m in JSON_REPLY_METHODS):
        return False, None  # the cheap test: most POSTs stop here
    try:
        message = json.loads(body)
    except ValueError:
        return False, None
    if (
        isinstance(message, dict)
        and message.get("method") in JSON_REPLY_METHODS
        and isinstance(message.get("id"), str | int)
        and not isinstance(message.get("id"), bool)
    ):
        return True, message["id"]
    return False, None


def _response_in(event: bytes, request_id: Any) -> bytes | None:
    data = b"\n".join(
        line[5:].removeprefix(b" ") for line in re.split(rb"\r\n|\n|\r", event) if line.startswith(b"data:")
    )
    if not data:
        return None
    try:
        message = json.loads(data)
    except ValueError:
        return None
    if (
        isinstance(message, dict)
        and message.get("id") == request_id
        and ("result" in message or "error" in message)
    ):
        return data
    return None


class _Collector:
    """Wraps `send`: passes non-SSE answers through, turns an SSE answer into its one response."""

    def __init__(self, send: Send, request_id: Any) -> None:
        self.send = send
        self.request_id = request_id
        self.start: Message | None = None
        self.sse = False
        self.done = False
        self.buffer = b""
        self.scanned = 0
        self.raw: list[bytes] = []

    async def __call__(self, message: Message) -> None:
        if self.done:
            return  # the answer is out; the rest of the stream has nowhere to go
        if message["type"] == "http.response.start":
            headers = dict(message.get("headers", []))
            self.sse = headers.get(b"content-type", b"").startswith(b"text/event-stream")
            if not self.sse:
                await self.send(message)
            self.start = message
            return
        if message["type"] != "http.response.body" or not self.sse:
            await self.send(message)
            return
        chunk = message.get("body", b"")
        self.raw.append(chunk)
        self.buffer += chunk
        while (match := _EVENT_END.search(self.buffer, self.scanned)) is not None:
            event, self.buffer, self.scanned = self.buffer[: match.start()], self.buffer[match.end() :], 0
            response = _response_in(event, self.request_id)
            if response is not None:
                await self._reply(response)
                return
        self.scanned = max(0, len(self.buffer) - 3)
        if not message.get("more_body", False):
            await self._passthrough()

    async def _reply(self, body: bytes) -> None:
        assert self.start is not None
        headers = [(k, v) for k, v in self.start.get("headers", []) if k.lower() not in _SKIP_HEADERS]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        self.done = True
        await self.send({"type": "http.response.start", "status": self.start["status"], "headers": headers})
        await self.send({"type": "http.response.body", "body": body, "more_body": False})

    async def _passthrough(self) -> None:
        assert self.start is not None
        self.done = True
        await self.send(self.start)
        await self.send({"type": "http.response.body", "body": b"".join(self.raw), "more_body": False})


async def serve_with_json_reply(
    app: ASGIApp,
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    max_body: int,
    json_answer: Callable[[Scope, bytes], AbstractContextManager[Any] | None] | None = None,
) -> None:
    """Run `app` for this request, answering JSON-reply methods with one JSON body (see module rules).

    At most `max_body` bytes are read ahead (the app's own body limit): a larger body, declared or sent,
    is handed to the app as it comes, which refuses it (413) without this wrapper holding it.
    *json_answer*, given the scope and the whole body, may return a context in which the app itself answers
    in JSON (`server/mcp_json_answer.py`); the app runs inside it."""
    declared = _declared_length(scope)
    if scope["type"] != "http" or scope.get("method") != "POST" or (declared or 0) > max_body:
        await app(scope, receive, send)
        return
    body, messages = await _read_body(receive, max_body)
    replay = list(messages)

    async def replayed() -> Message:
        if replay:
            return replay.pop(0)
        return await receive()

    wanted, request_id = _json_reply_id(body) if body is not None else (False, None)
    chosen = json_answer(scope, body) if json_answer is not None and body is not None and not wanted else None
    with chosen if chosen is not None else contextlib.nullcontext():
        await app(scope, replayed, _Collector(send, request_id) if wanted else send)
