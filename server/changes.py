"""The change feed: enrollments, node revocations and user revocations made anywhere reach this process.

Where it sits: below the app's wiring (`server.state.build_state` picks the feed, `server.app`'s
lifespan runs `watch`), above `server.store`. `ChangeFeed` is the seam: the embedded default
`SQLiteChangeFeed` polls the store's append-only tables; a shared engine (PostgreSQL ``LISTEN``, Redis
pub/sub) implements the same Protocol for several replicas. The handler that applies a change lives with
the state (`server.state.change_handler`).

Rules:

1. `watch(handler)` runs until cancelled and awaits ``handler(change)`` once per change made after the
   feed's starting point, in the order each table recorded them.
2. A failing handler is logged and the feed goes on with the next change; a failing poll is retried on
   the next tick. Neither ends `watch`.
3. Every feed delivers `NodeEnrolled` too: the registry learns enrollments from the feed, never by
   re-reading the store on a timer (a lookup in between asks the store: `server.node_lookup`).
   `SQLiteChangeFeed` follows ``nodes`` by enrollment number beside the two revocation tables.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from server.revocation_feed import SQLiteRevocationFeed
from server.store import AuditHead, NodeRecord, Store, StoreUnavailable, UserRevocation
from server.user_revocation import SQLiteUserRevocationFeed

__all__ = [
    "AuditHeadChanged",
    "Change",
    "ChangeFeed",
    "ChangeHandler",
    "NodeEnrolled",
    "NodeRevoked",
    "SQLiteChangeFeed",
    "SQLiteEnrollmentFeed",
    "UserRevoked",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeEnrolled:
    record: NodeRecord


@dataclass(frozen=True)
class NodeRevoked:
    name: str


@dataclass(frozen=True)
class UserRevoked:
    revocation: UserRevocation


@dataclass(frozen=True)
class AuditHeadChanged:
    """A replica persisted a node's audit head (a new head, a rewind, an admin's acknowledge): the
    other replicas' cached views follow (`server.audit_heads.AuditHeads.apply`). Only a shared feed
    delivers it; one process sharing no database with another has nothing to follow."""

    head: AuditHead


Change = NodeEnrolled | NodeRevoked | UserRevoked | AuditHeadChanged
ChangeHandler = Callable[[Change], Awaitable[None]]


class ChangeFeed(Protocol):
    """Delivers every change made after the feed started (rule 1) until cancelled."""

    async def watch(self, handler: ChangeHandler) -> None: ...


class SQLiteChangeFeed:
    """`ChangeFeed` over one SQLite data directory: the two revocation tables, polled (rule 3).

    *user_after_seq* is the newest user revocation already applied (`UserRevocations.last_seq`); node
    revocations are delivered from the moment `watch` starts.
    """

    def __init__(
        self, store: Store, user_after_seq: int, interval: float = 0.5, enrollment_after: int | None = None
    ) -> None:
        self._nodes = SQLiteRevocationFeed(store, interval=interval)
        self._users = SQLiteUserRevocationFeed(store, user_after_seq, interval)
        self._enrollments = SQLiteEnrollmentFeed(store, interval, enrollment_after)

    @property
    def ready(self) -> asyncio.Event:
        """Set once node revocations from then on will be delivered."""
        return self._nodes.ready

    async def watch(self, handler: ChangeHandler) -> None:
        async def node_revoked(name: str) -> None:
            await handler(NodeRevoked(name))

        async def user_revoked(revocation: UserRevocation) -> None:
            await handler(UserRevoked(revocation))

        # Each inner feed catches its handler's failures (rule 2); only cancellation ends the group.
        async with asyncio.TaskGroup() as group:
            group.create_task(self._nodes.watch(node_revoked), name="node-revocations")
            group.create_task(self._users.watch(user_revoked), name="user-revocations")
            group.create_task(self._enrollments.watch(handler), name="enrollments")


class SQLiteEnrollmentFeed:
    """Polls ``nodes`` by enrollment number (`Store.enrollments_after`) after *after* (None: from when
    `watch` starts; the app passes the number it read with the rest of its starting view).

    An enrollment made in another process (``cortex-server enroll-node``) reaches the registry's
    listing within *interval*; a call in the meantime already finds the node (server.node_lookup).
    """

    def __init__(self, store: Store, interval: float = 0.5, after: int | None = None) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self._store = store
        self._interval = interval
        self._after = after

    async def watch(self, handler: ChangeHandler) -> None:
        if self._after is None:
            self._after = await self._store.last_enrollment_seq()
        while True:
            await asyncio.sleep(self._interval)
            try:
                rows = await self._store.enrollments_after(self._after)
            except StoreUnavailable:
                logger.warning("enrollment poll failed; retrying", exc_info=True)
                continue
            for seq, record in rows:
                self._after = seq
                if record.revoked_at is not None:
                    continue  # enrolled and revoked between two polls: the revocation says the rest
                try:
                    await handler(NodeEnrolled(record))
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("enrollment handler failed for node %r", record.name)
