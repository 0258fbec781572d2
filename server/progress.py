"""Relaying progress from a node to a caller that may be slow, without ever blocking the node's link.

The tunnel's read loop delivers a node's `notifications/progress` inline; if forwarding them awaited a
slow consumer (an SDK client not reading, a stalled MCP stream), every call on that node — for every
client — would wait behind it. `ProgressPump` decouples the two:

1. `push` never blocks. At most `limit` updates wait; past that the oldest waiting update is dropped
   (progress is advisory: the final result carries the whole outcome). `dropped` counts them.
2. Updates reach the consumer in the order they were pushed, from one task.
3. `drain(timeout)` waits (bounded) until what is queued was delivered, so a caller sees its progress
   before the result; what a too-slow consumer has not taken by then is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["ProgressPump"]

logger = logging.getLogger(__name__)


class ProgressPump:
    def __init__(self, deliver: Callable[[dict[str, Any]], Awaitable[None] | None], limit: int = 256) -> None:
        self._deliver = deliver
        self._limit = limit
        self._queue: deque[dict[str, Any]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.dropped = 0

    def push(self, params: dict[str, Any]) -> None:
        if len(self._queue) >= self._limit:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(params)
        self._idle.clear()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="progress-pump")

    async def _run(self) -> None:
        while self._queue:
            params = self._queue.popleft()
            try:
                outcome = self._deliver(params)
                if outcome is not None:
                    await outcome
            except Exception:  # the consumer is gone; the call itself goes on
                logger.debug("progress delivery failed", exc_info=True)
                self._queue.clear()
        self._idle.set()

    async def drain(self, timeout: float = 5.0) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        self.close()

    def close(self) -> None:
        self.dropped += len(self._queue)
        self._queue.clear()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._idle.set()
