"""The sans-I/O JSON-RPC 2.0 peer core shared by every side of every Cortex link.

Feed it received text with `receive`, get events back; ask it for text to send with `request`, `notify`,
`respond`. It owns id allocation and the table of our pending requests, nothing else: no sockets, no
event loop, no clock (the model is h11's `Connection` and websockets' `protocol.py`). Outgoing requests
are built with jsonrpcclient and responses parsed with it, so wire shapes are the library's.

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
"""

from __future__ import annotations

import json
from typing import Any

from jsonrpcclient import Error, Ok, notification, parse, request

from spec import json_limits
from spec.errors import INVALID_REQUEST, PARSE_ERROR, RpcError
from spec.messages import (
    Event,
    IncomingNotification,
    IncomingRequest,
    IncomingResponse,
    JsonId,
    ProtocolViolation,
    Reply,
)

__all__ = ["Peer", "dumps"]


# One encoder for every frame, built once: `json.dumps` with non-default options builds a new encoder
# per call. Same output as `json.dumps(m, separators=(",", ":"), ensure_ascii=False)`; frames are decoded
# JSON, never cyclic, so the cycle check is left out.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, check_circular=False)


def dumps(message: dict[str, Any]) -> str:
    """The one serialisation every frame uses: compact, UTF-8 kept as is."""
    return _ENCODER.encode(message)


def _error_text(id_: JsonId | None, code: int, message: str) -> str:
    return dumps({"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": id_})


def _valid_id(value: Any) -> bool:
    return (isinstance(value, str) or isinstance(value, int)) and not isinstance(value, bool)


class Peer:
    """One end of a JSON-RPC link."""

    def __init__(self) -> None:
        self._next_id = 1
        self._pending: dict[JsonId, str] = {}

    @property
    def pending(self) -> int:
        """How many of our requests await an answer."""
        return len(self._pending)

    def request(self, method: str, params: dict[str, Any] | None = None) -> tuple[int, str]:
        """Allocate an id for a new request; returns (id, text to send)."""
        id_ = self._next_id
        self._next_id += 1
        self._pending[id_] = method
        return id_, dumps(request(method, params, id=id_))

    def forget(self, id_: JsonId) -> None:
        """Stop waiting for an answer (we cancelled or timed out locally); a late answer is ignored."""
        self._pending.pop(id_, None)

    def notify(self, method: str, params: dict[str, Any] | None = None) -> str:
        return dumps(notification(method, params))

    def respond(self, id_: JsonId, result: Any) -> str:
        return dumps({"jsonrpc": "2.0", "result": result, "id": id_})

    def respond_error(self, id_: JsonId | None, error: dict[str, Any]) -> str:
        return dumps({"jsonrpc": "2.0", "error": error, "id": id_})

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
                return IncomingNotification(method, params)
            if id_ is None:
                return Reply(_error_text(None, INVALID_REQUEST, "id must be a string or an integer"))
            return IncomingRequest(id_, method, params, msg)
        if ("result" in msg) == ("error" in msg):
            return self._invalid(msg, id_, "a response has exactly one of result or error")
        if id_ is None or id_ not in self._pending:
            return ProtocolViolation(f"response to unknown id {raw_id!r}")
        if "error" in msg and not (
            isinstance(msg["error"], dict)
            and isinstance(msg["error"].get("code"), int)
            and isinstance(msg["error"].get("message"), str)
        ):
            self._pending.pop(id_)
            return IncomingResponse(id_, "", error=RpcError(INVALID_REQUEST, "malformed error object"))
        method = self._pending.pop(id_)
        parsed = parse(msg)
        if isinstance(parsed, Error):
            return IncomingResponse(id_, method, error=RpcError(parsed.code, parsed.message, parsed.data))
        assert isinstance(parsed, Ok)
        return IncomingResponse(id_, method, result=parsed.result)

    def _invalid(self, msg: dict[str, Any], id_: JsonId | None, why: str) -> Event:
        if "method" not in msg and ("result" in msg or "error" in msg):
            # A broken response must not be answered (that could ping-pong forever).
            return ProtocolViolation(f"invalid response: {why}")
        return Reply(_error_text(id_, INVALID_REQUEST, f"invalid request: {why}"))
