"""The node tunnel: `WS /api/v1/nodes/connect`, one `NodeSession` per connected node.

Layering: Starlette WebSocket (transport) → `server.ws_link.StarletteLink` (or any `spec.link.Link`, e.g.
the in-memory pair of the in-process tests) → `spec.session.RpcSession` (dispatcher) → this module, which
runs the link's life: token check before accept, `initialize` handshake, `tools/list`, registration in
the `NodeRegistry`, heartbeat, in-band token renewal and the closing codes:

    4401 token expired without renewal     4403 node revoked
    4408 heartbeat missed                  4409 replaced by a newer connection of the same node
    1001 server shutting down
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket

from server import approvals
from server.auth import AuthError
from server.identity import SUBPROTOCOL, bearer_token, denial, offers_subprotocol
from server.limits import cap_node_info
from server.registry import NodeEntry
from server.results import ResultUploads, checked_result
from server.ws_link import accept_link
from spec.errors import InvalidArguments, InvalidParams, NodeDisconnected, RpcError, Unauthorized
from spec.link import Link, pump
from spec.params import AuthRefreshResult, InitializeParams, InitializeResult
from spec.protocol import Method
from spec.session import CallContext, RpcSession, make_methods

if TYPE_CHECKING:
    from server.state import ServerState

__all__ = ["NodeSession", "node_endpoint"]

logger = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0
MAX_NODE_REQUESTS = 64  # a node's own requests (ping, auth/refresh, uploads) running here at once
UPLOAD_FRAME_OVERHEAD = 4096
"""Bytes of an `artifacts/write` frame that are not chunk data (the envelope and the other params)."""


async def node_endpoint(websocket: WebSocket) -> None:
    state: ServerState = websocket.app.state.cortex
    token = bearer_token(websocket.headers)
    if not offers_subprotocol(websocket.scope):
        state.metrics.refused("subprotocol")
        await websocket.send_denial_response(denial(400, "bad_subprotocol", f"use subprotocol {SUBPROTOCOL}"))
        return
    if token is None:
        state.metrics.refused("missing_token")
        await websocket.send_denial_response(denial(401, "unauthorized", "missing bearer token"))
        return
    try:
        claims = state.authority.verify_node_token(token)
    except AuthError as exc:
        state.metrics.refused(exc.reason)
        logger.info("node handshake refused: %s", exc.reason)
        await websocket.send_denial_response(denial(exc.status, "unauthorized", "invalid node token"))
        return
    record = await state.nodes.node_record(claims.sub)
    if record is None or record.revoked_at is not None or record.workspace != claims.ws:
        state.metrics.refused("revoked")
        logger.info("node handshake refused: %s is unknown or revoked", claims.sub)
        await websocket.send_denial_response(denial(403, "forbidden", "node revoked or unknown"))
        return
    state.metrics.handshake()
    link = await accept_link(websocket, f"node:{claims.sub}", state.config.max_frame_bytes)
    session = NodeSession(link, state, claims.sub, claims.ws, claims.exp)
    await session.run()


class NodeSession:
    """One node's live link (already accepted); implements `server.registry.NodeLink`."""

    def __init__(self, link: Link, state: ServerState, name: str, workspace: str, exp: float) -> None:
        self.link = link
        self.state = state
        self.name = name
        self.workspace = workspace
        self.token_exp = float(exp)
        self.entry: NodeEntry | None = None
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._refetches: set[asyncio.Task[None]] = set()
        self._tools_stale = False  # a list_changed came while a tools/list was in flight
        self.uploads = ResultUploads(
            state.artifacts, name, workspace, state.config.max_frame_bytes - UPLOAD_FRAME_OVERHEAD
        )
        self.send_limit = state.config.max_frame_bytes
        """The largest frame the node takes: ours until `initialize` tells its own (the smaller wins)."""
        self.rpc = RpcSession(
            self._send,
            make_methods(
                {
                    Method.PING: self._ping,
                    Method.AUTH_REFRESH: self._refresh,
                    Method.ARTIFACTS_WRITE: self.uploads.write,
                }
            ),
            on_notification=self._on_notification,
            name=f"node:{name}",
            max_incoming=MAX_NODE_REQUESTS,
        )

    async def _send(self, text: str) -> None:
        # A frame over the node's limit would make it close the link (1009) for every caller: the one
        # request that is too big once wrapped for the tunnel is refused for its own caller instead.
        if len(text) * 4 > self.send_limit and len(text.encode("utf-8")) > self.send_limit:
            raise InvalidArguments(
                f"the request is over the node's frame limit ({self.send_limit} bytes) once wrapped"
                " for the tunnel",
                {"problem": "too large"},
            )
        await self.link.send(text)

    # -- NodeLink ---------------------------------------------------------------------------------
    async def request(
        self, method: str, params: dict[str, Any] | None = None, *, on_progress: Any = None
    ) -> Any:
        result = await self.rpc.request(method, params, on_progress=on_progress)
        if method == Method.TOOLS_CALL:
            result = checked_result(self.uploads.store, self.name, result)
        return result

    async def close(self, code: int, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        logger.info("closing node %s: %s (%d)", self.name, reason, code)
        self.rpc.close(NodeDisconnected(f"node {self.name} disconnected: {reason}"))
        try:
            await self.link.close(code, reason)
        except Exception:
            logger.debug("close of %s after the socket was gone", self.name)

    # -- life -------------------------------------------------------------------------------------
    def _seen(self) -> None:
        if self.entry is not None:
            self.entry.last_seen = time.time()

    async def run(self) -> None:
        reader = asyncio.create_task(pump(self.link, self.rpc, on_frame=self._seen), name=f"read:{self.name}")
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                await self._handshake()
            self._tasks = [
                asyncio.create_task(self._heartbeat(), name=f"heartbeat:{self.name}"),
                asyncio.create_task(self._expiry_watch(), name=f"expiry:{self.name}"),
            ]
            await reader
        except (TimeoutError, RpcError) as exc:
            logger.warning("node %s failed its handshake: %r", self.name, exc)
            await self.close(1002, "handshake failed")
        finally:
            for task in [reader, *self._tasks, *self._refetches]:
                task.cancel()
            self.uploads.close()
            self.rpc.close(NodeDisconnected(f"node {self.name} disconnected"))
            if await self.state.registry.detach(self.name, self):
                approvals.clear(self.entry)
                self.state.metrics.node_disconnected()
                logger.info("node %s disconnected", self.name)

    async def _handshake(self) -> None:
        init = InitializeResult.from_json(
            await self.rpc.request(
                Method.INITIALIZE,
                InitializeParams(
                    client_name="cortex-server",
                    client_version=self.state.version,
                    # The node never sends a frame over this (spec/protocol.md §2, §11).
                    max_frame_bytes=self.state.config.max_frame_bytes,
                ).to_json(),
            )
        )
        if init.max_frame_bytes is not None:  # a node that takes less than our limit says so
            self.send_limit = max(64 * 1024, min(self.send_limit, init.max_frame_bytes))
        await self.rpc.notify(Method.INITIALIZED)
        tools = await self.rpc.request(Method.TOOLS_LIST)
        entry = NodeEntry(name=self.name, workspace=self.workspace)
        # Capped: the node's self-description is copied into every listing and SSE event.
        protocol = init.protocol_version
        entry.info = {
            **cap_node_info(init.node),
            "protocolVersion": protocol[:64] if protocol is not None else None,
        }
        entry.set_tools(list(tools.get("tools", [])), self.state.registry.catalog)
        previous = self.state.registry.get(self.name)
        if previous is not None:
            entry.audit_head, entry.audit_warning = previous.audit_head, previous.audit_warning
        entry.observe_audit_head(init.audit_head)
        heads = self.state.audit_heads
        heads.decorate(entry)
        await heads.observe(entry, init.audit_head, publish=False)  # node.connected carries it
        self.entry = entry
        old = await self.state.registry.attach(entry, self)
        self.state.metrics.node_connected()
        if old is not None:
            await old.close(4409, "replaced by a newer connection")
        logger.info("node %s connected (%s, %d tools)", self.name, self.workspace, len(entry.tools))

    async def _heartbeat(self) -> None:
        interval = self.state.config.heartbeat_interval
        misses = 0
        while True:
            await asyncio.sleep(interval)
            started = time.perf_counter()
            try:
                async with asyncio.timeout(interval):
                    await self.rpc.request(Method.PING)
            except TimeoutError:
                misses += 1
                logger.warning("node %s missed heartbeat %d", self.name, misses)
                if misses >= self.state.config.heartbeat_misses and self.entry is not None:
                    self.entry.status = "unhealthy"
                    self.state.registry.publish("node.updated", self.entry)
                    await self.close(4408, "heartbeat missed")
                    return
                continue
            except RpcError:
                return
            misses = 0
            if self.entry is not None:
                self.entry.rtt_ms = (time.perf_counter() - started) * 1000
                self.entry.last_seen = time.time()
                self.entry.status = "connected"
                self.state.registry.publish("node.updated", self.entry)

    async def _expiry_watch(self) -> None:
        # The link lives exactly as long as its token would still verify (exp + leeway). Without the
        # leeway a renewal sent on time could lose the race: ``exp`` is whole seconds from a truncated
        # ``iat``, so a token can have up to 1 s less than ``expires_in`` told the node.
        while True:
            delay = self.token_exp + self.state.authority.leeway - time.time()
            if delay <= 0:
                await self.close(4401, "access token expired")
                return
            await asyncio.sleep(min(delay, 60.0))

    # -- what the node may ask of us ------------------------------------------------------------------
    async def _ping(self, ctx: CallContext) -> dict[str, Any]:
        return {}

    async def _refresh(self, ctx: CallContext, access_token: str) -> dict[str, Any]:
        try:
            claims = self.state.authority.verify_node_token(access_token)
        except AuthError as exc:
            raise Unauthorized(f"token refused: {exc.reason}") from None
        if claims.sub != self.name or claims.ws != self.workspace:
            raise InvalidParams("the new token names another node")
        self.token_exp = float(claims.exp)
        return AuthRefreshResult(int(claims.exp)).to_json()

    async def _on_notification(self, method: str, params: dict[str, Any]) -> None:
        if method == Method.TOOLS_LIST_CHANGED:
            # At most one tools/list in flight: notifications arriving meanwhile are coalesced into
            # one more fetch after it. In a task: the reply arrives through the read loop running this.
            if self._refetches:
                self._tools_stale = True
                return
            task = asyncio.create_task(self._refetch_tools())
            self._refetches.add(task)
            task.add_done_callback(self._refetches.discard)
        elif method == Method.APPROVALS:  # shown only: nothing here can answer (server.approvals)
            approvals.observe(self.entry, params)
        elif method == Method.MESSAGE:
            # Cut to one bounded line; control characters are escaped by the log formatter (server.limits).
            logger.info("node %s says: %.1000s", self.name, params.get("data"))

    async def _refetch_tools(self) -> None:
        while True:
            self._tools_stale = False
            try:
                tools = await self.rpc.request(Method.TOOLS_LIST)
            except RpcError:
                return
            if self.entry is not None:
                self.entry.set_tools(list(tools.get("tools", [])), self.state.registry.catalog)
                self.state.registry.publish("node.updated", self.entry)
            if not self._tools_stale:
                return
