"""JSON-RPC error codes of the Cortex protocol, the exceptions that carry them, and their HTTP form.

This module is the bottom of the layering: every package (server, desktop_agent, sdk) names error codes
through these constants, never through bare numbers. `RpcError` is the exception handlers raise to send
an error object; `error_object` is the single exception-to-wire boundary.

An error *reason* (what went wrong, beyond the JSON-RPC code) is a class: each `CortexRpcError`
subclass fixes its `CODE` and, where one code covers several outcomes, the `REASON` it writes to
``data.reason``. `decode` is the one place a received error object is turned back into its class;
`HTTP_ERRORS` is the one table from class to HTTP status and body ``error`` code (CONTRACT §2), and
the SDK's exceptions are looked up by the same classes (sdk/exceptions.py).

Rules:
1. A reason class's wire form is ``{"code": CODE, "message": ..., "data": {"reason": REASON, ...}}``;
   a class without `REASON` leaves ``data`` as given.
2. `decode` picks the most specific class: (code, data.reason) first, then the code alone, then
   `CortexRpcError` itself (an unknown code keeps its number).
3. Every lookup by class (`http_error_of`, the SDK's, MCP's text) walks the class's MRO, so a subclass
   added later maps like its parent until it is given its own row.

Exception tree::

    RpcError                    -- a JSON-RPC error with code, message and optional data
    └── CortexRpcError          -- an error of a known meaning (HTTP 500 internal)
        ├── Unauthorized        -- -32001 (HTTP 403 forbidden: the token is good, the act is not allowed)
        ├── NodeNotFound        -- -32004 reason not_found (HTTP 404 node_not_found)
        │   └── NodeNotConnected -- -32004 reason not_connected (HTTP 409 node_not_connected)
        ├── InvalidParams       -- -32602 (HTTP 422 invalid_arguments)
        │   ├── UnknownTool     -- -32602 reason unknown_tool (HTTP 404 unknown_tool)
        │   └── InvalidArguments -- -32602 reason invalid_arguments, data.problem (HTTP 422)
        ├── NodeDisconnected    -- -32010, data.retryable false (HTTP 502 node_disconnected)
        ├── CallTimeout         -- -32011 (HTTP 504 timeout)
        ├── Overloaded          -- -32012 (HTTP 503 overloaded)
        │   └── OverArtifactBudget -- -32012 reason artifact_budget
        └── Cancelled           -- -32800 (HTTP 499 cancelled)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

__all__ = [
    "CANCELLED",
    "HTTP_ERRORS",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "NODE_DISCONNECTED",
    "NODE_NOT_FOUND",
    "OVERLOADED",
    "PARSE_ERROR",
    "TIMEOUT",
    "UNAUTHORIZED",
    "CallTimeout",
    "Cancelled",
    "CortexRpcError",
    "InvalidArguments",
    "InvalidParams",
    "NodeDisconnected",
    "NodeNotConnected",
    "NodeNotFound",
    "OverArtifactBudget",
    "Overloaded",
    "RpcError",
    "Unauthorized",
    "UnknownTool",
    "decode",
    "error_object",
    "http_error_of",
    "lookup",
]

logger = logging.getLogger(__name__)

PARSE_ERROR = -32700
"""The frame was not valid JSON. The connection stays up."""

INVALID_REQUEST = -32600
"""The JSON is not a valid JSON-RPC 2.0 request object."""

METHOD_NOT_FOUND = -32601
"""No such method on this side of the link."""

INVALID_PARAMS = -32602
"""Params of the wrong shape, an unknown tool, or arguments failing the tool's inputSchema."""

INTERNAL_ERROR = -32603
"""An unexpected failure while handling the request; details go to the log, never onto the wire."""

CANCELLED = -32800
"""The request was cancelled (``notifications/cancelled``, a caller's cancel, or a dropped caller)."""

UNAUTHORIZED = -32001
"""The caller's token is missing, invalid or not allowed to do this."""

NODE_NOT_FOUND = -32004
"""The node does not exist, is not connected, or belongs to another workspace (indistinguishable)."""

NODE_DISCONNECTED = -32010
"""The node dropped while the call was in flight; ``data: {"retryable": false}``."""

TIMEOUT = -32011
"""The call did not finish within its timeout; the work on the node was cancelled."""

OVERLOADED = -32012
"""The node (or server) is at its concurrency limit and its queue is full."""


class RpcError(Exception):
    """A JSON-RPC error to send (or one received) with ``code``, ``message`` and optional ``data``."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_dict(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err

    def __repr__(self) -> str:
        return f"RpcError({self.code}, {self.message!r})"


def error_object(exc: BaseException) -> dict[str, Any]:
    """Map any exception to a JSON-RPC error object: the one exception-to-wire boundary.

    `RpcError` keeps its code; anything else becomes -32603 with a fixed message, and the traceback
    goes to the log only.
    """
    if isinstance(exc, RpcError):
        return exc.to_dict()
    logger.error("internal error while handling a request", exc_info=exc)
    return {"code": INTERNAL_ERROR, "message": "internal error"}


class CortexRpcError(RpcError):
    """An error whose meaning is its class (module rules 1-3); `CODE`/`REASON` are fixed per class."""

    CODE: ClassVar[int] = INTERNAL_ERROR
    REASON: ClassVar[str | None] = None

    def __init__(self, message: str, data: Any = None, *, code: int | None = None) -> None:
        if self.REASON is not None:
            data = {"reason": self.REASON, **(data if isinstance(data, dict) else {})}
        super().__init__(self.CODE if code is None else code, message, data)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class Unauthorized(CortexRpcError):
    """The caller may not do this (a refused renewal token, a revoked user)."""

    CODE = UNAUTHORIZED


class NodeNotFound(CortexRpcError):
    """No such node, or one of another workspace (indistinguishable on purpose)."""

    CODE = NODE_NOT_FOUND
    REASON = "not_found"


class NodeNotConnected(NodeNotFound):
    """The node is known but has no live link."""

    REASON = "not_connected"


class InvalidParams(CortexRpcError):
    """Params of the wrong shape."""

    CODE = INVALID_PARAMS


class UnknownTool(InvalidParams):
    """The node declares no tool of that name."""

    REASON = "unknown_tool"


class InvalidArguments(InvalidParams):
    """The arguments fail the tool's inputSchema; ``data.problem`` is the schema's complaint."""

    REASON = "invalid_arguments"

    @property
    def problem(self) -> str:
        problem = self.data.get("problem") if isinstance(self.data, dict) else None
        return problem if isinstance(problem, str) and problem else self.message


class NodeDisconnected(CortexRpcError):
    """The node dropped while the call was in flight; never retried for the caller."""

    CODE = NODE_DISCONNECTED

    def __init__(self, message: str, data: Any = None, *, code: int | None = None) -> None:
        super().__init__(message, {"retryable": False} if data is None else data, code=code)


class CallTimeout(CortexRpcError):
    """The call did not finish within its timeout."""

    CODE = TIMEOUT


class Overloaded(CortexRpcError):
    """At a concurrency limit with a full queue."""

    CODE = OVERLOADED


class OverArtifactBudget(Overloaded):
    """A result upload would exceed the server's artifact budget (``data.scope/needed/limit``)."""

    REASON = "artifact_budget"


class Cancelled(CortexRpcError):
    """The request was cancelled, or its link closed under it."""

    CODE = CANCELLED


def _classes() -> tuple[dict[tuple[int, str], type[CortexRpcError]], dict[int, type[CortexRpcError]]]:
    """(code, reason) → class for reason classes; code → the code's root class (its first class)."""
    by_reason: dict[tuple[int, str], type[CortexRpcError]] = {}
    by_code: dict[int, type[CortexRpcError]] = {}
    pending: list[type[CortexRpcError]] = list(CortexRpcError.__subclasses__())
    while pending:
        cls = pending.pop(0)  # breadth first: a code's root class is met before its subclasses
        pending.extend(cls.__subclasses__())
        by_code.setdefault(cls.CODE, cls)
        reason = cls.__dict__.get("REASON")  # its own, not inherited
        if reason is not None:
            by_reason[(cls.CODE, reason)] = cls
    return by_reason, by_code


_BY_REASON, _BY_CODE = _classes()


def decode(exc: RpcError) -> CortexRpcError:
    """The class of a received (or raised) error, most specific first (rule 2); data kept as received."""
    if isinstance(exc, CortexRpcError):
        return exc
    reason = exc.data.get("reason") if isinstance(exc.data, dict) else None
    cls = _BY_REASON.get((exc.code, reason)) if isinstance(reason, str) else None
    cls = cls or _BY_CODE.get(exc.code, CortexRpcError)
    decoded = cls.__new__(cls)
    RpcError.__init__(decoded, exc.code, exc.message, exc.data)  # as received: no REASON added
    return decoded


V = TypeVar("V")


def lookup(table: Mapping[type[CortexRpcError], V], exc: RpcError) -> V:
    """The row of `table` for the error's class, walking its MRO (rule 3); `CortexRpcError` must be in it."""
    for cls in type(decode(exc)).__mro__:
        row = table.get(cls)
        if row is not None:
            return row
    return table[CortexRpcError]


HTTP_ERRORS: dict[type[CortexRpcError], tuple[int, str]] = {
    CortexRpcError: (500, "internal"),
    Unauthorized: (403, "forbidden"),
    NodeNotFound: (404, "node_not_found"),
    NodeNotConnected: (409, "node_not_connected"),
    InvalidParams: (422, "invalid_arguments"),
    UnknownTool: (404, "unknown_tool"),
    NodeDisconnected: (502, "node_disconnected"),
    CallTimeout: (504, "timeout"),
    Overloaded: (503, "overloaded"),
    Cancelled: (499, "cancelled"),
}
"""Class → (HTTP status, body ``error`` code): CONTRACT §2. The server's one HTTP error table."""


def http_error_of(exc: RpcError) -> tuple[int, str]:
    """(HTTP status, ``error`` code) of an error: `HTTP_ERRORS` by class."""
    return lookup(HTTP_ERRORS, exc)
