"""Timeouts for many concurrent calls at once, on one shared timer: what `CallRouter.call_tool` uses.

Where it sits: a service below `server.router` (no imports of the server); stdlib only.

`asyncio.timeout` arms a timer per call: a `TimerHandle`, a push into the event loop's heap (ordered
by a Python `__lt__`), a cancellation and later the heap's clean-up — a few µs of the server's CPU on
every call, when nearly every call ends long before its timeout. `Deadlines` keeps the calls in flight
in a dict and checks them on one timer, which runs only while a call is pending.

Rules:
1. ``async with deadlines.after(seconds):`` behaves as ``async with asyncio.timeout(seconds):`` for
   the task inside it: when the time is up the task is cancelled, and the cancellation leaves the
   block as `TimeoutError`; a cancellation from elsewhere stays a cancellation.
2. A timeout fires at most `tick_s` late (the shared timer's period), never early.
3. One timer per `Deadlines`, armed while a block is pending and idle otherwise.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

__all__ = ["DEFAULT_TICK_S", "Deadlines"]

DEFAULT_TICK_S = 0.02


class _Deadline:
    __slots__ = ("_cancelling", "_owner", "_seconds", "_task", "expired", "when")

    def __init__(self, owner: Deadlines, seconds: float) -> None:
        self._owner = owner
        self._seconds = seconds
        self.when = 0.0  # on the loop's clock, set on entry
        self.expired = False
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0

    async def __aenter__(self) -> _Deadline:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Deadlines.after() must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        # The loop from the task, not `get_running_loop` again: on Python 3.11 each of those is a
        # getpid system call (asyncio's fork check), and this runs on every call.
        loop = task.get_loop()
        self.when = loop.time() + self._seconds
        self._owner._add(self, loop)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._owner._pending.pop(id(self), None)
        if self.expired:  # rule 1: our cancellation is taken back; if it is what ended the block, a timeout
            assert self._task is not None
            if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc

    def _expire(self) -> None:
        self.expired = True
        if self._task is not None:
            self._task.cancel()


class Deadlines:
    """The timeouts of the calls in flight, checked every `tick_s` (see the module's rules)."""

    def __init__(self, tick_s: float = DEFAULT_TICK_S) -> None:
        self.tick_s = tick_s
        self._pending: dict[int, _Deadline] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def after(self, seconds: float) -> _Deadline:
        """A block that times out `seconds` from now (rule 1)."""
        return _Deadline(self, seconds)

    def _add(self, deadline: _Deadline, loop: asyncio.AbstractEventLoop) -> None:
        self._pending[id(deadline)] = deadline
        if self._timer is None or self._timer_loop is not loop:  # rule 3 (a timer of a closed loop is gone)
            self._timer, self._timer_loop = loop.call_later(self.tick_s, self._check), loop

    def _check(self) -> None:
        self._timer = None
        if not self._pending:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        expired = [key for key, deadline in self._pending.items() if deadline.when <= now]
        for key in expired:
            self._pending.pop(key)._expire()
        if self._pending:
            self._timer, self._timer_loop = loop.call_later(self.tick_s, self._check), loop
