"""`WS /api/v1/rpc`: JSON-RPC for SDK clients, the same session core and link adapter as the tunnel.

Layering: Starlette WebSocket → `server.ws_link.StarletteLink` (or any `spec.link.Link`) →
`spec.session.RpcSession` → `ClientSession` (this module) → `server.router.CallRouter`.

Methods: `nodes/list`, `tools/list {node}`, `tools/call {node, name, arguments, timeout_s?}` (progress
forwarded when the client sends `_meta.progressToken`; the client's `notifications/cancelled` — or its
dropped connection — cancels the call end to end), `audit/read {node, after_seq, limit}`, `ping`.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket

from server.auth import AuthError
from server.identity import (
    SUBPROTOCOL,
    bearer_token,
    caller_from_token,
    denial,
    offers_subprotocol,
    subprotocol_token,
)
from server.router import Caller
from server.ws_link import accept_link
from spec.errors import Cancelled
from spec.link import Link, pump
from spec.params import AuditReadParams, ProgressParams
from spec.protocol import AUDIT_DEFAULT_LIMIT, Method
from spec.session import CallContext, RpcSession, make_methods

if TYPE_CHECKING:
    from server.state import ServerState

__all__ = ["rpc_endpoint"]

logger = logging.getLogger(__name__)

MAX_CLIENT_REQUESTS = 1024  # requests of one client link running at once; more are answered -32012


async def rpc_endpoint(websocket: WebSocket) -> None:
    state: ServerState = websocket.app.state.cortex
    if not offers_subprotocol(websocket.scope):
        await websocket.send_denial_response(denial(400, "bad_subprotocol", f"use subprotocol {SUBPROTOCOL}"))
        return
    token = bearer_token(websocket.headers) or subprotocol_token(websocket.scope)
    if token is None:
        await websocket.send_denial_response(denial(401, "unauthorized", "missing bearer token"))
        return
    try:
        caller = caller_from_token(state.authority, token)
    except AuthError as exc:
        logger.info("client handshake refused: %s", exc.reason)
        await websocket.send_denial_response(denial(exc.status, "unauthorized", "invalid user token"))
        return
    link = await accept_link(websocket, f"client:{caller.sub}", state.config.max_frame_bytes)
    session = ClientSession(link, state, caller)
    with state.live_callers.track(caller.sub, caller.ws, caller.iat, session.revoked):
        await session.run()


class ClientSession:
    """One client's live link (already accepted and authenticated as `caller`)."""

    def __init__(self, link: Link, state: ServerState, caller: Caller) -> None:
        self.link = link
        self.state = state
        self.caller = caller
        self.rpc = RpcSession(
            link.send,
            make_methods(
                {
                    Method.PING: self.ping,
                    Method.NODES_LIST: self.nodes_list,
                    Method.TOOLS_LIST: self.tools_list,
                    Method.TOOLS_CALL: self.tools_call,
                    Method.AUDIT_READ: self.audit_read,
                }
            ),
            name=f"client:{caller.sub}",
            max_incoming=MAX_CLIENT_REQUESTS,
        )

    async def revoked(self) -> None:
        """The user was revoked (``cortex-server revoke-user``): close with 4403, like a revoked node."""
        self.rpc.close(Cancelled("user revoked"))
        with contextlib.suppress(Exception):
            await self.link.close(4403, "user revoked")

    async def run(self) -> None:
        try:
            await pump(self.link, self.rpc)
        finally:
            # A dropped client cancels everything it had running (and so the work on the nodes).
            self.rpc.close(Cancelled("client disconnected"))

    async def ping(self, ctx: CallContext) -> dict[str, Any]:
        return {}

    async def nodes_list(self, ctx: CallContext) -> dict[str, Any]:
        return {"nodes": [e.to_json() for e in self.state.router.visible_nodes(self.caller)]}

    async def tools_list(self, ctx: CallContext, node: str) -> dict[str, Any]:
        return {"tools": (await self.state.router.find(self.caller, node)).tools}

    async def tools_call(
        self,
        ctx: CallContext,
        node: str,
        name: str,
        arguments: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        async def forward(params: dict[str, Any]) -> None:
            told = ProgressParams.from_json(params)
            await ctx.progress(told.progress, told.total, told.message)

        return await self.state.router.call_tool(
            self.caller,
            node,
            name,
            arguments,
            timeout_s=timeout_s,
            on_progress=forward if ctx.progress_token is not None else None,
        )

    async def audit_read(
        self, ctx: CallContext, node: str, after_seq: int = 0, limit: int = AUDIT_DEFAULT_LIMIT
    ) -> Any:
        page = AuditReadParams.from_args(after_seq, limit)  # a bad number is invalid params, not internal
        return await self.state.router.read_audit(self.caller, node, page.after_seq, page.limit)
