"""Unit tier: `server.deadlines.Deadlines`, the shared-timer timeouts of `CallRouter.call_tool`.

It must behave as `asyncio.timeout` for the task inside: a timeout is a `TimeoutError` (never early,
at most a tick late), a cancellation from elsewhere stays a cancellation, and one timer runs only
while a block is pending.
"""

from __future__ import annotations

import asyncio

import pytest

from server.deadlines import Deadlines

TICK = 0.01


async def test_a_block_past_its_time_raises_timeout_error_not_early() -> None:
    deadlines = Deadlines(tick_s=TICK)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with deadlines.after(0.05):
            await asyncio.sleep(10)
    waited = loop.time() - started
    assert 0.05 <= waited < 5  # never early; bounded generously for a loaded machine
    assert len(deadlines) == 0


async def test_a_block_in_time_is_untouched_and_the_timer_goes_idle() -> None:
    deadlines = Deadlines(tick_s=TICK)
    async with deadlines.after(5):
        await asyncio.sleep(0)
    assert len(deadlines) == 0
    timer = deadlines._timer
    assert timer is not None
    await asyncio.sleep(TICK * 3)  # past the pending check, which finds nothing
    assert deadlines._timer is None  # and does not re-arm


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    deadlines = Deadlines(tick_s=TICK)
    entered = asyncio.Event()

    async def inner() -> None:
        async with deadlines.after(60):
            entered.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(inner())
    async with asyncio.timeout(5):
        await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(deadlines) == 0


async def test_many_blocks_time_out_each_on_its_own() -> None:
    deadlines = Deadlines(tick_s=TICK)

    async def one(seconds: float) -> str:
        try:
            async with deadlines.after(seconds):
                await asyncio.sleep(0.3)
        except TimeoutError:
            return "timeout"
        return "done"

    async with asyncio.timeout(10):
        outcomes = await asyncio.gather(*(one(0.02 if i % 2 else 5) for i in range(64)))
    assert outcomes == ["timeout" if i % 2 else "done" for i in range(64)]
    assert len(deadlines) == 0


async def test_a_block_that_ends_as_it_expires_takes_its_cancellation_back() -> None:
    """As `asyncio.timeout`: the block ends with its answer (no TimeoutError) and the cancellation
    count is taken back. (CPython 3.11 still delivers the request to the task's next step.)"""
    deadlines = Deadlines(tick_s=TICK)
    seen: list[tuple[str, bool, int]] = []

    async def inner() -> None:
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        block = deadlines.after(0)
        async with block:
            deadlines._check()  # the time is up: the task is asked to cancel...
            future.set_result("answer")  # ...as its answer arrives: the block ends normally
            got = await future
        task = asyncio.current_task()
        assert task is not None
        seen.append((got, block.expired, task.cancelling()))

    task = asyncio.create_task(inner())
    async with asyncio.timeout(5):
        await asyncio.wait([task])
    assert seen == [("answer", True, 0)]


def test_a_router_used_from_a_second_event_loop_still_times_out() -> None:
    """The shared timer belongs to a loop; a loop closed with it pending must not leave it 'armed'."""
    deadlines = Deadlines(tick_s=TICK)

    async def pending_when_the_loop_ends() -> None:
        async with deadlines.after(60):
            await asyncio.sleep(0)

    async def times_out() -> bool:
        try:
            async with deadlines.after(0.02):
                await asyncio.sleep(10)
        except TimeoutError:
            return True
        return False

    asyncio.run(pending_when_the_loop_ends())  # leaves the first loop's timer behind
    assert asyncio.run(asyncio.wait_for(times_out(), 5))
