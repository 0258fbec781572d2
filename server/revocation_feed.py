"""The revocation feed: how a running server hears of node revocations made anywhere.

Where it sits: above `server.store` (it follows the store's ``revocations`` table by sequence number),
below `server.changes`, whose change feed runs it beside `server.user_revocation`'s feed of user
revocations. `RevocationFeed` is the seam; `SQLiteRevocationFeed` polls any `Store` (SQLite or
PostgreSQL), and a pushed feed (PostgreSQL LISTEN, Redis) can replace it without the app changing.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from server.store import Store, StoreUnavailable

__all__ = ["RevocationFeed", "SQLiteRevocationFeed"]

logger = logging.getLogger(__name__)


class RevocationFeed(Protocol):
    """Tells the running server about revocations made anywhere (another process, another host later).

    `watch` runs until cancelled and calls *on_revoked(node_name)* once per revocation it sees after it
    started. The SQLite implementation polls; a Redis pub/sub one can replace it without the app changing.
    """

    async def watch(self, on_revoked: Callable[[str], Awaitable[None] | None]) -> None: ...


class SQLiteRevocationFeed:
    """`RevocationFeed` that polls the store's ``revocations`` table every *interval* seconds.

    It follows any `Store` (SQLite or PostgreSQL) by sequence number; the name is historical.

    *after_seq* is where to start; None means "revocations from now on" (read when `watch` starts).
    """

    def __init__(self, store: Store, interval: float = 0.5, after_seq: int | None = None) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self._store = store
        self._interval = interval
        self._after_seq = after_seq
        self.ready = asyncio.Event()
        """Set once `watch` has its starting point: revocations from then on will be delivered."""

    @property
    def last_seq(self) -> int | None:
        """The newest revocation already delivered (None before `watch` has started)."""
        return self._after_seq

    async def watch(self, on_revoked: Callable[[str], Awaitable[None] | None]) -> None:
        if self._after_seq is None:
            self._after_seq = await self._store.last_revocation_seq()
        self.ready.set()
        while True:
            await asyncio.sleep(self._interval)
            try:
                rows = await self._store.revocations_after(self._after_seq)
            except StoreUnavailable:
                # A busy or briefly locked database: try again on the next tick rather than die.
                logger.warning("revocation poll failed; retrying", exc_info=True)
                continue
            for seq, node in rows:
                self._after_seq = seq
                try:
                    result = on_revoked(node)
                    if inspect.isawaitable(result):
                        await result
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("revocation handler failed for node %r", node)
