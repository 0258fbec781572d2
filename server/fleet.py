"""Running a fleet from the dashboard: admin enroll/revoke over REST, and the recent calls of a workspace.

Layering: a surface beside `server.api` (same `server.identity.authenticated_endpoint`, same JSON
errors), added to the app by `server.app.build_app`. Enrolment and revocation go to the `Store`
exactly as the `cortex-server` commands do (revocation then runs `NodeDirectory.on_revoked` at once
instead of waiting for the feed). The recent calls are `server.recent_calls.RecentCalls`, which
`CallRouter.call_tool` fills.

Rules:
1. `POST /api/v1/nodes` and `DELETE /api/v1/nodes/{node}` are for admins only (403 otherwise). The
   credential is in the POST's answer once and never stored in the clear or logged.
2. `GET /api/v1/calls` shows only calls to nodes of the caller's workspace (admins: all), newest first.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.http_errors import ApiError
from server.identity import authenticated_endpoint
from server.router import Caller
from server.store import InvalidName, NodeExists

if TYPE_CHECKING:
    from server.state import ServerState

__all__ = ["routes"]


# -- endpoints ---------------------------------------------------------------------------------------
def _require_admin(caller: Caller) -> None:
    if not caller.is_admin:
        raise ApiError(403, "forbidden", "only an admin token can enroll or revoke nodes")


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json() if await request.body() else {}
    except ValueError:
        raise ApiError(400, "invalid_request", "the body is not JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", 'the body must be {"name": "...", "workspace": "..."}')
    return body


async def enroll(request: Request, state: ServerState, caller: Caller) -> Response:
    _require_admin(caller)
    body = await _json_body(request)
    name, workspace = body.get("name"), body.get("workspace") or caller.ws
    if not isinstance(name, str) or not isinstance(workspace, str):
        raise ApiError(400, "invalid_request", "name and workspace must be strings")
    try:
        credential = await state.store.enroll_node(name, workspace)
    except InvalidName as exc:
        raise ApiError(400, "invalid_name", str(exc)) from None
    except NodeExists as exc:
        raise ApiError(409, "node_exists", str(exc)) from None
    # Listed here at once (the change feed tells the other replicas, and this one again: idempotent).
    state.registry.learn(name, workspace)
    return JSONResponse({"name": name, "workspace": workspace, "credential": credential}, status_code=201)


async def revoke(request: Request, state: ServerState, caller: Caller) -> Response:
    _require_admin(caller)
    name = request.path_params["node"]
    if not await state.store.revoke_node(name):
        raise ApiError(404, "node_not_found", f"no live node named {name!r}")
    await state.nodes.on_revoked(name)
    return JSONResponse({"name": name, "revoked": True})


async def recent_calls(request: Request, state: ServerState, caller: Caller) -> Response:
    try:
        limit = max(1, min(int(request.query_params.get("limit", 100)), 500))
    except ValueError:
        raise ApiError(400, "invalid_request", "limit must be an integer") from None
    calls = await state.router.recent.latest(caller, limit)
    return JSONResponse({"calls": [c.to_json() for c in calls], "now": time.time()})


def routes() -> list[Route]:
    return [
        Route("/api/v1/calls", authenticated_endpoint(recent_calls)),
        Route("/api/v1/nodes", authenticated_endpoint(enroll), methods=["POST"]),
        Route("/api/v1/nodes/{node}", authenticated_endpoint(revoke), methods=["DELETE"]),
    ]
