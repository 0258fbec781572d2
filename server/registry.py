"""The node registry: which nodes exist, their live state, and the link to each connected one.

Layering: the tunnel (`server.tunnel`) attaches and detaches links; the router (`server.router`), the REST
API, the client RPC, MCP and the planner read from it. `NodeRegistry` is the interface every caller uses
(`ServerState.registry` has that type) and a shared (Redis-backed) registry implements for several
replicas; `LocalRegistry` is the in-process default and is checked against it by mypy.

Sync or async (the rule a shared implementation relies on):

- Writes that change who holds a node — `attach`, `detach`, `forget` — are async: a shared registry
  must record them in the shared engine (the holder's lease) before the caller goes on.
- Reads — `get`, `nodes`, `link`, `connected_count`, `catalog` — stay sync: they are on every call's
  and every listing's hot path, so a shared registry answers them from a local mirror that it keeps
  current from the engine's pub/sub. `link` returns a link to the node wherever it is held: this
  process's tunnel link, or in a cluster one through the holding replica (`server.replica_link`), so
  the router's one call path reaches every node; only the holder's own link closes the node. `learn`
  (an enrollment this process heard of) is sync and local: every replica hears it from the feed.
- `publish`, `subscribe` and `on_event` stay sync: publishing never waits for subscribers (rule 3); a
  shared registry fans the event out to other processes in the background.

Rules:
1. At most one link per node name. Attaching a second one returns the first, which the caller closes
   (code 4409): the newer connection wins.
2. Detaching a link that is no longer the current one changes nothing (the replaced link's late exit
   must not mark a live node disconnected).
3. Every state change is published to subscribers as ``(event, node_json)`` with event one of
   ``node.connected``, ``node.disconnected``, ``node.updated``. A slow subscriber loses its oldest
   events, it never grows memory or blocks the publisher.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from jsonschema import Draft202012Validator

from spec.manifest import schema_validator

logger = logging.getLogger(__name__)

__all__ = [
    "EventListener",
    "EventQueue",
    "LocalRegistry",
    "NodeEntry",
    "NodeLink",
    "NodeRegistry",
    "ToolCatalog",
    "rfc3339",
]


def rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class NodeLink(Protocol):
    """A live connection to one node, as the registry's users need it."""

    async def request(
        self, method: str, params: dict[str, Any] | None = None, *, on_progress: Any = None
    ) -> Any: ...

    async def close(self, code: int, reason: str) -> None: ...


@dataclass
class NodeEntry:
    name: str
    workspace: str
    status: str = "disconnected"
    connected_at: float | None = None
    last_seen: float | None = None
    rtt_ms: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
    tools: list[dict[str, Any]] = field(default_factory=list)
    audit_head: dict[str, Any] | None = None
    audit_warning: str | None = None
    audit: dict[str, Any] | None = None
    """The server's persisted view of the node's audit head, ``{seq, hash, status}`` (server.audit_heads)."""
    validators: dict[str, Draft202012Validator] = field(default_factory=dict, repr=False)
    approvals: list[dict[str, Any]] = field(default_factory=list)
    """Calls waiting for the node owner's approval, as the node last told (server.approvals)."""
    approvals_seq: int = 0

    def set_tools(self, tools: list[dict[str, Any]], catalog: ToolCatalog | None = None) -> None:
        if catalog is not None:
            self.tools, self.validators = catalog.intern(tools)
            return
        self.tools = tools
        self.validators = {t["name"]: schema_validator(t.get("inputSchema") or {}) for t in tools}

    def observe_audit_head(self, head: Any) -> None:
        """Note the node's audit head; flag the node if its log went backwards or was rewritten."""
        if not isinstance(head, dict) or not isinstance(head.get("seq"), int):
            return
        last = self.audit_head
        if last is not None:
            if head["seq"] < last["seq"]:
                self.audit_warning = (
                    f"audit log went backwards: head seq {head['seq']} after seq {last['seq']} was seen"
                )
            elif head["seq"] == last["seq"] and head.get("hash") != last.get("hash"):
                self.audit_warning = f"audit log rewritten: record {head['seq']} changed its hash"
            if self.audit_warning:
                logger.warning("node %s: %s", self.name, self.audit_warning)
        self.audit_head = {"seq": head["seq"], "hash": head.get("hash")}

    def tool(self, name: str) -> dict[str, Any] | None:
        return next((t for t in self.tools if t.get("name") == name), None)

    def to_json(self) -> dict[str, Any]:
        info = dict(self.info)
        if self.audit_head is not None:
            info["audit_head"] = self.audit_head
        if self.audit_warning:
            info["audit_warning"] = self.audit_warning
        return {
            "name": self.name,
            "workspace": self.workspace,
            "status": self.status,
            "connected_at": rfc3339(self.connected_at),
            "last_seen": rfc3339(self.last_seen),
            "rtt_ms": None if self.rtt_ms is None else round(self.rtt_ms, 3),
            "info": info,
            "tools": [t["name"] for t in self.tools],
            "audit": self.audit or {"seq": None, "hash": None, "status": "ok"},
        }


class ToolCatalog:
    """Identical tool declarations, kept once for every node that makes them.

    Most nodes run the same agent and declare the same tools: one shared list and one set of compiled
    validators instead of a copy per node (about 60 KB for the full manifest). The shared lists are
    read-only by convention, like every `NodeEntry.tools`. At most *size* distinct declarations are
    remembered; beyond that a new one is simply not shared.
    """

    def __init__(self, size: int = 1024) -> None:
        self._size = size
        self._known: dict[str, tuple[list[dict[str, Any]], dict[str, Draft202012Validator]]] = {}

    def intern(
        self, tools: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], dict[str, Draft202012Validator]]:
        key = json.dumps(tools, sort_keys=True, separators=(",", ":"))
        known = self._known.get(key)
        if known is None:
            known = (tools, {t["name"]: schema_validator(t.get("inputSchema") or {}) for t in tools})
            if len(self._known) < self._size:
                self._known[key] = known
        return known


EventListener = Callable[[str, NodeEntry], Awaitable[None] | None]
EventQueue = asyncio.Queue[tuple[str, dict[str, Any]]]


class NodeRegistry(Protocol):
    """What every caller uses of a registry (the module docstring says which methods are async and why)."""

    catalog: ToolCatalog
    """Shared tool declarations (`NodeEntry.set_tools`); per process, never shared between replicas."""

    def get(self, name: str) -> NodeEntry | None:
        """The node `name` (enrolled or seen), connected here, elsewhere, or not at all."""
        ...

    def nodes(self, workspace: str | None = None) -> list[NodeEntry]:
        """Every node (of `workspace`), sorted by name."""
        ...

    def link(self, name: str) -> NodeLink | None:
        """The live link to `name`: held here, or (in a cluster) through the replica holding it."""
        ...

    def connected_count(self) -> int: ...

    async def attach(self, entry: NodeEntry, link: NodeLink) -> NodeLink | None:
        """Make `link` the node's current link (rule 1); returns the replaced one, for the caller to close."""
        ...

    async def detach(self, name: str, link: NodeLink) -> bool:
        """Mark the node disconnected if `link` is still its current link (rule 2); True if it was."""
        ...

    async def forget(self, name: str) -> None:
        """Drop the node entirely (it was revoked)."""
        ...

    def learn(self, name: str, workspace: str) -> NodeEntry:
        """An enrolled node this process did not know (the change feed, or a miss that asked the store:
        server.node_lookup); listed as disconnected until it connects. Sync and local: every replica
        hears the enrollment from the feed itself. Returns the entry (the known one if there is one)."""
        ...

    def publish(self, event: str, entry: NodeEntry) -> None:
        """Tell subscribers and listeners about a change of `entry` (rule 3); never blocks."""
        ...

    def subscribe(self, maxsize: int = 256) -> AbstractContextManager[EventQueue]:
        """A bounded queue of ``(event, node_json)`` for as long as the context lasts (rule 3)."""
        ...

    def on_event(self, listener: EventListener) -> None:
        """Call ``listener(event, entry)`` on every change for the registry's lifetime."""
        ...


class LocalRegistry:
    """In-process registry (the embedded default). Enrolled-but-never-seen nodes come from `known`."""

    def __init__(
        self,
        known: Callable[[], list[tuple[str, str]]] | None = None,
        decorate: Callable[[NodeEntry], None] | None = None,
    ) -> None:
        self._entries: dict[str, NodeEntry] = {}
        self._links: dict[str, NodeLink] = {}
        self._subscribers: set[asyncio.Queue[tuple[str, dict[str, Any]]]] = set()
        self._known = known
        self.decorate = decorate
        """Called on every entry made from `known` (the app gives it the node's persisted audit head)."""
        self._listeners: list[EventListener] = []
        self.catalog = ToolCatalog()
        self._pending: set[asyncio.Future[None]] = set()

    def _load_known(self) -> None:
        # Read once, on first use (after the app has set `decorate`). Later enrollments and
        # revocations, made in this process or another, arrive through the change feed (`learn`,
        # `forget`; server.changes), and a miss in between asks the store (server.node_lookup): the
        # registry never re-reads the store on a timer.
        if self._known is None:
            return
        known, self._known = self._known, None
        for name, workspace in known():
            self.learn(name, workspace)

    def learn(self, name: str, workspace: str) -> NodeEntry:
        """An enrolled node this registry did not know yet (enrolled elsewhere): listed as disconnected."""
        self._load_known()
        entry = self._entries.get(name)
        if entry is None:
            entry = self._entries[name] = NodeEntry(name=name, workspace=workspace)
            if self.decorate is not None:
                self.decorate(entry)
        return entry

    def get(self, name: str) -> NodeEntry | None:
        entry = self._entries.get(name)
        if entry is None and self._known is not None:
            self._load_known()
            entry = self._entries.get(name)
        return entry

    def nodes(self, workspace: str | None = None) -> list[NodeEntry]:
        self._load_known()
        return sorted(
            (e for e in self._entries.values() if workspace is None or e.workspace == workspace),
            key=lambda e: e.name,
        )

    async def forget(self, name: str) -> None:
        """Drop a node entirely (revoked)."""
        self._entries.pop(name, None)

    def link(self, name: str) -> NodeLink | None:
        return self._links.get(name)

    def connected_count(self) -> int:
        return len(self._links)

    async def attach(self, entry: NodeEntry, link: NodeLink) -> NodeLink | None:
        old = self._links.get(entry.name)
        self._entries[entry.name] = entry
        self._links[entry.name] = link
        now = time.time()
        entry.status, entry.connected_at, entry.last_seen = "connected", now, now
        self.publish("node.connected", entry)
        return old

    async def detach(self, name: str, link: NodeLink) -> bool:
        if self._links.get(name) is not link:
            return False
        del self._links[name]
        entry = self._entries.get(name)
        if entry is not None:
            entry.status = "disconnected"
            entry.rtt_ms = None
            self.publish("node.disconnected", entry)
        return True

    def on_event(self, listener: EventListener) -> None:
        """Call `listener(event, entry)` on every change (used by MCP's list_changed and metrics)."""
        self._listeners.append(listener)

    def publish(self, event: str, entry: NodeEntry) -> None:
        # Every heartbeat publishes: build the JSON only when someone listens (usually nobody does).
        if self._subscribers:
            data = entry.to_json()
            for queue in self._subscribers:
                if queue.full():
                    queue.get_nowait()
                queue.put_nowait((event, data))
        for listener in self._listeners:
            outcome = listener(event, entry)
            if outcome is not None:
                task = asyncio.ensure_future(outcome)
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)

    @contextmanager
    def subscribe(self, maxsize: int = 256) -> Iterator[EventQueue]:
        queue: EventQueue = asyncio.Queue(maxsize)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)


if TYPE_CHECKING:
    _LOCAL_IS_A_REGISTRY: NodeRegistry = LocalRegistry()  # mypy: LocalRegistry satisfies NodeRegistry
