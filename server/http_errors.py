"""HTTP error answers in one place: the JSON error body, and RPC errors turned into HTTP statuses.

Where it sits: the edge, below every HTTP surface (`server.api`, `server.fleet`, `server.artifacts`,
`server.planner`, `server.mcp`, the WebSocket handshakes of `server.tunnel`/`server.rpc` through
`server.identity`) and the body-limits middleware (`server.limits`); above `spec.errors`. It imports no
surface, so every surface can use it.

Rules:
1. Every HTTP error body is ``{"error": "<code>", "message": "<human text>"}`` (CONTRACT §2), built here
   (`error_body`, `error_bytes`, `error_response`). The one exception is ``POST /oauth/token``, which
   answers RFC 6749 §5.2 bodies (``error_description``) in `server.oauth`.
2. An `RpcError` becomes an HTTP status by its class (`spec.errors.decode`: code and ``data.reason``)
   in `spec.errors.HTTP_ERRORS`, the protocol's one table; a reason the table does not name maps like
   its code. An error of no known class is ``500 internal`` with no detail (the log has it, never the
   wire).
"""

from __future__ import annotations

import json

from starlette.responses import JSONResponse

from spec import errors
from spec.errors import RpcError

__all__ = ["ApiError", "error_body", "error_bytes", "error_response", "http_error"]


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
    """The HTTP answer for an RPC error of the router or a node, by its class (rule 2)."""
    status, error = errors.http_error_of(exc)
    # A 500's own message could say more than a caller should see: the log has it, the body does not.
    return ApiError(status, error, "internal error" if status == 500 else exc.message)
