"""HTTP error answers in one place: the JSON error body, and RPC errors turned into HTTP statuses.

Where it sits: the edge, below every HTTP surface (`server.api`, `server.fleet`, `server.artifacts`,
`server.planner`, `server.mcp`, the WebSocket handshakes of `server.tunnel`/`server.rpc` through
`server.identity`) and the body-limits middleware (`server.limits`); above `spec.errors`. It imports no
surface, so every surface can use it.

Rules:
1. Every HTTP error body is ``{"error": "<code>", "message": "<human text>"}`` (CONTRACT §2), built here
   (`error_body`, `error_bytes`, `error_response`). The one exception is ``POST /oauth/token``, which
   answers RFC 6749 §5.2 bodies (``error_description``) in `server.oauth`.
2. An `RpcError` becomes an HTTP status by its code and ``data.reason`` in `RPC_STATUS`; a reason the
   table does not name falls back to the code's entry (``reason`` None). A code with no entry is
   ``500 internal`` with no detail (the detail is for the log, never the wire).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse

from spec import errors
from spec.errors import RpcError

__all__ = ["RPC_STATUS", "ApiError", "error_body", "error_bytes", "error_response", "http_error"]

RPC_STATUS: dict[tuple[int, str | None], tuple[int, str]] = {
    (errors.NODE_NOT_FOUND, "not_connected"): (409, "node_not_connected"),
    (errors.NODE_NOT_FOUND, None): (404, "node_not_found"),
    (errors.INVALID_PARAMS, "unknown_tool"): (404, "unknown_tool"),
    (errors.INVALID_PARAMS, None): (422, "invalid_arguments"),
    (errors.NODE_DISCONNECTED, None): (502, "node_disconnected"),
    (errors.TIMEOUT, None): (504, "timeout"),
    (errors.OVERLOADED, None): (503, "overloaded"),
    (errors.CANCELLED, None): (499, "cancelled"),
    (errors.UNAUTHORIZED, None): (403, "forbidden"),
}
"""(JSON-RPC code, ``data.reason``) → (HTTP status, ``error`` code) (rule 2)."""


def error_body(error: str, message: str) -> dict[str, str]:
    """The JSON error body every HTTP endpoint answers with (rule 1)."""
    return {"error": error, "message": message}


def error_bytes(error: str, message: str) -> bytes:
    """`error_body` serialised, for the raw ASGI answers that come before Starlette (`server.limits`)."""
    return json.dumps(error_body(error, message), separators=(",", ":")).encode("utf-8")


def error_response(
    status: int, error: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(error, message), status_code=status, headers=headers)


class ApiError(Exception):
    """An HTTP error answer raised inside a handler; the surface's guard turns it into its response."""

    def __init__(self, status: int, error: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.error, self.message, self.headers = status, error, message, headers

    def response(self) -> JSONResponse:
        return error_response(self.status, self.error, self.message, self.headers)


def http_error(exc: RpcError) -> ApiError:
    """The HTTP answer for an RPC error of the router or a node (rule 2)."""
    reason: Any = exc.data.get("reason") if isinstance(exc.data, dict) else None
    mapped = RPC_STATUS.get((exc.code, reason if isinstance(reason, str) else None))
    if mapped is None:
        mapped = RPC_STATUS.get((exc.code, None))
    if mapped is None:
        return ApiError(500, "internal", "internal error")
    status, error = mapped
    return ApiError(status, error, exc.message)
