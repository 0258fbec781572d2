"""Identity at the edge: who is calling, read once from an HTTP request or a WebSocket handshake.

Where it sits: below every surface (`server.api`, `server.fleet`, `server.artifacts`, `server.planner`,
`server.mcp`, `server.rpc`, `server.tunnel`) and above `server.auth`, whose `TokenAuthority` verifies
the tokens; error bodies come from `server.http_errors`. Surfaces take callers and refusals from here
and never from each other.

Rules:
1. A token is read from ``Authorization: Bearer <token>`` (scheme case-insensitive, surrounding blanks
   dropped) or, where a surface allows it (`/api/v1/rpc`: browsers cannot set headers on a WebSocket),
   from a second subprotocol ``bearer.<token>``. The server answers with `SUBPROTOCOL` alone, so that
   token is never echoed back.
2. No token is 401; a token `TokenAuthority` refuses is its `AuthError.status` (401, or 403 for a token
   that is valid but not for this). Only the refusal's reason is logged, never the token.
3. HTTP refusals are JSON error bodies with a ``WWW-Authenticate: Bearer`` challenge; a WebSocket
   handshake is refused with an HTTP denial response (`denial`) before any socket opens.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.auth import AuthError, TokenAuthority
from server.http_errors import ApiError, error_response, http_error
from server.router import Caller
from spec.errors import RpcError
from spec.protocol import SUBPROTOCOL

if TYPE_CHECKING:
    from server.state import ServerState

__all__ = [
    "SUBPROTOCOL",
    "SUBPROTOCOL_TOKEN_PREFIX",
    "Handler",
    "authenticate",
    "authenticated_endpoint",
    "bearer_token",
    "caller_from_token",
    "denial",
    "offers_subprotocol",
    "state_of",
    "subprotocol_token",
    "unauthorized",
]

logger = logging.getLogger(__name__)

SUBPROTOCOL_TOKEN_PREFIX = "bearer."

Handler = Callable[[Request, "ServerState", Caller], Awaitable[Response]]
"""An authenticated HTTP handler: the request, the app's state and the caller."""


def bearer_token(headers: Any) -> str | None:
    """The token of an ``Authorization: Bearer`` header, None when there is none (rule 1)."""
    value = str(headers.get("authorization", ""))
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def subprotocol_token(scope: Mapping[str, Any]) -> str | None:
    """The user token offered as a second subprotocol ``bearer.<token>`` (rule 1)."""
    for value in scope.get("subprotocols", []):
        if value.startswith(SUBPROTOCOL_TOKEN_PREFIX) and len(value) > len(SUBPROTOCOL_TOKEN_PREFIX):
            return str(value[len(SUBPROTOCOL_TOKEN_PREFIX) :])
    return None


def offers_subprotocol(scope: Mapping[str, Any]) -> bool:
    """True when a WebSocket handshake offers the Cortex subprotocol."""
    return SUBPROTOCOL in scope.get("subprotocols", [])


def caller_from_token(authority: TokenAuthority, token: str) -> Caller:
    """The user behind *token*; raises `AuthError` when the authority refuses it."""
    claims = authority.verify_user_token(token)
    return Caller(sub=claims.sub, ws=claims.ws, role=claims.role, iat=claims.iat)


def state_of(request: Request) -> ServerState:
    """The state of the app serving *request* (built in its lifespan)."""
    state: ServerState = request.app.state.cortex
    return state


def authenticate(request: Request) -> Caller:
    """The caller of an HTTP request; raises `ApiError` 401/403 with a Bearer challenge (rules 2-3)."""
    token = bearer_token(request.headers)
    if token is None:
        raise ApiError(401, "unauthorized", "missing bearer token", {"WWW-Authenticate": "Bearer"})
    try:
        return caller_from_token(state_of(request).authority, token)
    except AuthError as exc:
        logger.info("API request refused: %s", exc.reason)
        raise ApiError(
            exc.status,
            "unauthorized" if exc.status == 401 else "forbidden",
            "invalid token",
            {"WWW-Authenticate": 'Bearer error="invalid_token"'},
        ) from None


def authenticated_endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A Starlette endpoint that authenticates, runs *handler* and answers its errors as JSON."""

    async def endpoint(request: Request) -> Response:
        try:
            caller = authenticate(request)
            return await handler(request, state_of(request), caller)
        except ApiError as exc:
            return exc.response()
        except RpcError as exc:
            return http_error(exc).response()

    endpoint.__name__ = getattr(handler, "__name__", "endpoint")
    return endpoint


def unauthorized(message: str, challenge: str) -> JSONResponse:
    """A 401 JSON answer carrying the ``WWW-Authenticate`` *challenge* (rule 3)."""
    return error_response(401, "unauthorized", message, {"WWW-Authenticate": challenge})


def denial(status: int, error: str, message: str) -> JSONResponse:
    """The HTTP answer that refuses a WebSocket handshake (rule 3): no socket opens."""
    return error_response(status, error, message)
