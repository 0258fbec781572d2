"""The server's persisted view of each node's audit chain head, and the ``rewound`` flag.

Where it sits: between the places that see a node's head — the tunnel handshake (``initialize``'s
``audit_head``) and every ``audit/read`` answer (`server.router`) — and `server.store`, which keeps the
head with its status across restarts. The REST API, SSE events and RPC ``nodes/list`` show it as
``Node.audit = {seq, hash, status}``; an admin clears a ``rewound`` with
``POST /api/v1/nodes/{node}/audit/acknowledge``.

Rules:

1. A head from a node is hostile input: only ``{"seq": int >= 0, "hash": str <= 128 chars | null}``
   is looked at; anything else is ignored (and logged once per link), never stored.
2. A head equal to the one already persisted costs no database write (the handshake is a hot path),
   nor does a first head at seq 0 (an empty log has nothing that could later go missing).
3. ``rewound`` (seq went down, or the hash at the same seq changed) is sticky: a later, higher head
   does not clear it, neither does a server or node restart; only `AuditHeads.acknowledge` does.
4. Every change of a node's ``audit`` is published as ``node.updated``.
"""

from __future__ import annotations

import logging
from typing import Any

from server.registry import NodeEntry, NodeRegistry
from server.store import AUDIT_OK, AuditHead, Store, StoreError

__all__ = ["AuditHeads", "parse_head"]

logger = logging.getLogger(__name__)

_MAX_HASH_LEN = 128


def parse_head(head: Any) -> tuple[int, str | None] | None:
    """``(seq, hash)`` from a node's head, or None if it is not a well-formed head (rule 1)."""
    if not isinstance(head, dict):
        return None
    seq, head_hash = head.get("seq"), head.get("hash")
    if type(seq) is not int or seq < 0 or seq > 2**62:
        return None
    if head_hash is not None and (not isinstance(head_hash, str) or len(head_hash) > _MAX_HASH_LEN):
        return None
    return seq, head_hash


class AuditHeads:
    """Persisted heads of every node, cached in memory; one per app (``ServerState.audit_heads``)."""

    def __init__(self, store: Store, registry: NodeRegistry, heads: dict[str, AuditHead]) -> None:
        self._store = store
        self._registry = registry
        self._heads: dict[str, AuditHead] = dict(heads)

    @classmethod
    async def load(cls, store: Store, registry: NodeRegistry) -> AuditHeads:
        """The heads persisted in *store* (read once; this object keeps them current afterwards)."""
        return cls(store, registry, await store.audit_heads())

    def view(self, node: str) -> dict[str, Any]:
        """``Node.audit`` for *node*: the persisted head, or an empty ``ok`` one if none was seen yet."""
        head = self._heads.get(node)
        if head is None:
            return {"seq": None, "hash": None, "status": AUDIT_OK}
        return head.to_json()

    def decorate(self, entry: NodeEntry) -> None:
        """Give a registry entry its persisted ``audit`` (entries are made fresh on each connect)."""
        entry.audit = self.view(entry.name)

    async def observe(self, entry: NodeEntry, head: Any, *, publish: bool = True) -> None:
        """A node reported *head*: persist it, flag a rewind, update *entry* (rules 1-4)."""
        parsed = parse_head(head)
        if parsed is None:
            if head is not None:
                logger.warning("node %s sent a malformed audit head; ignored", entry.name)
            return
        seq, head_hash = parsed
        known = self._heads.get(entry.name)
        if known is not None and (known.seq, known.hash) == (seq, head_hash):
            self.decorate(entry)
            return
        if known is None and seq == 0:
            entry.audit = {"seq": 0, "hash": head_hash, "status": AUDIT_OK}
            return
        try:
            persisted = await self._store.observe_audit_head(entry.name, seq, head_hash)
        except StoreError:
            # A busy database must not cost the node its link; the next head is compared again.
            logger.warning("could not persist the audit head of node %s", entry.name, exc_info=True)
            self.decorate(entry)
            return
        self._heads[entry.name] = persisted
        before = entry.audit
        self.decorate(entry)
        if publish and entry.audit != before:
            self._registry.publish("node.updated", entry)

    def apply(self, head: AuditHead) -> None:
        """Another replica persisted *head* (the shared change feed, `server.changes.AuditHeadChanged`):
        the cached view follows, and a listed node whose ``audit`` changed is published (rule 4)."""
        self._heads[head.node] = head
        entry = self._registry.get(head.node)
        if entry is None:
            return
        before = entry.audit
        self.decorate(entry)
        if entry.audit != before:
            self._registry.publish("node.updated", entry)

    async def acknowledge(self, entry: NodeEntry) -> dict[str, Any]:
        """An admin has seen the rewind: back to ``ok`` at the current head."""
        acknowledged = await self._store.acknowledge_audit(entry.name)
        if acknowledged is not None:
            self._heads[entry.name] = acknowledged
            logger.info("audit status of node %s acknowledged", entry.name)
        self.decorate(entry)
        self._registry.publish("node.updated", entry)
        return dict(entry.audit or self.view(entry.name))
