"""`server.redis_calls` rule 4 on a real redis-server: the records of one flush interval go in one push,
so a replica under load makes a few Redis round trips per interval, never one per call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from server.redis_calls import RedisRecentCalls
from server.router import Caller

ADMIN = Caller("root", "ws1", "admin")


def _record(log: RedisRecentCalls, i: int) -> None:
    log.record(
        started_at=0.0,
        duration_s=0.001,
        node="n1",
        workspace="ws1",
        tool="echo",
        caller=ADMIN,
        outcome="ok",
        arguments={"text": str(i)},
        result={"content": [{"type": "text", "text": str(i)}], "isError": False},
    )


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Any]:
    redis = aioredis.Redis.from_url(redis_url)
    try:
        yield redis
    finally:
        await redis.aclose()


async def test_calls_of_one_interval_reach_redis_in_one_push(client: Any) -> None:
    log = RedisRecentCalls(client, flush_interval=1.0)
    try:
        for i in range(20):  # calls ending one after another, each in an iteration of its own
            _record(log, i)
            for _ in range(20):
                await asyncio.sleep(0)  # time for a push per call, if there were one
        async with asyncio.timeout(10):
            while log.flushed < 20:
                log.pushed.clear()
                if log.flushed < 20:
                    await log.pushed.wait()
        assert log.pushes <= 2  # one per interval (two if the machine stalled past it)
        calls = await log.latest(ADMIN, 100)
        assert [c.result for c in calls] == [str(i) for i in reversed(range(20))]
    finally:
        await log.aclose()


async def test_records_still_held_at_close_are_pushed(client: Any) -> None:
    log = RedisRecentCalls(client, flush_interval=30.0)  # the interval never ends in this test
    _record(log, 1)
    await asyncio.sleep(0)
    await log.aclose()
    assert log.flushed == 1
    other = RedisRecentCalls(client)
    try:
        assert [c.result for c in await other.latest(ADMIN, 10)] == ["1"]
    finally:
        await other.aclose()
