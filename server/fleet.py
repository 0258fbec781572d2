"""Running a fleet from the dashboard: admin enroll/revoke over REST, and the recent calls of a workspace.

Layering: a surface beside `server.api` (same `authenticate`, same JSON errors), added to the app by
`server.app.build_app`. Enrolment and revocation go to the `Store` exactly as the `cortex-server`
commands do (revocation then runs `NodeDirectory.on_revoked` at once instead of waiting for the feed).
`RecentCalls` is filled by `CallRouter.call_tool`, the one path every surface's calls take.

Rules:
1. `POST /api/v1/nodes` and `DELETE /api/v1/nodes/{node}` are for admins only (403 otherwise). The
   credential is in the POST's answer once and never stored in the clear or logged.
2. `RecentCalls` holds at most `capacity` calls (oldest dropped first) and at most `result_bytes` of
   each result's text: memory is bounded whatever callers do.
3. `GET /api/v1/calls` shows only calls to nodes of the caller's workspace (admins: all), newest first.
4. A call is recorded when it ends, with its outcome; `result` is its first text block (cut to the
   bound) and `audit` the seqs of its `tool.requested`/`tool.finished` records, which the node reports
   in the result's `_meta["cortex/audit"]` — so the view links a call to what it returned and to
   its audit records.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.api import ApiError, _endpoint
from server.router import Caller
from server.store import InvalidName, NodeExists

if TYPE_CHECKING:
    from server.state import ServerState

__all__ = ["CallRecord", "RecentCalls", "routes"]

DEFAULT_CAPACITY = 500
DEFAULT_RESULT_BYTES = 4096


@dataclass(frozen=True)
class CallRecord:
    id: int
    started_at: float
    duration_ms: float
    node: str
    workspace: str
    tool: str
    caller: dict[str, str]
    outcome: str  # ok | tool_error | timeout | cancelled | rpc_<code> | error
    arguments: dict[str, Any]
    result: str | None
    audit: dict[str, int] | None  # {"requested_seq", "finished_seq"} in the node's audit log

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "started_at": self.started_at,
            "duration_ms": round(self.duration_ms, 1),
            "node": self.node,
            "workspace": self.workspace,
            "tool": self.tool,
            "caller": self.caller,
            "outcome": self.outcome,
            "arguments": self.arguments,
            "result": self.result,
            "audit": self.audit,
        }


class RecentCalls:
    """The last `capacity` tool calls made through this server process (rule 2)."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY, result_bytes: int = DEFAULT_RESULT_BYTES) -> None:
        self._calls: deque[CallRecord] = deque(maxlen=capacity)
        self._ids = itertools.count(1)
        self.result_bytes = result_bytes

    def record(
        self,
        *,
        started_at: float,
        duration_s: float,
        node: str,
        workspace: str,
        tool: str,
        caller: Caller,
        outcome: str,
        arguments: dict[str, Any],
        result: dict[str, Any] | None,
    ) -> None:
        self._calls.append(
            CallRecord(
                next(self._ids),
                started_at,
                duration_s * 1000,
                node,
                workspace,
                tool,
                caller.wire(),
                outcome,
                _bounded_arguments(arguments, self.result_bytes),
                _first_text(result, self.result_bytes),
                _audit_seqs(result),
            )
        )

    def visible(self, caller: Caller, limit: int) -> list[CallRecord]:
        out: list[CallRecord] = []
        for call in reversed(self._calls):
            if caller.can_see(call.workspace):
                out.append(call)
                if len(out) >= limit:
                    break
        return out

    async def latest(self, caller: Caller, limit: int) -> list[CallRecord]:
        """`visible`, for the endpoint: a shared log (server.redis_calls) has to ask over the network."""
        return self.visible(caller, limit)

    def __len__(self) -> int:
        return len(self._calls)


def _first_text(result: dict[str, Any] | None, limit: int) -> str | None:
    if not isinstance(result, dict):
        return None
    for item in result.get("content") or []:
        if isinstance(item, dict) and item.get("type") == "text" and isinstance(item.get("text"), str):
            text: str = item["text"]
            return text if len(text) <= limit else text[: limit - 1] + "…"
        if isinstance(item, dict) and item.get("type") in ("image", "resource_link"):
            return f"({item.get('type')} {item.get('mimeType', '')})".replace(" )", ")")
    return None


def _audit_seqs(result: dict[str, Any] | None) -> dict[str, int] | None:
    meta = result.get("_meta") if isinstance(result, dict) else None
    audit = meta.get("cortex/audit") if isinstance(meta, dict) else None
    if not isinstance(audit, dict):
        return None
    seqs = {k: v for k, v in audit.items() if k in ("requested_seq", "finished_seq") and type(v) is int}
    return seqs or None


def _bounded_arguments(arguments: dict[str, Any], limit: int) -> dict[str, Any]:
    import json

    # The common case (a few short scalars) is kept without serialising: this runs on every call.
    short = limit // 20
    if len(arguments) <= 16 and all(
        len(k) <= short
        and (v is None or isinstance(v, bool | int | float) or (isinstance(v, str) and len(v) <= short))
        for k, v in arguments.items()
    ):
        return arguments
    text = json.dumps(arguments, ensure_ascii=False, default=str)
    if len(text) <= limit:
        return arguments
    return {"_truncated": text[: limit - 1] + "…"}


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
        Route("/api/v1/calls", _endpoint(recent_calls)),
        Route("/api/v1/nodes", _endpoint(enroll), methods=["POST"]),
        Route("/api/v1/nodes/{node}", _endpoint(revoke), methods=["DELETE"]),
    ]
