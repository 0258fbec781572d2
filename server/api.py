"""REST API and Server-Sent Events under `/api/v1`, plus `/healthz`, `/metrics` and the JWKS.

Every handler authenticates with the user bearer token (`Authorization: Bearer`), then goes through the
`CallRouter`; `http_error` is the one place RPC errors become HTTP statuses:

    NODE_NOT_FOUND/not_found 404, NODE_NOT_FOUND/not_connected 409, INVALID_PARAMS/unknown_tool 404,
    INVALID_PARAMS/invalid_arguments 422, NODE_DISCONNECTED 502, TIMEOUT 504, OVERLOADED 503.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server import sse
from server.approvals import node_approvals
from server.auth import AuthError
from server.router import Caller
from server.rpc import caller_from_token
from server.tunnel import bearer_token
from server.user_revocation import end_event_queue
from spec import errors
from spec.errors import RpcError

if TYPE_CHECKING:
    from server.state import ServerState

__all__ = ["ApiError", "authenticate", "http_error", "routes"]

logger = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, error: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.error, self.message, self.headers = status, error, message, headers

    def response(self) -> JSONResponse:
        return JSONResponse(
            {"error": self.error, "message": self.message}, status_code=self.status, headers=self.headers
        )


def state_of(request: Request) -> ServerState:
    state: ServerState = request.app.state.cortex
    return state


def authenticate(request: Request) -> Caller:
    token = bearer_token(request.headers)
    if token is None:
        raise ApiError(401, "unauthorized", "missing bearer token", {"WWW-Authenticate": "Bearer"})
    try:
        return caller_from_token(state_of(request), token)
    except AuthError as exc:
        logger.info("API request refused: %s", exc.reason)
        raise ApiError(
            exc.status,
            "unauthorized" if exc.status == 401 else "forbidden",
            "invalid token",
            {"WWW-Authenticate": 'Bearer error="invalid_token"'},
        ) from None


def http_error(exc: RpcError) -> ApiError:
    reason = exc.data.get("reason") if isinstance(exc.data, dict) else None
    if exc.code == errors.NODE_NOT_FOUND:
        if reason == "not_connected":
            return ApiError(409, "node_not_connected", exc.message)
        return ApiError(404, "node_not_found", exc.message)
    if exc.code == errors.INVALID_PARAMS:
        if reason == "unknown_tool":
            return ApiError(404, "unknown_tool", exc.message)
        return ApiError(422, "invalid_arguments", exc.message)
    if exc.code == errors.NODE_DISCONNECTED:
        return ApiError(502, "node_disconnected", exc.message)
    if exc.code == errors.TIMEOUT:
        return ApiError(504, "timeout", exc.message)
    if exc.code == errors.OVERLOADED:
        return ApiError(503, "overloaded", exc.message)
    if exc.code == errors.CANCELLED:
        return ApiError(499, "cancelled", exc.message)
    if exc.code == errors.UNAUTHORIZED:
        return ApiError(403, "forbidden", exc.message)
    return ApiError(500, "internal", "internal error")


async def _guard(request: Request, handler: Any) -> Response:
    try:
        caller = authenticate(request)
        result: Response = await handler(request, state_of(request), caller)
        return result
    except ApiError as exc:
        return exc.response()
    except RpcError as exc:
        return http_error(exc).response()


def _endpoint(handler: Any) -> Any:
    async def endpoint(request: Request) -> Response:
        return await _guard(request, handler)

    endpoint.__name__ = handler.__name__
    return endpoint


async def list_nodes(request: Request, state: ServerState, caller: Caller) -> Response:
    return JSONResponse({"nodes": [e.to_json() for e in state.router.visible_nodes(caller)]})


async def get_node(request: Request, state: ServerState, caller: Caller) -> Response:
    return JSONResponse((await state.router.find(caller, request.path_params["node"])).to_json())


async def node_tools(request: Request, state: ServerState, caller: Caller) -> Response:
    return JSONResponse({"tools": (await state.router.find(caller, request.path_params["node"])).tools})


async def call_tool(request: Request, state: ServerState, caller: Caller) -> Response:
    try:
        body = await request.json() if await request.body() else {}
    except ValueError:
        raise ApiError(400, "bad_request", "the body is not JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("arguments", {}), dict):
        raise ApiError(400, "bad_request", 'the body must be {"arguments": {...}, "timeout_s": N}')
    timeout = body.get("timeout_s")
    if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
        raise ApiError(400, "bad_request", "timeout_s must be a positive number")
    result = await state.router.call_tool(
        caller,
        request.path_params["node"],
        request.path_params["tool"],
        body.get("arguments", {}),
        timeout_s=timeout,
    )
    from server.results import rest_response

    return await rest_response(state.artifacts, result)  # a large result comes back whole


async def node_audit(request: Request, state: ServerState, caller: Caller) -> Response:
    try:
        after = int(request.query_params.get("after", 0))
        limit = min(int(request.query_params.get("limit", 100)), 1000)
    except ValueError:
        raise ApiError(400, "bad_request", "after and limit must be integers") from None
    if after < 0 or limit < 1:
        raise ApiError(400, "bad_request", "after must be >= 0 and limit >= 1")
    try:
        result = await state.router.read_audit(caller, request.path_params["node"], after, limit)
    except RpcError as exc:
        if http_error(exc).status != 500:
            raise
        # The node could not read its own log (or answered nonsense): say so, never a bare 500.
        raise ApiError(
            502, "audit_read_failed", f"the node could not read its audit log: {exc.message}"[:500]
        ) from None
    return JSONResponse(result)


async def acknowledge_audit(request: Request, state: ServerState, caller: Caller) -> Response:
    """An admin clears a node's ``rewound`` audit status (it stays until then, across restarts)."""
    entry = await state.router.find(caller, request.path_params["node"])  # another workspace: 404
    if not caller.is_admin:
        raise ApiError(403, "forbidden", "only an admin can acknowledge an audit rewind")
    audit = await state.audit_heads.acknowledge(entry)
    logger.info("%s/%s acknowledged the audit status of node %s", caller.ws, caller.sub, entry.name)
    return JSONResponse({"name": entry.name, "audit": audit})


async def events(request: Request, state: ServerState, caller: Caller) -> Response:
    async def stream() -> AsyncIterator[str]:
        with (
            state.registry.subscribe() as queue,
            state.live_callers.track(caller.sub, caller.ws, caller.iat, lambda: end_event_queue(queue)),
        ):
            for entry in state.router.visible_nodes(caller):
                yield sse.frame("node.updated", entry.to_json())
            async for item in sse.with_keepalive(queue):
                if item is None:
                    yield sse.KEEPALIVE
                elif not item[0]:
                    return  # the user was revoked
                elif caller.can_see(item[1]["workspace"]):
                    yield sse.frame(*item)

    return sse.event_stream_response(stream())


async def healthz(request: Request) -> Response:
    state = state_of(request)
    return JSONResponse(
        {"status": "ok", "version": state.version, "nodes_connected": state.registry.connected_count()}
    )


async def metrics(request: Request) -> Response:
    return Response(
        state_of(request).metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8"
    )


async def jwks(request: Request) -> Response:
    return JSONResponse(state_of(request).authority.jwks())


def routes() -> list[Route]:
    return [
        Route("/healthz", healthz),
        Route("/metrics", metrics),
        Route("/.well-known/jwks.json", jwks),
        Route("/api/v1/nodes", _endpoint(list_nodes)),
        Route("/api/v1/events", _endpoint(events)),
        Route("/api/v1/nodes/{node}", _endpoint(get_node)),
        Route("/api/v1/nodes/{node}/tools", _endpoint(node_tools)),
        Route("/api/v1/nodes/{node}/tools/{tool}/call", _endpoint(call_tool), methods=["POST"]),
        Route("/api/v1/nodes/{node}/audit", _endpoint(node_audit)),
        Route("/api/v1/nodes/{node}/approvals", _endpoint(node_approvals)),  # GET only: read-only
        Route("/api/v1/nodes/{node}/audit/acknowledge", _endpoint(acknowledge_audit), methods=["POST"]),
    ]
