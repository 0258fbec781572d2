"""Recent calls shared in Redis (server.redis_calls), against a real redis-server.

Two logs on two clients stand for two replicas: a call recorded on one is listed by the other, with the
workspace rule and the capacity bound of `server.fleet`, and a Redis that is away costs the caller nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from server.redis_calls import RedisRecentCalls
from server.router import Caller

ADMIN = Caller("root", "ws1", "admin")


def _record(log: RedisRecentCalls, node: str, workspace: str, text: str = "ok") -> None:
    log.record(
        started_at=1.0,
        duration_s=0.002,
        node=node,
        workspace=workspace,
        tool="echo",
        caller=Caller("alice", workspace),
        outcome="ok",
        arguments={"text": text},
        result={"content": [{"type": "text", "text": text}], "isError": False},
    )


async def _flushed(logs: list[RedisRecentCalls], count: int) -> None:
    async with asyncio.timeout(10):
        while True:
            for log in logs:
                log.pushed.clear()  # before the check: a push after it sets the event again
            if sum(log.flushed for log in logs) >= count:
                return
            waits = [asyncio.ensure_future(log.pushed.wait()) for log in logs]
            try:
                await asyncio.wait(waits, return_when="FIRST_COMPLETED")
            finally:
                for wait in waits:
                    wait.cancel()


@pytest.fixture
async def clients(redis_url: str) -> AsyncIterator[tuple[Any, Any]]:
    a, b = aioredis.Redis.from_url(redis_url), aioredis.Redis.from_url(redis_url)
    try:
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_call_on_one_replica_is_listed_on_another(clients: tuple[Any, Any]) -> None:
    one, two = RedisRecentCalls(clients[0]), RedisRecentCalls(clients[1])
    try:
        _record(one, "n1", "ws1", "from one")
        _record(two, "n2", "ws2", "from two")
        await _flushed([one, two], 2)
        calls = await two.latest(ADMIN, 500)
        assert {c.result for c in calls} == {"from one", "from two"}
        assert len({c.id for c in calls}) == 2  # ids unique across replicas
        member = await one.latest(Caller("bob", "ws2"), 100)  # rule 3 of server.fleet: own workspace
        assert [c.node for c in member] == ["n2"]
        assert member[0].arguments == {"text": "from two"}
    finally:
        await one.aclose()
        await two.aclose()


async def test_the_shared_list_keeps_its_bound(clients: tuple[Any, Any]) -> None:
    one, two = RedisRecentCalls(clients[0], capacity=20), RedisRecentCalls(clients[1], capacity=20)
    try:
        for i in range(60):
            _record(one if i % 2 else two, "n1", "ws1", str(i))
        await _flushed([one, two], 60)
        calls = await one.latest(ADMIN, 500)
        assert len(calls) == 20
        assert await clients[0].llen("cortex:calls") == 20
    finally:
        await one.aclose()
        await two.aclose()


async def test_redis_away_costs_the_caller_nothing() -> None:
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)
    log = RedisRecentCalls(dead, pending_max=8)
    try:
        for i in range(100):
            _record(log, "n1", "ws1", str(i))  # returns at once: nothing waits for Redis
        assert len(log._pending) <= 8  # bounded while Redis is away
        calls = await log.latest(ADMIN, 5)  # falls back to this replica's own calls
        assert [c.result for c in calls] == ["99", "98", "97", "96", "95"]
    finally:
        await log.aclose()
        await dead.aclose()
