"""The server's composition root: `build_app(config)` returns one Starlette app with every endpoint.

It only wires: the routes, and a lifespan that builds the `server.state.ServerState` (reached through
``app.state.cortex``), starts the change feed, the artifact sweeper, the planner and MCP, and on
shutdown closes every node link and the store. Surfaces never import this module (tests/test_layering).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route, WebSocketRoute

from server import api, artifacts, dashboard, fleet, oauth, planner
from server import mcp as mcp_surface
from server.config import ServerConfig
from server.limits import BodyLimits, Limits
from server.replica_endpoint import link_endpoint
from server.replica_link import LINK_PATH
from server.rpc import rpc_endpoint
from server.state import build_state, change_handler
from server.stores import open_store
from server.tunnel import node_endpoint
from spec.protocol import RPC_PATH, TUNNEL_PATH

__all__ = ["build_app"]

logger = logging.getLogger(__name__)


def build_app(config: ServerConfig) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        store = await open_store(config.database_url, config.data_dir)
        try:
            state = await build_state(config, store)
        except BaseException:
            await store.close()
            raise
        app.state.cortex = state
        watcher = asyncio.create_task(state.changes.watch(change_handler(state)), name="changes")
        sweeper = asyncio.create_task(state.artifacts.sweep_every(60.0), name="artifacts")
        state.planner = planner.PlannerService.from_env()
        if state.cluster is not None:  # one replica of a cluster: join it before serving
            await state.cluster.start()
        try:
            async with mcp_surface.serving(state):
                yield
        finally:
            watcher.cancel()
            sweeper.cancel()
            for entry in state.registry.nodes():
                link = state.registry.link(entry.name)
                if link is not None:
                    await link.close(1001, "server shutting down")
            if state.cluster is not None:
                await state.cluster.stop()
            await state.engines.aclose()
            await state.store.close()

    routes: list[Any] = [
        Route("/oauth/token", oauth.token_endpoint, methods=["POST"]),
        WebSocketRoute(TUNNEL_PATH, node_endpoint),
        WebSocketRoute(RPC_PATH, rpc_endpoint),
        WebSocketRoute(LINK_PATH, link_endpoint),  # replica links; refused unless clustered
        *fleet.routes(),  # before api's: POST/DELETE on paths api serves with GET
        *api.routes(),
        *mcp_surface.routes(),
        *planner.routes(),
        *artifacts.routes(),
        *dashboard.routes(),
    ]
    limits = Limits(frame_bytes=config.max_frame_bytes)  # bodies and JSON: see server.limits
    return Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(BodyLimits, limits=limits)])
