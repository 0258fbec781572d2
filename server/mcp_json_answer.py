"""One JSON body from the `mcp` SDK itself for a handshake-era `tools/call` whose answer cannot stream.

Layering: between `server/mcp_reply.py` (which reads each `/mcp` POST body ahead and asks
`JsonAnswerSessionManager.json_answer_for`) and the `mcp` package's session manager, which `server/mcp.py`
builds from here. It changes only how a request POST of an established handshake-era session is framed,
never what is answered.

Why: the SDK frames every request POST of a session the same way, chosen once for the whole manager
(``json_response``): an SSE stream (the default), or one JSON body, which can carry nothing but the response.
SSE is needed where an answer streams — progress of a call given a progress token, `subscriptions/listen`,
a server-to-client request — but for an ordinary call it costs the SDK an SSE response with its own task
group, a writer task and two memory streams: ~1.7x the server CPU per call of a JSON answer (plain SDK
server here: ~1,550 vs ~900 µs), and more client CPU to parse it (`bench/mcp_bench.py` prints both).
Streamable HTTP lets the server pick either framing for each request POST.

Rules:
1. A request POST is answered as one JSON body only when all hold: its body is one JSON-RPC request for
   `tools/call` with an id; its params carry no progress token (``_meta.progressToken``, or the
   ``progress_token`` spelling the SDK also reads); it names a session (``Mcp-Session-Id``), so it reaches
   an established session's transport; its ``Accept`` admits both JSON and SSE (so a client the SSE
   framing would refuse with 406 is still refused). Everything else is framed as before.
2. The choice is per request: a context variable of this manager, set for that request's task only and
   read by the session's transport through `PerRequestJsonFlag` (its ``is_json_response_enabled``).
   Concurrent requests of one session each get their own framing; the session's own tasks (started by
   `initialize`, which is never chosen) see SSE, so notifications related to other requests stream.
3. Such a call sends nothing before its response: `server/mcp.py` reports progress only for a call that
   gave a progress token, and sends the client no requests (the SDK refuses them on a JSON answer:
   ``can_send_request`` is false). A cancelled call is still answered (the SDK's REQUEST_CANCELLED).
4. A manager built with ``json_response=True`` answers everything in JSON as the SDK does; the
   2026-07-28 era (no session) is the SDK's own path, which already answers JSON when nothing streamed.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import Any, cast

from mcp.server.auth.middleware.bearer_auth import AuthorizationContext
from mcp.server.streamable_http import StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.types import Scope

from spec.protocol import Method

__all__ = ["JsonAnswerSessionManager", "PerRequestJsonFlag", "fits_json_answer"]

_PROGRESS_KEYS = ("progressToken", "progress_token")


class PerRequestJsonFlag:
    """A transport's ``is_json_response_enabled``: true only inside a request chosen for JSON (rule 2).

    The SDK reads that attribute only for its truth value (``if``/``not``), so this object stands in for
    the bool and answers for the request whose task is asking.
    """

    __slots__ = ("_chosen",)

    def __init__(self, chosen: ContextVar[bool]) -> None:
        self._chosen = chosen

    def __bool__(self) -> bool:
        return self._chosen.get()

    def __repr__(self) -> str:
        return f"PerRequestJsonFlag({self._chosen.get()})"


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value)
    return None


def _accepts_both(accept: bytes) -> bool:
    # The SDK's own reading of Accept (wildcards included), so both framings refuse the same clients.
    types = {part.split(b";")[0].strip().lower() for part in accept.split(b",")}
    wildcard = b"*/*" in types
    has_json = wildcard or b"application/json" in types or b"application/*" in types
    has_sse = wildcard or b"text/event-stream" in types or b"text/*" in types
    return has_json and has_sse


def fits_json_answer(scope: Scope, body: bytes) -> bool:
    """True when this POST may be answered as one JSON body (rule 1)."""
    if b"tools/call" not in body:
        return False  # the cheap test; an escaped method name just keeps the SSE framing
    if not _header(scope, b"mcp-session-id"):
        return False
    accept = _header(scope, b"accept")
    if accept is None or not _accepts_both(accept):
        return False
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):
        return False
    if not isinstance(message, dict) or message.get("method") != Method.TOOLS_CALL:  # MCP's name is ours
        return False
    request_id = message.get("id")
    if not isinstance(request_id, str | int) or isinstance(request_id, bool):
        return False
    params = message.get("params")
    if params is None:
        return True
    if not isinstance(params, dict):
        return False
    meta = params.get("_meta")
    if meta is None:
        return True
    return isinstance(meta, dict) and not any(key in meta for key in _PROGRESS_KEYS)


class JsonAnswerSessionManager(StreamableHTTPSessionManager):
    """The SDK's session manager whose handshake-era sessions can answer one request in JSON (rule 2)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._json_chosen: ContextVar[bool] = ContextVar(f"cortex_mcp_json_answer_{id(self)}", default=False)

    def _admit_session(self, requestor: AuthorizationContext | None) -> StreamableHTTPServerTransport | None:
        transport = super()._admit_session(requestor)
        if transport is not None and not self.json_response:
            # The SDK types the attribute as bool; the flag is read only for its truth value (see the class).
            transport.is_json_response_enabled = cast(bool, PerRequestJsonFlag(self._json_chosen))
        return transport

    def json_answer_for(self, scope: Scope, body: bytes) -> AbstractContextManager[None] | None:
        """The context in which this POST (its whole *body*) is answered in JSON; None keeps SSE (rule 1)."""
        if self.json_response or not fits_json_answer(scope, body):
            return None
        return self._answering_in_json()

    @contextlib.contextmanager
    def _answering_in_json(self) -> Iterator[None]:
        token = self._json_chosen.set(True)
        try:
            yield
        finally:
            self._json_chosen.reset(token)
