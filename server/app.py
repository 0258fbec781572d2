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
from starlette.middleware import Middleware
from starlette.routing import Route, WebSocketRoute

from server import api, artifacts, dashboard, fleet, oauth, planner
from server import mcp as mcp_surface
from server.artifact_store import artifact_store
from server.audit_heads import AuditHeads
from server.auth import TokenAuthority
from server.config import ServerConfig
from server.limits import BodyLimits, Limits
from server.metrics import Metrics
from server.node_lookup import NodeLookup
from server.registry import LocalRegistry
from server.router import CallRouter
from server.rpc import live_callers as rpc_live_callers
from server.rpc import rpc_endpoint
from server.store import NodeRecord, ServerStore, SQLiteRevocationFeed, UserRevocation
from server.tunnel import node_endpoint
from server.user_revocation import SQLiteUserRevocationFeed, UserRevocations
from spec.version import VERSION

__all__ = ["VERSION", "ServerState", "build_app"]

logger = logging.getLogger(__name__)


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

    async def on_user_revoked(self, revocation: UserRevocation) -> None:
        """``revoke-user`` ran (here or in another process): refuse the tokens, close the live links."""
        users = self.extras["user_revocations"]
        assert isinstance(users, UserRevocations)
        users.apply(revocation)
        await rpc_live_callers(self).revoke(revocation)


def build_state(config: ServerConfig) -> ServerState:
    store = ServerStore(config.data_dir)
    enrolled = store.list_nodes()
    revoked = {n.name for n in enrolled if n.revoked_at is not None}
    users = UserRevocations.load(store)
    authority = TokenAuthority(
        store.load_or_create_signing_key(),
        issuer=config.issuer,
        node_ttl=config.node_token_ttl,
        is_revoked=revoked.__contains__,
        is_user_revoked=users.covers,
    )
    metrics = Metrics()
    registry = LocalRegistry(
        known=lambda: [(n.name, n.workspace) for n in store.list_nodes() if n.revoked_at is None]
    )
    router = CallRouter(registry, metrics, config.default_call_timeout)

    async def fetch_node(name: str) -> NodeRecord | None:
        return await asyncio.to_thread(store.get_node, name)

    router.lookup = NodeLookup(registry, fetch_node)
    live = {n.name: n for n in enrolled if n.revoked_at is None}  # handshakes look nodes up in memory
    state = ServerState(config, store, authority, registry, router, metrics, revoked, live)
    state.extras["user_revocations"] = users
    heads = AuditHeads(store, registry)
    registry.decorate = heads.decorate
    router.on_audit_head = heads.observe
    state.extras["audit_heads"] = heads
    return state


def build_app(config: ServerConfig) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state = build_state(config)
        app.state.cortex = state
        feed = SQLiteRevocationFeed(state.store, interval=config.revocation_poll_interval)
        watcher = asyncio.create_task(feed.watch(state.on_revoked), name="revocations")
        user_feed = SQLiteUserRevocationFeed(
            state.store, state.extras["user_revocations"].last_seq, config.revocation_poll_interval
        )
        user_watcher = asyncio.create_task(user_feed.watch(state.on_user_revoked), name="user-revocations")
        # The artifact store is made now (it empties its directory) and swept every minute.
        sweeper = asyncio.create_task(artifact_store(state).sweep_every(60.0), name="artifacts")
        state.extras["planner"] = planner.PlannerService.from_env(state)
        try:
            async with mcp_surface.serving(state):
                yield
        finally:
            watcher.cancel()
            user_watcher.cancel()
            sweeper.cancel()
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
    limits = Limits(frame_bytes=config.max_frame_bytes)  # bodies and JSON: see server.limits
    return Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(BodyLimits, limits=limits)])
