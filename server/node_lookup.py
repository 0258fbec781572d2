"""A registry miss asks the store before the server answers "no such node" — cheaply and boundedly.

Where it sits: between the `NodeRegistry` (what this process knows of the fleet, kept current by the change
feed, `server.changes`) and the store. The change feed delivers an enrollment within its interval; a
call made in that window (``cortex-server enroll-node`` then an immediate call) would get 404
``node_not_found`` where the node exists and is merely not connected (409). `NodeLookup.entry` closes the
window: a name the registry does not know is looked up in the store once, and an enrolled, live node
found there is added to the registry (it then answers "not connected", as it should).

Rules:

1. A name found in the store is learnt by the registry (`LocalRegistry.learn`); the next lookup of it
   never reaches the store.
2. A name not found is remembered as missing for `negative_ttl_s` (at most `max_misses` names, the
   oldest forgotten first): asking again and again about one unknown name costs one store query per
   TTL. The change feed's enrollment of a name clears its miss at once (`forget_miss`).
3. Store lookups of distinct unknown names are rate-limited by a token bucket (`rate_per_s`, `burst`):
   past it, an unknown name is answered "no such node" from memory without asking (and without
   remembering the miss). A flood of made-up names costs the store at most `rate_per_s` queries a second.
4. Concurrent lookups of one name share one store query.
5. A store that fails is reported as a miss (logged), never as an exception to the caller; the
   failure is not remembered, so the next lookup asks again (within the bucket).
6. Names outside the node-name pattern never reach the store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Protocol

from server.registry import NodeEntry
from server.store import NAME_PATTERN, NodeRecord

__all__ = ["LearningRegistry", "NodeLookup"]

logger = logging.getLogger(__name__)


class LearningRegistry(Protocol):
    """What `NodeLookup` needs of the registry."""

    def get(self, name: str) -> NodeEntry | None: ...

    def learn(self, name: str, workspace: str) -> NodeEntry: ...


class NodeLookup:
    """The guarded store lookup behind a registry miss (see the module rules)."""

    def __init__(
        self,
        registry: LearningRegistry,
        fetch: Callable[[str], Awaitable[NodeRecord | None]],
        *,
        negative_ttl_s: float = 1.0,
        max_misses: int = 4096,
        rate_per_s: float = 50.0,
        burst: int = 50,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if negative_ttl_s < 0 or max_misses < 1 or rate_per_s <= 0 or burst < 1:
            raise ValueError("invalid node lookup bounds")
        self._registry = registry
        self._fetch = fetch
        self._negative_ttl_s = negative_ttl_s
        self._max_misses = max_misses
        self._rate = rate_per_s
        self._burst = float(burst)
        self._clock = clock
        self._misses: OrderedDict[str, float] = OrderedDict()  # name -> when it was found missing
        self._tokens = float(burst)
        self._filled_at = clock()
        self._inflight: dict[str, asyncio.Future[NodeRecord | None]] = {}
        self.store_queries = 0
        """How many lookups reached the store (for tests and metrics)."""

    def forget_miss(self, name: str) -> None:
        """The name was just enrolled (the change feed said so): do not answer it from the miss cache."""
        self._misses.pop(name, None)

    def _missing(self, name: str, now: float) -> bool:
        seen = self._misses.get(name)
        if seen is None:
            return False
        if now - seen < self._negative_ttl_s:
            return True
        del self._misses[name]
        return False

    def _take_token(self, now: float) -> bool:
        self._tokens = min(self._burst, self._tokens + (now - self._filled_at) * self._rate)
        self._filled_at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def _remember_miss(self, name: str, now: float) -> None:
        self._misses.pop(name, None)
        self._misses[name] = now
        while len(self._misses) > self._max_misses:
            self._misses.popitem(last=False)

    async def entry(self, name: str) -> NodeEntry | None:
        """The registry's entry for *name*, asking the store first when the registry has none."""
        entry = self._registry.get(name)
        if entry is not None or not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            return entry
        pending = self._inflight.get(name)
        if pending is None:
            now = self._clock()
            if self._missing(name, now) or not self._take_token(now):
                return None
            pending = asyncio.get_running_loop().create_future()
            self._inflight[name] = pending
            try:
                self.store_queries += 1
                record = await self._fetch(name)
            except asyncio.CancelledError:
                pending.cancel()
                raise
            except Exception:
                logger.warning("store lookup of node %r failed", name, exc_info=True)
                record = None
                pending.set_result(None)
            else:
                if record is None or record.revoked_at is not None:
                    self._remember_miss(name, self._clock())
                pending.set_result(record)
            finally:
                self._inflight.pop(name, None)
        else:
            record = await asyncio.shield(pending)
        if record is None or record.revoked_at is not None:
            return self._registry.get(name)  # the feed may have taught it meanwhile
        return self._registry.get(name) or self._registry.learn(record.name, record.workspace)
