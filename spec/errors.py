"""JSON-RPC error codes of the Cortex protocol and the one exception that carries them.

This module is the bottom of the layering: every package (server, desktop_agent, sdk) names error codes
through these constants, never through bare numbers. `RpcError` is the exception handlers raise to send
an error object; `error_object` is the single exception-to-wire boundary.

Exception tree::

    RpcError            -- a JSON-RPC error with code, message and optional data
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = [
    "CANCELLED",
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
    "RpcError",
    "error_object",
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
