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

from dataclasses import dataclass
from typing import Protocol

from starlette.types import ASGIApp

from server.artifact_store import ArtifactLimits, ArtifactStore, DiskArtifactStore
from server.audit_heads import AuditHeads
from server.auth import TokenAuthority
from server.backoff import OAuthBackoff
from server.changes import (
    Change,
    ChangeFeed,
    ChangeHandler,
    NodeEnrolled,
    NodeRevoked,
    UserRevoked,
)
from server.config import ServerConfig
from server.metrics import Metrics
from server.node_lookup import NodeLookup
from server.nodes import NodeDirectory
from server.registry import LocalRegistry, NodeLink, NodeRegistry
from server.router import Caller, CallRouter
from server.shared_state import SharedEngines
from server.store import NodeRecord, Store
from server.user_revocation import LiveCallers, UserRevocations
from spec.version import VERSION

__all__ = [
    "PlannerRuns",
    "ServerState",
    "build_state",
    "change_handler",
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
    artifacts: ArtifactStore
    oauth_backoff: OAuthBackoff
    changes: ChangeFeed
    engines: SharedEngines
    """The shared engines' clients (none in the embedded default); closed by the lifespan."""
    version: str = VERSION
    planner: PlannerRuns | None = None
    """Set in the lifespan (rule 1)."""
    mcp: ASGIApp | None = None
    """The `/mcp` endpoint (`server.mcp.McpEndpoint`), set in the lifespan (rule 1)."""
    cluster: ClusterMember | None = None
    """Set when this process is one replica of a cluster (``serve --redis-url``); None: embedded."""


async def build_state(config: ServerConfig, store: Store) -> ServerState:
    """Compose the services over *store* (opened by the caller, which closes it: `server.app`)."""
    enrollment_after = await store.last_enrollment_seq()  # before the list: a later one is fed, not lost
    enrolled = await store.list_nodes()
    metrics = Metrics()

    # The enrolled nodes as the store had them now; later enrollments come from the change feed
    # (`registry.learn`), revocations drop names at once (`nodes.is_revoked`).
    def known_live() -> list[tuple[str, str]]:
        return [(n.name, n.workspace) for n in enrolled if not n.revoked and not nodes.is_revoked(n.name)]

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
    engines = SharedEngines.open(config)  # embedded or shared twins of each service (server.shared_state)
    router = CallRouter(registry, metrics, config.default_call_timeout)
    router.recent = engines.recent_calls()

    async def fetch_node(name: str) -> NodeRecord | None:
        return await store.get_node(name)

    router.lookup = NodeLookup(registry, fetch_node)  # a miss asks the store (server.node_lookup)
    heads = await AuditHeads.load(store, registry)
    registry.decorate = heads.decorate
    router.on_audit_head = heads.observe
    # The artifact store empties its directory now; the lifespan sweeps it.
    limits = ArtifactLimits(
        ttl_s=config.artifact_ttl_s,
        node_bytes=config.artifact_node_bytes,
        total_bytes=config.artifact_total_bytes,
    )
    shared_artifacts = engines.artifacts(limits)  # (a store has a length: an empty one is falsy)
    artifacts = (
        shared_artifacts
        if shared_artifacts is not None
        else DiskArtifactStore(config.data_dir / "artifacts", limits)
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
        oauth_backoff=engines.oauth_backoff(config),
        changes=engines.change_feed(
            config,
            store,
            revocation_after=await store.last_revocation_seq(),
            user_after=users.last_seq,
            enrollment_after=enrollment_after,
        ),
        engines=engines,
        cluster=cluster,
    )


def change_handler(state: ServerState) -> ChangeHandler:
    """Route each change from `state.changes` to the service that owns it (rule 2)."""

    async def apply(change: Change) -> None:
        if isinstance(change, NodeRevoked):
            await state.nodes.on_revoked(change.name)
        elif isinstance(change, NodeEnrolled):
            state.nodes.on_enrolled(change.record)
            state.registry.learn(change.record.name, change.record.workspace)
            if state.router.lookup is not None:
                state.router.lookup.forget_miss(change.record.name)
        elif isinstance(change, UserRevoked):
            await state.users.on_revoked(change.revocation)
        else:
            state.audit_heads.apply(change.head)

    return apply
