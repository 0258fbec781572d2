"""REST API and Server-Sent Events under `/api/v1`, plus `/healthz`, `/metrics` and the JWKS.

Every handler authenticates with the user bearer token (`Authorization: Bearer`, `server.identity`),
then goes through the `CallRouter`; RPC errors become HTTP responses in `server.http_errors`, by their
class through `spec.errors.HTTP_ERRORS` (node_not_found 404, node_not_connected 409, unknown_tool 404,
invalid_arguments 422, node_disconnected 502, timeout 504, overloaded 503, …).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server import sse
from server.http_errors import ApiError, http_error
from server.identity import authenticated_endpoint, state_of
from server.router import Caller
from server.user_revocation import end_event_queue
from spec.errors import RpcError
from spec.protocol import AUDIT_DEFAULT_LIMIT, clamp_audit_limit

if TYPE_CHECKING:
    from server.state import ServerState

__all__ = ["routes"]

logger = logging.getLogger(__name__)


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
        limit = int(request.query_params.get("limit", AUDIT_DEFAULT_LIMIT))
    except ValueError:
        raise ApiError(400, "bad_request", "after and limit must be integers") from None
    if after < 0 or limit < 1:
        raise ApiError(400, "bad_request", "after must be >= 0 and limit >= 1")
    limit = clamp_audit_limit(limit)
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


async def node_approvals(request: Request, state: ServerState, caller: Caller) -> Response:
    """Read-only: the node's calls waiting for its owner (only the owner answers, on the node)."""
    entry = state.router.node(caller, request.path_params["node"])  # another workspace: 404
    waiting = entry.approvals if entry.status != "disconnected" else []
    return JSONResponse({"node": entry.name, "approvals": waiting})


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
        Route("/api/v1/nodes", authenticated_endpoint(list_nodes)),
        Route("/api/v1/events", authenticated_endpoint(events)),
        Route("/api/v1/nodes/{node}", authenticated_endpoint(get_node)),
        Route("/api/v1/nodes/{node}/tools", authenticated_endpoint(node_tools)),
        Route("/api/v1/nodes/{node}/tools/{tool}/call", authenticated_endpoint(call_tool), methods=["POST"]),
        Route("/api/v1/nodes/{node}/audit", authenticated_endpoint(node_audit)),
        Route(
            "/api/v1/nodes/{node}/approvals", authenticated_endpoint(node_approvals)
        ),  # GET only: read-only
        Route(
            "/api/v1/nodes/{node}/audit/acknowledge",
            authenticated_endpoint(acknowledge_audit),
            methods=["POST"],
        ),
    ]
