"""The recent calls (``GET /api/v1/calls``) of every replica, kept in one capped Redis list.

Where it sits: the shared twin of `server.recent_calls.RecentCalls`, chosen by the app when ``--redis-url`` is
set. `CallRouter.call_tool` records each call as it ends, on whichever replica ran it; the dashboard may
ask any replica and sees the calls of all of them.

Redis keys:

- ``cortex:calls`` — list of the newest calls, newest first, each ``"<id> <CallRecord JSON>"``, trimmed
  to `RecentCalls` capacity at every push.
- ``cortex:calls:id`` — the counter the ids come from (unique across replicas).

Rules (those of `server.fleet`, plus):

1. Recording never waits for Redis: the call's record (already bounded, `server.fleet` rule 2) goes into
   a local queue of at most `pending_max` records that a background task pushes in batches; when Redis
   is slow or away the oldest pending records are dropped, never the caller's time or memory.
2. Each push is one Lua script (id, push, trim): atomic, so concurrent replicas never lose the bound.
3. Reading asks Redis; when Redis is away it answers from this replica's own recent calls (logged).
4. A push waits `flush_interval` after the record that woke it, so the records of that time go in one
   push: while calls keep coming there are at most a few Redis round trips per interval, never one per
   call (one per call took a tenth of a relaying replica's CPU at 64 calls in flight, and one more
   process wake-up per call on a shared machine). The list lags by that interval at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from typing import Any

import msgspec

from server.recent_calls import DEFAULT_CAPACITY, DEFAULT_RESULT_BYTES, Caller, CallRecord, RecentCalls
from spec.json_text import lenient

__all__ = ["CALLS_KEY", "RedisRecentCalls"]

logger = logging.getLogger(__name__)

CALLS_KEY = "cortex:calls"
_ID_KEY = "cortex:calls:id"
_BATCH = 256
FLUSH_INTERVAL = 0.05
"""Seconds a push waits for more records (rule 4)."""

_PUSH = """
local cap = tonumber(ARGV[1])
for i = 2, #ARGV do
    local id = redis.call('INCR', KEYS[2])
    redis.call('LPUSH', KEYS[1], id .. ' ' .. ARGV[i])
end
redis.call('LTRIM', KEYS[1], 0, cap - 1)
return 1
"""


_encode_record = msgspec.json.Encoder().encode


def _encode(call: CallRecord) -> str:
    """A call's list entry, written by msgspec straight from the dataclass (a fifth of the cost of
    building its dict and writing that). `_PUSH` puts the id shared by all replicas in front, and that
    is the one `_decode` reads; the body's own ``id`` is this replica's and is not used."""
    try:
        return _encode_record(call).decode("utf-8")
    except (TypeError, ValueError):  # a value JSON has no type for, a lone surrogate: json's str() form
        data = call.to_json()
        data.pop("id")
        return lenient(data)


def _decode(item: bytes | str) -> CallRecord | None:
    text = item.decode("utf-8", "replace") if isinstance(item, bytes) else item
    ident, _, body = text.partition(" ")
    try:
        data = json.loads(body)
        return CallRecord(
            id=int(ident),
            started_at=float(data["started_at"]),
            duration_ms=float(data["duration_ms"]),
            node=str(data["node"]),
            workspace=str(data["workspace"]),
            tool=str(data["tool"]),
            caller=dict(data["caller"]),
            outcome=str(data["outcome"]),
            arguments=dict(data["arguments"]),
            result=data.get("result"),
            audit=data.get("audit"),
        )
    except (ValueError, KeyError, TypeError):
        return None


class RedisRecentCalls(RecentCalls):
    """`RecentCalls` whose list lives in Redis (see the module rules); this replica keeps its own too."""

    def __init__(
        self,
        redis: Any,
        capacity: int = DEFAULT_CAPACITY,
        result_bytes: int = DEFAULT_RESULT_BYTES,
        pending_max: int = 1024,
        flush_interval: float = FLUSH_INTERVAL,
    ) -> None:
        super().__init__(capacity, result_bytes)
        self._redis = redis
        self._capacity = capacity
        self._push = redis.register_script(_PUSH)
        self._pending: deque[CallRecord] = deque(maxlen=pending_max)  # rule 1: oldest dropped first
        self._flush_interval = flush_interval
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self.flushed = 0
        """Records pushed to Redis so far (for tests)."""
        self.pushes = 0
        """Pushes (Redis round trips) so far (for tests)."""
        self.pushed = asyncio.Event()
        """Set after every batch pushed to Redis (a test clears it and waits)."""

    def record(self, **kwargs: Any) -> None:
        super().record(**kwargs)
        self._pending.append(self._calls[-1])  # written when pushed (rule 4): nothing more per call here
        self._wake.set()
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush(), name="recent-calls")

    async def _flush(self) -> None:
        while True:
            await self._wake.wait()
            if self._flush_interval > 0:
                await asyncio.sleep(self._flush_interval)  # rule 4: the records of the interval go together
            self._wake.clear()
            while self._pending:
                batch = [_encode(self._pending.popleft()) for _ in range(min(_BATCH, len(self._pending)))]
                try:
                    await self._push_batch(batch)
                    self.pushed.set()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.warning("recent calls: Redis unavailable, %d record(s) dropped", len(batch))
                    break

    async def latest(self, caller: Caller, limit: int) -> list[CallRecord]:
        try:
            items = await self._redis.lrange(CALLS_KEY, 0, self._capacity - 1)
        except Exception:
            logger.warning("recent calls: Redis unavailable, answering from this replica", exc_info=True)
            return self.visible(caller, limit)
        out: list[CallRecord] = []
        for item in items:
            call = _decode(item)
            if call is not None and caller.can_see(call.workspace):
                out.append(call)
                if len(out) >= limit:
                    break
        return out

    async def _push_batch(self, batch: list[str]) -> None:
        await self._push(keys=[CALLS_KEY, _ID_KEY], args=[self._capacity, *batch])  # rule 2
        self.flushed += len(batch)
        self.pushes += 1

    async def aclose(self, timeout: float = 1.0) -> None:
        """Stop the flusher; what it still holds (the last interval's records, rule 4) gets one push."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._flusher
        batch = [_encode(self._pending.popleft()) for _ in range(min(_BATCH, len(self._pending)))]
        if batch:
            try:
                async with asyncio.timeout(timeout):
                    await self._push_batch(batch)
            except Exception:
                logger.warning("recent calls: %d record(s) not pushed at close", len(batch))
