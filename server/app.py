"""The server's composition root: `build_app(config)` returns one Starlette app with every endpoint.

All state lives in a `ServerState` built in the app's lifespan and reached through
``app.state.cortex`` — never in module globals — so tests and several apps can share one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute

from server import api, artifacts, dashboard, fleet, oauth, planner
from server import mcp as mcp_surface
from server.auth import TokenAuthority
from server.config import ServerConfig
from server.metrics import Metrics
from server.registry import LocalRegistry
from server.router import CallRouter
from server.rpc import rpc_endpoint
from server.store import NodeRecord, ServerStore, SQLiteRevocationFeed
from server.tunnel import node_endpoint

__all__ = ["VERSION", "ServerState", "build_app"]

logger = logging.getLogger(__name__)

VERSION = "0.1.0"


@dataclass
class ServerState:
    config: ServerConfig
    store: ServerStore
    authority: TokenAuthority
    registry: LocalRegistry
    router: CallRouter
    metrics: Metrics
    revoked: set[str] = field(default_factory=set)
    node_records: dict[str, NodeRecord] = field(default_factory=dict)
    version: str = VERSION
    extras: dict[str, Any] = field(default_factory=dict)

    async def node_record(self, name: str) -> NodeRecord | None:
        """The enrolled node `name`, from memory when it was seen before (the handshake's hot path).

        Revocations reach this process through the revocation feed (within its poll interval), which
        also drops the cached record; a revoked node's tokens already fail `is_revoked` from then on.
        """
        record = self.node_records.get(name)
        if record is None:
            record = await asyncio.to_thread(self.store.get_node, name)
            if record is not None and record.revoked_at is None:
                self.node_records[name] = record
        return record

    async def on_revoked(self, name: str) -> None:
        self.revoked.add(name)
        self.node_records.pop(name, None)
        link = self.registry.link(name)
        if link is not None:
            await link.close(4403, "node revoked")
            # Detach before forgetting the entry, or subscribers never see node.disconnected (the
            # session's own detach would find no entry to publish); it then finds nothing to do.
            if self.registry.detach(name, link):
                self.metrics.node_disconnected()
        self.registry.forget(name)
        logger.info("node %s revoked", name)


def build_state(config: ServerConfig) -> ServerState:
    store = ServerStore(config.data_dir)
    enrolled = store.list_nodes()
    revoked = {n.name for n in enrolled if n.revoked_at is not None}
    authority = TokenAuthority(
        store.load_or_create_signing_key(),
        issuer=config.issuer,
        node_ttl=config.node_token_ttl,
        is_revoked=revoked.__contains__,
    )
    metrics = Metrics()
    registry = LocalRegistry(
        known=lambda: [(n.name, n.workspace) for n in store.list_nodes() if n.revoked_at is None]
    )
    router = CallRouter(registry, metrics, config.default_call_timeout)
    live = {n.name: n for n in enrolled if n.revoked_at is None}  # handshakes look nodes up in memory
    return ServerState(config, store, authority, registry, router, metrics, revoked, live)


def build_app(config: ServerConfig) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state = build_state(config)
        app.state.cortex = state
        feed = SQLiteRevocationFeed(state.store, interval=config.revocation_poll_interval)
        watcher = asyncio.create_task(feed.watch(state.on_revoked), name="revocations")
        state.extras["planner"] = planner.PlannerService.from_env(state)
        try:
            async with mcp_surface.serving(state):
                yield
        finally:
            watcher.cancel()
            for entry in state.registry.nodes():
                link = state.registry.link(entry.name)
                if link is not None:
                    await link.close(1001, "server shutting down")
            state.store.close()

    routes: list[Any] = [
        Route("/oauth/token", oauth.token_endpoint, methods=["POST"]),
        WebSocketRoute("/api/v1/nodes/connect", node_endpoint),
        WebSocketRoute("/api/v1/rpc", rpc_endpoint),
        *fleet.routes(),  # before api's: POST/DELETE on paths api serves with GET
        *api.routes(),
        *mcp_surface.routes(),
        *planner.routes(),
        *artifacts.routes(),
        *dashboard.routes(),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
