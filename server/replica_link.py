"""Calls to a node held by another replica: a WebSocket link between replicas, below the `CallRouter`.

Where it sits: `server.cluster_registry.ClusterRegistry.link` hands the router a `RemoteLink` for a
node held elsewhere; its `request` goes over a `ReplicaLinks` connection to the holding replica's
``WS /api/v1/cluster/link`` (`server.replica_endpoint`), whose handler runs it on the local tunnel
link — so every surface still calls through the one `CallRouter` (workspace, schema, timeout and
metrics stay on the caller's replica), and the holder only relays. Both ends run
`spec.session.RpcSession`, which already carries progress and cancellation end to end.

Why a direct link and not Redis (measured, `bench/cluster_bench.py` and the commit message): the same
RpcSession echo between two processes took ~165 µs p50 and ~32k calls/s with 64 in flight over a
WebSocket, ~290 µs and ~9k calls/s over Redis pub/sub (two hops through one more process).

Rules:
1. A replica link is opened with ``Authorization: Bearer`` a replica token (audience
   ``cortex-replica``, 60 s, signed with the cluster's shared signing key): no extra secret exists.
   The address dialled is the one the holder advertised in its Redis lease.
2. Only ``tools/call``, ``tools/list`` and ``audit/read`` may be relayed, to a node this replica holds;
   a node it does not hold (any more) is NODE_NOT_FOUND ``not_connected``, as on one process.
3. Errors cross unchanged (code, message, data): the caller gets what a local call would give.
4. The link to a replica fails every call in flight on it with NODE_DISCONNECTED (retryable false)
   when it drops, or when the replica's lease lapses (`ReplicaLinks.replica_gone`): a dead holder's
   calls fail at their callers within the lease, not at their timeouts.
5. A caller that goes away (its replica dies, or it cancels) cancels the call on the node.
6. Progress is forwarded by a `ProgressPump`: a slow replica link never stalls the node's link.
7. A request that would be over the holder's frame limit once wrapped is refused before it is sent
   (INVALID_PARAMS ``invalid_arguments``, REST 422): it never closes the link other calls share.
8. Both ends join the messages of one loop iteration into shared frames when the holder speaks
   ``cortex.cluster.v2`` (`spec.frames`): one send per iteration instead of one per message,
   which was most of a relayed call's cost at 64 in flight; the frames of one loop pass then leave in
   one send (`spec.coalesce`, as on every link). A frame that cannot be written fails the calls on the
   link (rule 4) and the next call opens a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol

import websockets
from websockets.asyncio.client import ClientConnection, connect

from server.auth import TokenAuthority
from spec.coalesce import CoalescingClientConnection
from spec.errors import NODE_DISCONNECTED, InvalidArguments, RpcError
from spec.frames import FrameWriter, feed_frame
from spec.protocol import Method
from spec.session import RpcSession, make_methods

__all__ = [
    "BATCHED_LINK_SUBPROTOCOL",
    "LINK_PATH",
    "LINK_SUBPROTOCOL",
    "MAX_RELAYED",
    "RELAYED_METHODS",
    "REPLICA_HEADER",
    "RemoteLink",
    "ReplicaDirectory",
    "ReplicaLinks",
    "replica_gone_error",
]

logger = logging.getLogger(__name__)

LINK_PATH = "/api/v1/cluster/link"
LINK_SUBPROTOCOL = "cortex.cluster.v1"
BATCHED_LINK_SUBPROTOCOL = "cortex.cluster.v2"
"""A replica link whose frames may carry several messages (rule 8, `spec.frames`)."""
RELAYED_METHODS = frozenset({Method.TOOLS_CALL, Method.TOOLS_LIST, Method.AUDIT_READ})
MAX_RELAYED = 4096
"""Calls one replica may have running through another at once (beyond: -32012 overloaded)."""
CONNECT_TIMEOUT = 5.0
REPLICA_HEADER = "X-Cortex-Replica"
"""The replica id the caller expects to reach; the holder refuses (421) a link meant for another."""


class ReplicaDirectory(Protocol):
    """Where the other replicas are (`server.cluster_registry.ClusterRegistry`)."""

    rid: str

    async def replica_url(self, rid: str) -> str | None: ...


def replica_gone_error(rid: str, why: str) -> RpcError:
    return RpcError(
        NODE_DISCONNECTED, f"the replica holding the node is gone ({rid}: {why})", {"retryable": False}
    )


class RemoteLink:
    """`server.registry.NodeLink` for a node held by replica `rid`."""

    def __init__(self, links: ReplicaLinks, rid: str, name: str) -> None:
        self._links = links
        self.rid = rid
        self.name = name

    async def request(
        self, method: str, params: dict[str, Any] | None = None, *, on_progress: Any = None
    ) -> Any:
        session = await self._links.session(self.rid)
        return await session.request(
            "node/request",
            {"node": self.name, "method": method, "params": params or {}},
            on_progress=on_progress,
        )

    async def close(self, code: int, reason: str) -> None:
        """Nothing: only the holder closes a node's link (revocation reaches it through its own feed)."""


class _Outgoing:
    def __init__(self, ws: ClientConnection, session: RpcSession, writer: FrameWriter | None) -> None:
        self.ws = ws
        self.session = session
        self.writer = writer  # on a batched link (spec.frames)
        self.reader: asyncio.Task[None] | None = None

    def shut(self, exc: RpcError) -> None:
        """Fail the calls in flight and stop reading and writing (the socket is closed by the caller)."""
        self.session.close(exc)
        if self.reader is not None:
            self.reader.cancel()
        if self.writer is not None:
            task = asyncio.ensure_future(self.writer.close())
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)


class ReplicaLinks:
    """This replica's links to the others, opened on first use and reopened after a drop."""

    def __init__(self, registry: ReplicaDirectory, authority: TokenAuthority, max_frame_bytes: int) -> None:
        self._registry = registry
        self._authority = authority
        self._max_size = max_frame_bytes + 64 * 1024
        self._frame_bytes = max_frame_bytes
        self._links: dict[str, _Outgoing] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def session(self, rid: str) -> RpcSession:
        current = self._links.get(rid)
        if current is not None and not current.session.closed:
            return current.session
        lock = self._locks.setdefault(rid, asyncio.Lock())
        async with lock:
            current = self._links.get(rid)
            if current is not None and not current.session.closed:
                return current.session
            return (await self._open(rid)).session

    async def _open(self, rid: str) -> _Outgoing:
        url = await self._registry.replica_url(rid)
        if url is None:
            raise replica_gone_error(rid, "no lease")
        ws_url = url.replace("https://", "wss://", 1).replace("http://", "ws://", 1).rstrip("/") + LINK_PATH
        token = self._authority.mint_replica_token(self._registry.rid)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                ws = await connect(
                    ws_url,
                    # The holder refuses the link if it is not `rid` (a new process on a dead one's port).
                    additional_headers={"Authorization": f"Bearer {token}", REPLICA_HEADER: rid},
                    # Batched frames when the holder speaks them, else one message a frame (frames rule 1).
                    subprotocols=[BATCHED_LINK_SUBPROTOCOL, LINK_SUBPROTOCOL],  # type: ignore[list-item]
                    compression=None,
                    max_size=self._max_size,
                    ping_interval=None,  # liveness is the lease (rule 4)
                    create_connection=CoalescingClientConnection,  # the frames of one loop pass, one send
                    open_timeout=CONNECT_TIMEOUT,
                )
        except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
            raise replica_gone_error(rid, f"unreachable: {type(exc).__name__}") from None
        limit = self._frame_bytes
        writer: FrameWriter | None = None
        if ws.subprotocol == BATCHED_LINK_SUBPROTOCOL:
            writer = FrameWriter(
                ws.send,
                limit,
                name=f"replica-frames:{rid}",
                on_error=lambda exc: self._write_failed(rid, link),
            )
        write = ws.send if writer is None else writer.send

        async def send(text: str) -> None:
            # The holder takes frames up to the frame limit, like every endpoint: one over it would close
            # the link for every call on it, so it is refused here, for its own caller only (rule 7).
            if len(text) * 4 > limit and len(text.encode()) > limit:
                raise InvalidArguments(
                    f"the request is over the frame limit ({limit} bytes) once wrapped for the replica link",
                    {"problem": "too large"},
                )
            try:
                await write(text)
            except (websockets.ConnectionClosed, ConnectionError):
                raise replica_gone_error(rid, "link closed") from None

        session = RpcSession(send, make_methods({}), name=f"replica:{rid}")
        link = _Outgoing(ws, session, writer)
        link.reader = asyncio.create_task(self._read(rid, link), name=f"replica-link:{rid}")
        self._links[rid] = link
        logger.info("cluster: link to replica %s open (%s, %s)", rid, url, ws.subprotocol)
        return link

    async def _read(self, rid: str, link: _Outgoing) -> None:
        batched = link.writer is not None
        try:
            async for frame in link.ws:
                if batched:
                    await feed_frame(frame, link.session.feed)
                else:
                    await link.session.feed(frame)
        except websockets.ConnectionClosed:
            pass
        finally:
            link.session.close(replica_gone_error(rid, "link closed"))
            if link.writer is not None:
                await link.writer.close()
            if self._links.get(rid) is link:
                del self._links[rid]

    def _write_failed(self, rid: str, link: _Outgoing) -> None:
        """A frame could not be written: the calls on the link fail now, and the next call reopens it."""
        if self._links.get(rid) is link:
            del self._links[rid]
        link.shut(replica_gone_error(rid, "link write failed"))
        task = asyncio.ensure_future(link.ws.close())
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    def replica_gone(self, rid: str) -> None:
        """The replica's lease lapsed: fail its calls now, whatever its socket still says (rule 4)."""
        link = self._links.pop(rid, None)
        self._locks.pop(rid, None)
        if link is None:
            return
        link.shut(replica_gone_error(rid, "lease lapsed"))
        task = asyncio.ensure_future(link.ws.close())
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def close(self) -> None:
        for rid in list(self._links):
            link = self._links.pop(rid)
            link.shut(replica_gone_error(rid, "this replica is stopping"))
            with contextlib.suppress(Exception):
                await link.ws.close()
