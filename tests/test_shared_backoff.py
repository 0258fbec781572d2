"""The ``/oauth/token`` back-off shared in Redis (server.redis_backoff), against a real redis-server.

Two tables made from two clients stand for two replicas: a failure counted on one blocks the key on the
other, success clears it, an idle key is forgotten, and the table never grows past its bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from server.backoff import BackoffPolicy
from server.redis_backoff import RedisFailureBackoff


@pytest.fixture
async def clients(redis_url: str) -> AsyncIterator[tuple[Any, Any]]:
    a, b = aioredis.Redis.from_url(redis_url), aioredis.Redis.from_url(redis_url)
    try:
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_failure_on_one_replica_blocks_on_another(clients: tuple[Any, Any]) -> None:
    policy = BackoffPolicy(free_failures=2, base_s=30.0, cap_s=60.0)
    one, two = (RedisFailureBackoff(c, "client", policy) for c in clients)
    assert await one.failed("node-a") == 0.0
    assert await two.failed("node-a") == 0.0  # the second free failure, counted on the other replica
    assert await two.retry_after("node-a") == 0.0
    blocked = await one.failed("node-a")  # third: over the allowance, 30 s
    assert 29.0 < blocked <= 30.0
    assert 29.0 < await two.retry_after("node-a") <= 30.0
    assert await two.retry_after("node-b") == 0.0  # other keys are never slowed
    await two.succeeded("node-a")
    assert await one.retry_after("node-a") == 0.0


async def test_blocks_double_up_to_the_cap(clients: tuple[Any, Any]) -> None:
    table = RedisFailureBackoff(clients[0], "address", BackoffPolicy(free_failures=0, base_s=1.0, cap_s=4.0))
    seen = [round(await table.failed("10.0.0.1")) for _ in range(5)]
    assert seen == [1, 2, 4, 4, 4]
    for _ in range(100):  # a patient guesser: the exponent never overflows
        assert await table.failed("10.0.0.1") <= 4.0


async def test_an_idle_key_is_forgotten(clients: tuple[Any, Any]) -> None:
    policy = BackoffPolicy(free_failures=0, base_s=0.01, cap_s=0.01, forget_after_s=0.01)
    table = RedisFailureBackoff(clients[0], "client", policy)
    await table.failed("x")
    # Time is the feature here (10 ms): poll the Redis key's own expiry, bounded to 2 s.
    async with asyncio.timeout(2):
        while await clients[0].exists("cortex:oauth:client:x"):  # noqa: ASYNC110 (time is the feature)
            await asyncio.sleep(0.005)
    assert await table.retry_after("x") == 0.0


async def test_the_table_is_bounded(clients: tuple[Any, Any]) -> None:
    table = RedisFailureBackoff(clients[0], "address", BackoffPolicy(max_keys=10))
    for i in range(50):
        await table.failed(f"10.0.0.{i}")
    assert await table.size() == 10
    keys = [k async for k in clients[0].scan_iter("cortex:oauth:address:*")]
    assert len(keys) == 10  # the dropped keys' records went too, not only their index entries
    assert await table.retry_after("10.0.0.49") == 0.0  # the newest kept (free failures)


async def test_redis_away_answers_not_blocked() -> None:
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)
    try:
        table = RedisFailureBackoff(dead, "client", BackoffPolicy())
        assert await table.retry_after("n") == 0.0
        assert await table.failed("n") == 0.0
        await table.succeeded("n")
    finally:
        await dead.aclose()
