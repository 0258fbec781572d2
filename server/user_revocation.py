"""Revoked users: which user tokens are dead, how the running server learns of it, and who gets closed.

Where it sits: beside `server.store` (which persists ``user_revocations``) and `server.auth` (which asks
`UserRevocations.covers` about every user token it verifies). ``cortex-server revoke-user`` runs in
another process, so the server follows the table with `SQLiteUserRevocationFeed`, the twin of the
node revocation feed; each revocation it sees also closes the user's live links through `LiveCallers`.

Rules:

1. A revocation of ``sub`` (in one workspace, or in all) kills every token of ``sub`` whose ``iat`` is
   at or before ``revoked_at``. ``iat`` is whole seconds, so a token minted in the same second just
   after the revocation is refused too: the error is on the safe side and lasts under a second.
2. The in-memory view holds one time per (sub, workspace) — the newest — so memory grows with the
   number of revoked users, not with the number of revocations.
3. Every live, long-running user link (an RPC socket, an MCP request or stream, the node event stream,
   a planner run's stream) is tracked while it runs; a revocation covering it calls its close callback
   once, within the feed's poll interval. (A planner run whose stream ends is cancelled.)
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from server.store import Store, StoreUnavailable, UserRevocation

__all__ = ["LiveCallers", "SQLiteUserRevocationFeed", "UserRevocations", "end_event_queue"]

logger = logging.getLogger(__name__)


class UserRevocations:
    """The newest revocation time per (sub, workspace); workspace None means every workspace.

    With *live* given, `on_revoked` also closes the revoked user's live links (rule 3).
    """

    def __init__(self, live: LiveCallers | None = None) -> None:
        self._at: dict[tuple[str, str | None], float] = {}
        self.last_seq = 0
        self._live = live

    @classmethod
    async def load(cls, store: Store, live: LiveCallers | None = None) -> UserRevocations:
        view = cls(live)
        for revocation in await store.user_revocations_after(0):
            view.apply(revocation)
        return view

    async def on_revoked(self, revocation: UserRevocation) -> None:
        """``revoke-user`` ran (here or in another process): refuse the tokens, close the live links."""
        self.apply(revocation)
        if self._live is not None:
            await self._live.revoke(revocation)

    def apply(self, revocation: UserRevocation) -> None:
        key = (revocation.sub, revocation.workspace)
        self._at[key] = max(self._at.get(key, 0.0), revocation.revoked_at)
        self.last_seq = max(self.last_seq, revocation.seq)

    def covers(self, sub: str, workspace: str, iat: float) -> bool:
        """True if a token of *sub* in *workspace* issued at *iat* is revoked (rule 1)."""
        if not self._at:
            return False
        cutoff = max(self._at.get((sub, None), -1.0), self._at.get((sub, workspace), -1.0))
        return iat <= cutoff


def end_event_queue(queue: asyncio.Queue[Any]) -> None:
    """Close callback of an SSE stream fed by *queue*: an item with an empty event name ends it."""
    if queue.full():
        queue.get_nowait()  # the stream is ending: its oldest unsent event no longer matters
    queue.put_nowait(("", {}))


@dataclass(eq=False)
class _Live:
    sub: str
    ws: str
    iat: float
    close: Callable[[], Awaitable[None] | None]


class LiveCallers:
    """The user links running now (rule 3)."""

    def __init__(self) -> None:
        self._live: set[_Live] = set()
        self._closing: set[asyncio.Future[None]] = set()

    @contextlib.contextmanager
    def track(
        self, sub: str, ws: str, iat: float, close: Callable[[], Awaitable[None] | None]
    ) -> Iterator[None]:
        live = _Live(sub, ws, iat, close)
        self._live.add(live)
        try:
            yield
        finally:
            self._live.discard(live)

    def __len__(self) -> int:
        return len(self._live)

    async def revoke(self, revocation: UserRevocation) -> int:
        """Close every tracked link the revocation covers; returns how many."""
        hit = [
            live
            for live in self._live
            if live.sub == revocation.sub
            and (revocation.workspace is None or live.ws == revocation.workspace)
            and live.iat <= revocation.revoked_at
        ]
        for live in hit:
            self._live.discard(live)
            try:
                outcome = live.close()
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                logger.exception("closing a revoked user's link failed")
        if hit:
            logger.info("closed %d live link(s) of revoked user %r", len(hit), revocation.sub)
        return len(hit)


class SQLiteUserRevocationFeed:
    """Polls ``user_revocations`` every *interval* seconds, from *after_seq* on."""

    def __init__(self, store: Store, after_seq: int, interval: float = 0.5) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self._store = store
        self._after_seq = after_seq
        self._interval = interval

    async def watch(self, on_revoked: Callable[[UserRevocation], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                rows = await self._store.user_revocations_after(self._after_seq)
            except StoreUnavailable:
                logger.warning("user revocation poll failed; retrying", exc_info=True)
                continue
            for revocation in rows:
                self._after_seq = revocation.seq
                try:
                    await on_revoked(revocation)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("user revocation handler failed")
