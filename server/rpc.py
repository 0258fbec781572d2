"""`WS /api/v1/rpc`: JSON-RPC for SDK clients, the same session core as the tunnel.

Methods: `nodes/list`, `tools/list {node}`, `tools/call {node, name, arguments, timeout_s?}` (progress
forwarded when the client sends `_meta.progressToken`; the client's `notifications/cancelled` — or its
dropped connection — cancels the call end to end), `audit/read {node, after_seq, limit}`, `ping`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from server.auth import AuthError
from server.router import Caller
from server.tunnel import SUBPROTOCOL, _denial, bearer_token
from spec.errors import CANCELLED, RpcError
from spec.session import CallContext, RpcSession, make_methods

if TYPE_CHECKING:
    from server.state import ServerState

__all__ = [
    "SUBPROTOCOL_TOKEN_PREFIX",
    "caller_from_token",
    "rpc_endpoint",
    "subprotocol_token",
]

logger = logging.getLogger(__name__)

SUBPROTOCOL_TOKEN_PREFIX = "bearer."
MAX_CLIENT_REQUESTS = 1024  # requests of one client link running at once; more are answered -32012


def subprotocol_token(scope: Mapping[str, Any]) -> str | None:
    """The user token offered as a second subprotocol `bearer.<token>` (browsers cannot set headers).

    Accepted on `/api/v1/rpc` only; the server still answers with `cortex.v1` alone, so the token is
    never echoed back, and it is never logged.
    """
    for value in scope.get("subprotocols", []):
        if value.startswith(SUBPROTOCOL_TOKEN_PREFIX) and len(value) > len(SUBPROTOCOL_TOKEN_PREFIX):
            return str(value[len(SUBPROTOCOL_TOKEN_PREFIX) :])
    return None


def caller_from_token(state: ServerState, token: str) -> Caller:
    claims = state.authority.verify_user_token(token)
    return Caller(sub=claims.sub, ws=claims.ws, role=claims.role, iat=claims.iat)


async def rpc_endpoint(websocket: WebSocket) -> None:
    state: ServerState = websocket.app.state.cortex
    if SUBPROTOCOL not in websocket.scope.get("subprotocols", []):
        await websocket.send_denial_response(
            _denial(400, "bad_subprotocol", f"use subprotocol {SUBPROTOCOL}")
        )
        return
    token = bearer_token(websocket.headers) or subprotocol_token(websocket.scope)
    if token is None:
        await websocket.send_denial_response(_denial(401, "unauthorized", "missing bearer token"))
        return
    try:
        caller = caller_from_token(state, token)
    except AuthError as exc:
        logger.info("client handshake refused: %s", exc.reason)
        await websocket.send_denial_response(_denial(exc.status, "unauthorized", "invalid user token"))
        return
    await websocket.accept(subprotocol=SUBPROTOCOL)
    session = ClientSession(websocket, state, caller)
    with state.live_callers.track(caller.sub, caller.ws, caller.iat, session.revoked):
        await session.run()


class ClientSession:
    def __init__(self, websocket: WebSocket, state: ServerState, caller: Caller) -> None:
        self.ws = websocket
        self.state = state
        self.caller = caller
        self.rpc = RpcSession(
            self._send,
            make_methods(
                {
                    "ping": self.ping,
                    "nodes/list": self.nodes_list,
                    "tools/list": self.tools_list,
                    "tools/call": self.tools_call,
                    "audit/read": self.audit_read,
                }
            ),
            name=f"client:{caller.sub}",
            max_incoming=MAX_CLIENT_REQUESTS,
        )

    async def _send(self, text: str) -> None:
        await self.ws.send_text(text)

    async def revoked(self) -> None:
        """The user was revoked (``cortex-server revoke-user``): close with 4403, like a revoked node."""
        self.rpc.close(RpcError(CANCELLED, "user revoked"))
        with contextlib.suppress(Exception):
            await self.ws.close(code=4403, reason="user revoked")

    async def run(self) -> None:
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                data = message.get("text")
                await self.rpc.feed(data if data is not None else message.get("bytes") or b"")
        except (WebSocketDisconnect, RuntimeError):
            return
        finally:
            # A dropped client cancels everything it had running (and so the work on the nodes).
            self.rpc.close(RpcError(CANCELLED, "client disconnected"))

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
            await ctx.progress(params.get("progress", 0), params.get("total"), params.get("message"))

        return await self.state.router.call_tool(
            self.caller,
            node,
            name,
            arguments,
            timeout_s=timeout_s,
            on_progress=forward if ctx.progress_token is not None else None,
        )

    async def audit_read(self, ctx: CallContext, node: str, after_seq: int = 0, limit: int = 100) -> Any:
        return await self.state.router.read_audit(
            self.caller, node, int(after_seq), max(1, min(int(limit), 1000))
        )
