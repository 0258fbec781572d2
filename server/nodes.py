"""The node directory: which enrolled nodes are live or revoked, and what revoking one does here.

Where it sits: above `server.store` (the enrolled records) and `server.registry` (the live links), below
every surface. The tunnel asks `NodeDirectory.node_record` on each handshake, `server.auth` asks
`is_revoked` about every node token, ``POST /oauth/token`` asks `is_enrolled` (which back-off table
applies), and the change feed (`server.changes`) or the fleet API calls `on_revoked`/`on_enrolled`.

Rules:

1. A live node's record is kept in memory once seen, so the handshake's hot path reads no database;
   a revoked record is never cached.
2. A revocation, from wherever it came, adds the name to the revoked set (its tokens fail from then
   on), drops its cached record, closes its live link with 4403 and forgets its registry entry.
3. The link is detached before the entry is forgotten, so subscribers see ``node.disconnected``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from server.metrics import Metrics
from server.registry import NodeRegistry
from server.store import NodeRecord, Store

__all__ = ["NodeDirectory"]

logger = logging.getLogger(__name__)


class NodeDirectory:
    """Revoked names and live records of one app (rules 1-3)."""

    def __init__(
        self, store: Store, registry: NodeRegistry, metrics: Metrics, enrolled: Iterable[NodeRecord]
    ) -> None:
        self._store = store
        self._registry = registry
        self._metrics = metrics
        self._revoked: set[str] = set()
        self._records: dict[str, NodeRecord] = {}
        self._heard: set[str] = set()  # enrolled after start, heard from the feed (`on_enrolled`)
        for record in enrolled:
            if record.revoked_at is None:
                self._records[record.name] = record
            else:
                self._revoked.add(record.name)

    def is_revoked(self, name: str) -> bool:
        return name in self._revoked

    def is_enrolled(self, name: str) -> bool:
        """True for a live node already known to this process (cheap: no database read)."""
        return name in self._records or name in self._heard

    async def node_record(self, name: str) -> NodeRecord | None:
        """The enrolled node `name`, from memory when it was seen before (the handshake's hot path).

        Revocations reach this process through the change feed (within its poll interval), which also
        drops the cached record; a revoked node's tokens already fail `is_revoked` from then on.
        """
        record = self._records.get(name)
        if record is None:
            record = await self._store.get_node(name)
            if record is not None and record.revoked_at is None and name not in self._revoked:
                self._records[name] = record
        return record

    def on_enrolled(self, record: NodeRecord) -> None:
        """A node was enrolled (here or in another process): `is_enrolled` from now on. Its record is
        not cached before its first handshake reads it: a revocation right after the enrollment must
        refuse that handshake at once, not after the feed's delay (tests/test_identity_e2e.py)."""
        if record.revoked_at is None and record.name not in self._revoked:
            self._heard.add(record.name)

    async def on_revoked(self, name: str) -> None:
        """Node `name` was revoked (here or in another process): rules 2 and 3."""
        self._revoked.add(name)
        self._records.pop(name, None)
        self._heard.discard(name)
        link = self._registry.link(name)
        if link is not None:
            await link.close(4403, "node revoked")
            # Detach before forgetting the entry, or subscribers never see node.disconnected (the
            # session's own detach would find no entry to publish); it then finds nothing to do.
            if await self._registry.detach(name, link):
                self._metrics.node_disconnected()
        await self._registry.forget(name)
        logger.info("node %s revoked", name)
