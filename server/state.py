"""The server's state: one typed `ServerState` of named services, and `build_state`, which composes them.

Where it sits: above every service module (store, auth, registry, router, node directory, user
revocations, audit heads, artifacts, change feed), below every surface (tunnel, REST, RPC, MCP, planner,
OAuth, dashboard), which reach the state through ``app.state.cortex`` and import the type from here,
never from the composition root `server.app`. Nothing lives in module globals, so tests and several
apps can share one process.

Rules:

1. Each service is a named, typed field, built eagerly by `build_state`; there is no untyped bag of
   extras. The two surface services that need the running loop — `planner` and `mcp` — are None until
   the app's lifespan (`server.app.build_app`) sets them, before any request is served. They are typed by
   what the state needs of them (an ASGI app, `PlannerRuns`), so this module imports no surface, not
   even for type checking (no import cycle through the state: ``python3 -m bench.import_graph``).
2. Behaviour lives in the services: revocation of nodes in `NodeDirectory`, of users in
   `UserRevocations`; `change_handler` only routes a change from the feed to its owner.
3. The engines a deployment picks (the store, the registry, the change feed) are chosen here and typed by
   the interface callers use (`NodeRegistry`, `ChangeFeed`), so a shared implementation drops in.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from starlette.types import ASGIApp

from server.artifact_store import ArtifactLimits, DiskArtifactStore
from server.audit_heads import AuditHeads
from server.auth import TokenAuthority
from server.backoff import OAuthBackoff
from server.changes import Change, ChangeFeed, ChangeHandler, NodeEnrolled, NodeRevoked, SQLiteChangeFeed
from server.config import ServerConfig
from server.metrics import Metrics
from server.nodes import NodeDirectory
from server.registry import LocalRegistry, NodeLink, NodeRegistry
from server.router import Caller, CallRouter
from server.store import NodeRecord, Store, StoreUnavailable
from server.user_revocation import LiveCallers, UserRevocations
from spec.version import VERSION

logger = logging.getLogger(__name__)

__all__ = [
    "EnrolledNodes",
    "PlannerRuns",
    "ServerState",
    "build_state",
    "change_handler",
    "follow_enrollments",
]


class ClusterMember(Protocol):
    """What the state needs of this process's membership in a cluster of replicas
    (`server.cluster_registry.ClusterRegistry`, which is also the state's registry then)."""

    rid: str

    def local_link(self, name: str) -> NodeLink | None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def advertise(self, url: str) -> None: ...


class PlannerRuns(Protocol):
    """What the state promises of the planner service (`server.planner.PlannerService`, which narrows
    to its own type). Typed by this Protocol, not the class, so the state never depends on a surface."""

    def cancel(self, run_id: str, caller: Caller) -> bool: ...


@dataclass(eq=False)
class ServerState:
    config: ServerConfig
    store: Store
    authority: TokenAuthority
    registry: NodeRegistry
    router: CallRouter
    metrics: Metrics
    nodes: NodeDirectory
    users: UserRevocations
    live_callers: LiveCallers
    audit_heads: AuditHeads
    artifacts: DiskArtifactStore
    oauth_backoff: OAuthBackoff
    changes: ChangeFeed
    version: str = VERSION
    planner: PlannerRuns | None = None
    """Set in the lifespan (rule 1)."""
    mcp: ASGIApp | None = None
    """The `/mcp` endpoint (`server.mcp.McpEndpoint`), set in the lifespan (rule 1)."""
    cluster: ClusterMember | None = None
    """Set when this process is one replica of a cluster (``serve --redis-url``); None: embedded."""
    enrolled: EnrolledNodes | None = None
    """The enrolled nodes the registry lists before they connect (`follow_enrollments` keeps it)."""


async def build_state(config: ServerConfig, store: Store) -> ServerState:
    """Compose the services over *store* (opened by the caller, which closes it: `server.app`)."""
    enrolled = await store.list_nodes()
    metrics = Metrics()
    # Enrolled nodes as `follow_enrollments` last read them: the registry asks synchronously, and a node
    # revoked here or through the feed drops out at once, before the next read.
    known = EnrolledNodes(enrolled)

    def known_live() -> list[tuple[str, str]]:
        return known.live(nodes.is_revoked)

    registry: LocalRegistry
    cluster = None
    if config.redis_url:  # one replica of a cluster; without it, the embedded default below
        from server.cluster_registry import cluster_registry

        registry = cluster = cluster_registry(config, known_live, metrics)
    else:
        registry = LocalRegistry(known=known_live)
    nodes = NodeDirectory(store, registry, metrics, enrolled)  # handshakes look nodes up in memory
    live = LiveCallers()
    users = await UserRevocations.load(store, live)
    key = await store.load_or_create_signing_key()
    authority = TokenAuthority(
        key,
        issuer=config.issuer,
        node_ttl=config.node_token_ttl,
        is_revoked=nodes.is_revoked,
        is_user_revoked=users.covers,
        trusted=[k for k in await store.signing_keys() if k.kid != key.kid],  # the JWKS lists every key
    )
    if cluster is not None:
        cluster.use_authority(authority)  # replica links are signed with the shared key
    router = CallRouter(registry, metrics, config.default_call_timeout)
    heads = await AuditHeads.load(store, registry)
    registry.decorate = heads.decorate
    router.on_audit_head = heads.observe
    # The artifact store empties its directory now; the lifespan sweeps it.
    artifacts = DiskArtifactStore(
        config.data_dir / "artifacts",
        ArtifactLimits(
            ttl_s=config.artifact_ttl_s,
            node_bytes=config.artifact_node_bytes,
            total_bytes=config.artifact_total_bytes,
        ),
    )
    return ServerState(
        config=config,
        store=store,
        authority=authority,
        registry=registry,
        router=router,
        metrics=metrics,
        nodes=nodes,
        users=users,
        live_callers=live,
        audit_heads=heads,
        artifacts=artifacts,
        oauth_backoff=OAuthBackoff(config.oauth_client_backoff, config.oauth_address_backoff),
        changes=SQLiteChangeFeed(store, users.last_seq, config.revocation_poll_interval),
        cluster=cluster,
        enrolled=known,
    )


class EnrolledNodes:
    """The enrolled nodes' ``(name, workspace)``, refreshed from the store by `follow_enrollments`."""

    def __init__(self, records: list[NodeRecord]) -> None:
        self.set(records)

    def set(self, records: list[NodeRecord]) -> None:
        self._pairs = [(n.name, n.workspace) for n in records if n.revoked_at is None]

    def live(self, is_revoked: Callable[[str], bool]) -> list[tuple[str, str]]:
        return [(name, ws) for name, ws in self._pairs if not is_revoked(name)]


async def follow_enrollments(state: ServerState, interval: float) -> None:
    """Re-read the enrolled nodes every *interval* seconds (``enroll-node`` runs in other processes,
    other replicas enroll too), until cancelled. The store is async, the registry's ``known`` is not:
    this keeps the answer ready in memory."""
    while True:
        await asyncio.sleep(interval)
        try:
            records = await state.store.list_nodes()
        except StoreUnavailable:
            logger.warning("reading the enrolled nodes failed; retrying", exc_info=True)
            continue
        if state.enrolled is not None:
            state.enrolled.set(records)


def change_handler(state: ServerState) -> ChangeHandler:
    """Route each change from `state.changes` to the service that owns it (rule 2)."""

    async def apply(change: Change) -> None:
        if isinstance(change, NodeRevoked):
            await state.nodes.on_revoked(change.name)
        elif isinstance(change, NodeEnrolled):
            state.nodes.on_enrolled(change.record)
        else:
            await state.users.on_revoked(change.revocation)

    return apply
