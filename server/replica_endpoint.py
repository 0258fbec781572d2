"""The holder's side of a replica link: ``WS /api/v1/cluster/link`` (rules in `server.replica_link`).

Where it sits: a surface beside the tunnel and the client RPC, added to the app by `server.app`. Another
replica of the cluster connects here with a replica token and asks for `tools/call`, `tools/list` or
`audit/read` on a node this replica holds; the answer, its progress and its cancellation travel back
over the same link. Without ``--redis-url`` every connection is refused (404). A caller offering
``cortex.cluster.v2`` gets frames of several messages both ways (`spec.frames`); one offering
only ``cortex.cluster.v1`` one message a frame.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket

from server.auth import AuthError
from server.identity import denial
from server.progress import ProgressPump
from server.replica_link import (
    BATCHED_LINK_SUBPROTOCOL,
    LINK_SUBPROTOCOL,
    MAX_RELAYED,
    RELAYED_METHODS,
    REPLICA_HEADER,
    replica_gone_error,
)
from server.ws_link import StarletteLink
from spec.errors import INVALID_PARAMS, NodeNotConnected, RpcError
from spec.frames import BatchedLink
from spec.link import pump
from spec.session import CallContext, RpcSession, make_methods

if TYPE_CHECKING:
    from server.state import ServerState

__all__ = ["link_endpoint"]

logger = logging.getLogger(__name__)


async def link_endpoint(websocket: WebSocket) -> None:
    state: ServerState = websocket.app.state.cortex
    registry = state.cluster
    authorization = str(websocket.headers.get("authorization", ""))
    scheme, _, token = authorization.partition(" ")
    offered = websocket.scope.get("subprotocols", [])
    if registry is None or not (LINK_SUBPROTOCOL in offered or BATCHED_LINK_SUBPROTOCOL in offered):
        await websocket.send_denial_response(denial(404, "not_clustered", "no replica links here"))
        return
    try:
        if scheme.lower() != "bearer":
            raise AuthError("missing_token")
        peer = state.authority.verify_replica_token(token.strip())
    except AuthError as exc:
        logger.info("cluster: replica link refused: %s", exc.reason)
        await websocket.send_denial_response(denial(exc.status, "unauthorized", "invalid replica token"))
        return
    if websocket.headers.get(REPLICA_HEADER, registry.rid) != registry.rid:
        await websocket.send_denial_response(denial(421, "wrong_replica", "this is another replica"))
        return
    # Several messages a frame when the caller speaks it (spec.frames rule 1).
    batched = BATCHED_LINK_SUBPROTOCOL in offered
    await websocket.accept(subprotocol=BATCHED_LINK_SUBPROTOCOL if batched else LINK_SUBPROTOCOL)

    plain = StarletteLink(websocket)
    link: StarletteLink | BatchedLink = plain
    if batched:  # frames joined up to the frame limit, as the caller's end does (server.replica_link)
        link = BatchedLink(
            plain, name=f"replica-frames:from:{peer}", frame_bytes=state.config.max_frame_bytes
        )

    async def node_request(ctx: CallContext, node: str, method: str, params: dict[str, Any]) -> Any:
        # The method's type before the set lookup: a list or an object there is a TypeError (-32603).
        relayed = isinstance(method, str) and method in RELAYED_METHODS
        if not relayed or not isinstance(params, dict) or not isinstance(node, str):
            raise RpcError(INVALID_PARAMS, "not a method a replica relays", {"reason": "not_relayed"})
        link = registry.local_link(node)
        if link is None:
            raise NodeNotConnected(f"node {node!r} is not connected")
        pump: ProgressPump | None = None
        if ctx.progress_token is not None:

            async def forward(update: dict[str, Any]) -> None:
                message = update.get("message")
                await ctx.progress(
                    update.get("progress", 0),
                    update.get("total"),
                    message if isinstance(message, str) else None,
                )

            pump = ProgressPump(forward)
        try:
            result = await link.request(method, params, on_progress=pump.push if pump is not None else None)
            if pump is not None:
                await pump.drain()
            return result
        finally:
            if pump is not None:
                pump.close()

    session = RpcSession(
        link.send, make_methods({"node/request": node_request}), name=f"from:{peer}", max_incoming=MAX_RELAYED
    )
    try:
        await pump(link, session)  # a lone relayed call starts in the pass that read it (spec.link)
    finally:
        # Cancels its calls on the nodes (rule 5).
        session.close(replica_gone_error(peer, "the calling replica left"))
        if isinstance(link, BatchedLink):
            await link.writer.close()
