"""The node registry: which nodes exist, their live state, and the link to each connected one.

Layering: the tunnel (`server.tunnel`) attaches and detaches links; the router (`server.router`), the REST
API, the client RPC, MCP and the planner read from it. `NodeRegistry` is the small interface a shared
(Redis-backed) registry will implement for several replicas; `LocalRegistry` is the in-process default.

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
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from jsonschema import Draft202012Validator

from spec.manifest import schema_validator

logger = logging.getLogger(__name__)

__all__ = ["LocalRegistry", "NodeEntry", "NodeLink", "NodeRegistry", "ToolCatalog", "rfc3339"]


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


class NodeRegistry(Protocol):
    def get(self, name: str) -> NodeEntry | None: ...

    def nodes(self, workspace: str | None = None) -> list[NodeEntry]: ...

    def link(self, name: str) -> NodeLink | None: ...

    def attach(self, entry: NodeEntry, link: NodeLink) -> NodeLink | None: ...

    def detach(self, name: str, link: NodeLink) -> bool: ...

    def publish(self, event: str, entry: NodeEntry) -> None: ...

    def subscribe(self) -> Any: ...

    def connected_count(self) -> int: ...


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
        self._listeners: list[Callable[[str, NodeEntry], Awaitable[None] | None]] = []
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

    def forget(self, name: str) -> None:
        """Drop a node entirely (revoked)."""
        self._entries.pop(name, None)

    def link(self, name: str) -> NodeLink | None:
        return self._links.get(name)

    def connected_count(self) -> int:
        return len(self._links)

    def attach(self, entry: NodeEntry, link: NodeLink) -> NodeLink | None:
        old = self._links.get(entry.name)
        self._entries[entry.name] = entry
        self._links[entry.name] = link
        now = time.time()
        entry.status, entry.connected_at, entry.last_seen = "connected", now, now
        self.publish("node.connected", entry)
        return old

    def detach(self, name: str, link: NodeLink) -> bool:
        if self._links.get(name) is not link:
            return False
        del self._links[name]
        entry = self._entries.get(name)
        if entry is not None:
            entry.status = "disconnected"
            entry.rtt_ms = None
            self.publish("node.disconnected", entry)
        return True

    def on_event(self, listener: Callable[[str, NodeEntry], Awaitable[None] | None]) -> None:
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
    def subscribe(self, maxsize: int = 256) -> Iterator[asyncio.Queue[tuple[str, dict[str, Any]]]]:
        queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(maxsize)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)
