"""The sans-I/O JSON-RPC 2.0 peer core shared by every side of every Cortex link.

Feed it received text with `receive`, get events back; ask it for text to send with `request`, `notify`,
`respond`, `cancel`, `progress`. It owns ALL the state of one link: id allocation, our pending requests,
the progress tokens we handed out (token → request), the other side's requests in flight here (the
incoming table, with the per-link `max_incoming` limit), cancellation both ways and `_meta`. No sockets,
no event loop, no clock (the model is h11's `Connection` and websockets' `protocol.py`): the asyncio
dispatcher on top (`spec.session`) keeps only futures and tasks. Outgoing requests are built with
jsonrpcclient and responses parsed with it, so wire shapes are the library's.

Rules:
1. One message per frame. A batch (JSON array) is answered with -32600: the protocol has no batches
   (as MCP since 2025-06-18).
2. A frame that is not JSON gets a -32700 reply with id null, one nesting deeper than
   `spec.json_limits.MAX_DEPTH` a -32600 reply with id null; the link stays up either way.
3. A frame that is JSON but no valid request, notification or response gets -32600, with the request's
   id when one can be read.
4. A response whose id matches no pending request of ours is a `ProtocolViolation`, never an exception:
   it happens legitimately when we cancelled or timed out a request locally.
5. Ids we allocate are integers counting up from 1, per peer.
6. `request(..., progress=True)` puts a fresh `_meta.progressToken` (``<name>-p<n>``) into a copy of the
   params; `notifications/progress` carrying it becomes `IncomingProgress` for that request until the
   request is answered, cancelled or forgotten. Progress for any other token is a `ProtocolViolation`.
7. `cancel(id)` forgets a pending request and gives the `notifications/cancelled {requestId, reason}`
   to send; nothing when the answer already came (or the link is closed). A late answer is rule 4.
8. An incoming request is in flight from its `IncomingRequest` until `respond`/`respond_error`/`finish`
   for its id. Its `_meta` is stripped from the params and handed over as `IncomingRequest.meta`;
   `progress(id, ...)` gives its `notifications/progress` while it is in flight and the other side
   asked for progress, nothing otherwise. `notifications/cancelled` for it becomes `IncomingCancel`
   (for anything else: a `ProtocolViolation`).
9. With `max_incoming`, a request arriving while that many are in flight is answered -32012 (overloaded)
   at once, and one reusing an id still in flight -32600: the other side cannot grow our tables (nor
   the tasks an adapter runs for them) without bound.
10. After `close()` nothing is pending or in flight; `request` raises `RpcError(CANCELLED)`.
"""

from __future__ import annotations

from typing import Any

from jsonrpcclient import Error, Ok, notification, parse, request

from spec import json_limits
from spec.errors import CANCELLED, INVALID_REQUEST, OVERLOADED, PARSE_ERROR, RpcError
from spec.json_text import wire
from spec.messages import (
    Event,
    IncomingCancel,
    IncomingNotification,
    IncomingProgress,
    IncomingRequest,
    IncomingResponse,
    JsonId,
    ProtocolViolation,
    Reply,
)

__all__ = ["Peer", "dumps"]


def dumps(message: dict[str, Any]) -> str:
    """The one serialisation every frame uses: compact, UTF-8 kept as is (`spec.json_text.wire`)."""
    return wire(message)


def _error_text(id_: JsonId | None, code: int, message: str) -> str:
    return dumps({"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": id_})


def _valid_id(value: Any) -> bool:
    return (isinstance(value, str) or isinstance(value, int)) and not isinstance(value, bool)


_CANCELLED = "notifications/cancelled"
_PROGRESS = "notifications/progress"


def _token(meta: Any) -> JsonId | None:
    token = meta.get("progressToken") if isinstance(meta, dict) else None
    return token if _valid_id(token) else None


class Peer:
    """One end of a JSON-RPC link; see the module's rules."""

    def __init__(self, name: str = "link", *, max_incoming: int | None = None) -> None:
        self.name = name
        self.max_incoming = max_incoming
        self._next_id = 1
        self._pending: dict[JsonId, str] = {}  # our request id -> its method
        self._token_of: dict[JsonId, JsonId] = {}  # our request id -> the progress token we gave it
        self._request_of: dict[JsonId, JsonId] = {}  # that token -> our request id (rule 6)
        self._progress_seq = 0
        self._incoming: dict[JsonId, JsonId | None] = {}  # their request id -> its progress token
        self._closed = False

    @property
    def pending(self) -> int:
        """How many of our requests await an answer."""
        return len(self._pending)

    @property
    def in_flight(self) -> int:
        """How many of the other side's requests are being served here (rule 8)."""
        return len(self._incoming)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- ours ---------------------------------------------------------------------------------------
    def request(
        self, method: str, params: dict[str, Any] | None = None, *, progress: bool = False
    ) -> tuple[int, str]:
        """Allocate an id for a new request; returns (id, text to send). Rule 6 for `progress`."""
        if self._closed:
            raise RpcError(CANCELLED, "link closed")
        id_ = self._next_id
        self._next_id += 1
        if progress:
            self._progress_seq += 1
            token = f"{self.name}-p{self._progress_seq}"
            params = dict(params or {})
            meta = params.get("_meta")
            params["_meta"] = {**(meta if isinstance(meta, dict) else {}), "progressToken": token}
            self._token_of[id_] = token
            self._request_of[token] = id_
        self._pending[id_] = method
        return id_, dumps(request(method, params, id=id_))

    def forget(self, id_: JsonId) -> None:
        """Stop waiting for an answer without telling the other side; a late answer is ignored."""
        self._pending.pop(id_, None)
        if self._token_of:
            self._drop_token(id_)

    def _drop_token(self, id_: JsonId) -> None:
        token = self._token_of.pop(id_, None)
        if token is not None:
            self._request_of.pop(token, None)

    def cancel(self, id_: JsonId, reason: str = "cancelled by the caller") -> str | None:
        """Rule 7: the cancel notification to send for a pending request, or None."""
        if self._closed or id_ not in self._pending:
            return None
        self.forget(id_)
        return dumps(notification(_CANCELLED, {"requestId": id_, "reason": reason}))

    def notify(self, method: str, params: dict[str, Any] | None = None) -> str:
        return dumps(notification(method, params))

    # -- theirs -------------------------------------------------------------------------------------
    def respond(self, id_: JsonId, result: Any) -> str:
        """The answer to an incoming request; it is no longer in flight."""
        self._incoming.pop(id_, None)
        return dumps({"jsonrpc": "2.0", "result": result, "id": id_})

    def respond_error(self, id_: JsonId | None, error: dict[str, Any]) -> str:
        if id_ is not None:
            self._incoming.pop(id_, None)
        return dumps({"jsonrpc": "2.0", "error": error, "id": id_})

    def finish(self, id_: JsonId) -> None:
        """An incoming request ends without an answer (it was cancelled, or the link is going)."""
        self._incoming.pop(id_, None)

    def progress(
        self, id_: JsonId, progress: float, total: float | None = None, message: str | None = None
    ) -> str | None:
        """Rule 8: the progress notification for incoming request `id_`, or None when none is wanted."""
        token = self._incoming.get(id_)
        if token is None:
            return None
        params: dict[str, Any] = {"progressToken": token, "progress": progress}
        if total is not None:
            params["total"] = total
        if message is not None:
            params["message"] = message
        return dumps({"jsonrpc": "2.0", "method": _PROGRESS, "params": params})

    # -- lifetime -----------------------------------------------------------------------------------
    def close(self) -> None:
        """Rule 10: the link is gone; every table is emptied."""
        self._closed = True
        self._pending.clear()
        self._token_of.clear()
        self._request_of.clear()
        self._incoming.clear()

    # -- received frames ----------------------------------------------------------------------------
    def receive(self, text: str | bytes) -> list[Event]:
        """Interpret one received frame."""
        try:
            message = json_limits.loads(text)
        except json_limits.JsonDepthError:
            return [Reply(_error_text(None, INVALID_REQUEST, "invalid request: nesting too deep"))]
        except json_limits.JsonSyntaxError:
            return [Reply(_error_text(None, PARSE_ERROR, "parse error: frame is not valid JSON"))]
        if isinstance(message, list):
            return [Reply(_error_text(None, INVALID_REQUEST, "batches are not supported"))]
        if not isinstance(message, dict):
            return [Reply(_error_text(None, INVALID_REQUEST, "a message must be a JSON object"))]
        return [self._classify(message)]

    def _classify(self, msg: dict[str, Any]) -> Event:
        raw_id = msg.get("id")
        id_ = raw_id if _valid_id(raw_id) else None
        if msg.get("jsonrpc") != "2.0":
            return self._invalid(msg, id_, 'missing "jsonrpc": "2.0"')
        if "method" in msg:
            method, params = msg["method"], msg.get("params")
            if not isinstance(method, str) or not method:
                return self._invalid(msg, id_, "method must be a non-empty string")
            if params is not None and not isinstance(params, dict | list):
                return self._invalid(msg, id_, "params must be an object or an array")
            if "id" not in msg:
                if not (params is None or isinstance(params, dict)):
                    return ProtocolViolation(f"notification {method} with non-object params")
                return self._notification(method, params)
            if id_ is None:
                return Reply(_error_text(None, INVALID_REQUEST, "id must be a string or an integer"))
            return self._incoming_request(id_, method, params, msg)
        if ("result" in msg) == ("error" in msg):
            return self._invalid(msg, id_, "a response has exactly one of result or error")
        if id_ is None or id_ not in self._pending:
            return ProtocolViolation(f"response to unknown id {raw_id!r}")
        if "error" in msg and not (
            isinstance(msg["error"], dict)
            and isinstance(msg["error"].get("code"), int)
            and isinstance(msg["error"].get("message"), str)
        ):
            self.forget(id_)
            return IncomingResponse(id_, "", error=RpcError(INVALID_REQUEST, "malformed error object"))
        method = self._pending.pop(id_)
        if self._token_of:
            self._drop_token(id_)
        parsed = parse(msg)
        if isinstance(parsed, Error):
            return IncomingResponse(id_, method, error=RpcError(parsed.code, parsed.message, parsed.data))
        assert isinstance(parsed, Ok)
        return IncomingResponse(id_, method, result=parsed.result)

    def _incoming_request(
        self, id_: JsonId, method: str, params: dict[str, Any] | list[Any] | None, msg: dict[str, Any]
    ) -> Event:
        if self.max_incoming is not None:
            if id_ in self._incoming:
                # Rule 9: a second request under an id in flight would be untracked (and uncancellable).
                return Reply(_error_text(id_, INVALID_REQUEST, "id already in flight"))
            if len(self._incoming) >= self.max_incoming:
                # The other side has too many requests running here already: refuse, do not queue.
                return Reply(_error_text(id_, OVERLOADED, "too many requests in flight"))
        meta: dict[str, Any] = {}
        if isinstance(params, dict) and "_meta" in params:
            raw_meta = params["_meta"]
            if isinstance(raw_meta, dict):
                meta = raw_meta
            params = {k: v for k, v in params.items() if k != "_meta"}
            msg = {**msg, "params": params}
        self._incoming[id_] = _token(meta) if meta else None
        return IncomingRequest(id_, method, params, msg, meta)

    def _notification(self, method: str, params: dict[str, Any] | None) -> Event:
        if method == _PROGRESS:
            token: Any = params.get("progressToken") if params else None
            request_id = self._request_of.get(token) if _valid_id(token) else None
            if request_id is None or params is None:
                return ProtocolViolation("progress for an unknown token")
            return IncomingProgress(request_id, params)
        if method == _CANCELLED:
            target = params.get("requestId") if params else None
            if not _valid_id(target) or target not in self._incoming:
                return ProtocolViolation(f"cancel of a request not in flight: {target!r}")
            reason = params.get("reason") if params else None
            return IncomingCancel(target, reason if isinstance(reason, str) else "cancelled")
        return IncomingNotification(method, params)

    def _invalid(self, msg: dict[str, Any], id_: JsonId | None, why: str) -> Event:
        if "method" not in msg and ("result" in msg or "error" in msg):
            # A broken response must not be answered (that could ping-pong forever).
            return ProtocolViolation(f"invalid response: {why}")
        return Reply(_error_text(id_, INVALID_REQUEST, f"invalid request: {why}"))
