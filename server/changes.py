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
3. `SQLiteChangeFeed` delivers `NodeRevoked` and `UserRevoked` only: enrollments still reach the registry
   through its ``known`` refresh (`server.registry.LocalRegistry`), and a handshake of a node not yet
   seen reads the store. A feed that hears enrollments delivers `NodeEnrolled`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from server.store import NodeRecord, SQLiteRevocationFeed, Store, UserRevocation
from server.user_revocation import SQLiteUserRevocationFeed

__all__ = [
    "Change",
    "ChangeFeed",
    "ChangeHandler",
    "NodeEnrolled",
    "NodeRevoked",
    "SQLiteChangeFeed",
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


Change = NodeEnrolled | NodeRevoked | UserRevoked
ChangeHandler = Callable[[Change], Awaitable[None]]


class ChangeFeed(Protocol):
    """Delivers every change made after the feed started (rule 1) until cancelled."""

    async def watch(self, handler: ChangeHandler) -> None: ...


class SQLiteChangeFeed:
    """`ChangeFeed` over one SQLite data directory: the two revocation tables, polled (rule 3).

    *user_after_seq* is the newest user revocation already applied (`UserRevocations.last_seq`); node
    revocations are delivered from the moment `watch` starts.
    """

    def __init__(self, store: Store, user_after_seq: int, interval: float = 0.5) -> None:
        self._nodes = SQLiteRevocationFeed(store, interval=interval)
        self._users = SQLiteUserRevocationFeed(store, user_after_seq, interval)

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
