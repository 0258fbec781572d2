"""Artifacts in Redis (server.redis_artifacts), against a real redis-server.

Two stores on two clients stand for two replicas: what one writes (an upload in chunks, or a whole blob)
the other reads, streams and discards; the per-node, total and open-upload budgets hold across both;
expiry and an idle upload (its replica died) give the bytes back.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from server.artifact_store import ArtifactBudgetExceeded, ArtifactLimits
from server.redis_artifacts import RedisArtifactStore
from server.router import Caller

WS1 = Caller("alice", "ws1")


@pytest.fixture
def clients(redis_url: str) -> Iterator[tuple[Any, Any]]:
    a, b = redis.Redis.from_url(redis_url), redis.Redis.from_url(redis_url)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


async def _upload(store: RedisArtifactStore, data: bytes, node: str = "n1", chunk: int = 1000) -> str:
    upload = store.open_upload(node=node, workspace="ws1", size=len(data), mime_type="application/json")
    for i in range(0, len(data), chunk):
        await upload.write(data[i : i + chunk])
    info = await upload.commit(hashlib.sha256(data).hexdigest())
    return info.id


async def test_an_upload_on_one_replica_is_read_on_another(clients: tuple[Any, Any]) -> None:
    one, two = RedisArtifactStore(clients[0]), RedisArtifactStore(clients[1])
    data = bytes(range(256)) * 40
    artifact_id = await _upload(one, data)
    info = two.info(artifact_id)
    assert info is not None and (info.size, info.node, info.workspace) == (len(data), "n1", "ws1")
    got = two.get(artifact_id, WS1)
    assert got is not None and got.data == data and got.mime_type == "application/json"
    assert two.get(artifact_id, Caller("bob", "ws2")) is None  # another workspace: as if it did not exist
    f = two.open_bytes(artifact_id)
    assert f is not None
    pieces = []
    while piece := f.read(777):
        pieces.append(piece)
    assert b"".join(pieces) == data
    two.discard(artifact_id)
    assert one.info(artifact_id) is None and one.used_bytes() == 0


async def test_budgets_hold_across_replicas(clients: tuple[Any, Any]) -> None:
    limits = ArtifactLimits(node_bytes=1000, total_bytes=1500, max_open_uploads=2)
    one, two = RedisArtifactStore(clients[0], limits), RedisArtifactStore(clients[1], limits)
    one.open_upload(node="n1", workspace="ws1", size=600, mime_type="x")
    with pytest.raises(ArtifactBudgetExceeded) as node_full:
        two.open_upload(node="n1", workspace="ws1", size=600, mime_type="x")
    assert node_full.value.scope == "node"
    two.open_upload(node="n2", workspace="ws1", size=800, mime_type="x")
    with pytest.raises(ArtifactBudgetExceeded) as total_full:
        one.open_upload(node="n3", workspace="ws1", size=200, mime_type="x")
    assert total_full.value.scope == "total"
    one.open_upload(node="n1", workspace="ws1", size=1, mime_type="x")
    with pytest.raises(ArtifactBudgetExceeded) as opens:
        two.open_upload(node="n1", workspace="ws1", size=1, mime_type="x")
    assert opens.value.scope == "uploads"
    assert one.used_bytes() == 1401 and two.used_bytes("n1") == 601


async def test_an_aborted_upload_gives_its_bytes_back(clients: tuple[Any, Any]) -> None:
    store = RedisArtifactStore(clients[0], ArtifactLimits(node_bytes=1000))
    upload = store.open_upload(node="n1", workspace="ws1", size=900, mime_type="x")
    await upload.write(b"x" * 100)
    upload.abort()
    assert store.used_bytes("n1") == 0
    assert clients[0].exists("cortex:artifact:" + upload.id + ":data") == 0
    with pytest.raises(ValueError):
        await upload.commit(hashlib.sha256(b"x" * 100).hexdigest())


async def test_a_bad_digest_or_size_is_refused(clients: tuple[Any, Any]) -> None:
    store = RedisArtifactStore(clients[0])
    upload = store.open_upload(node="n1", workspace="ws1", size=4, mime_type="x")
    with pytest.raises(ValueError):
        await upload.write(b"12345")  # past the declared size
    await upload.write(b"1234")
    with pytest.raises(ValueError):
        await upload.commit("0" * 64)


async def test_an_idle_upload_ends_and_frees_the_budget(clients: tuple[Any, Any]) -> None:
    """An upload whose replica died is refreshed by nobody: it ends at its idle deadline (time is the
    feature: a 50 ms deadline, polled with a bound)."""
    store = RedisArtifactStore(clients[0], ArtifactLimits(node_bytes=1000, upload_idle_s=0.05))
    upload = store.open_upload(node="n1", workspace="ws1", size=1000, mime_type="x")
    async with asyncio.timeout(5):
        while store.used_bytes("n1"):  # noqa: ASYNC110 (time is the feature)
            await asyncio.sleep(0.01)
    with pytest.raises(ValueError):
        await upload.write(b"late")
    store.open_upload(node="n1", workspace="ws1", size=1000, mime_type="x")  # the budget is free again


async def test_artifacts_expire(clients: tuple[Any, Any]) -> None:
    store = RedisArtifactStore(clients[0], ArtifactLimits(ttl_s=0.05))
    artifact_id = store.put(b"short-lived", "text/plain", node="n1", workspace="ws1")
    assert store.read_bytes(artifact_id) == b"short-lived"
    async with asyncio.timeout(5):
        while store.info(artifact_id) is not None:  # noqa: ASYNC110 (time is the feature)
            await asyncio.sleep(0.01)
    assert store.get(artifact_id, WS1) is None
    store.sweep()
    assert store.used_bytes() == 0 and len(store) == 0


async def test_put_evicts_the_oldest_when_the_total_is_full(clients: tuple[Any, Any]) -> None:
    store = RedisArtifactStore(clients[0], ArtifactLimits(total_bytes=100))
    first = store.put(b"a" * 60, "x", node="n1", workspace="ws1")
    pending = store.open_upload(node="n2", workspace="ws1", size=10, mime_type="x")
    second = store.put(b"b" * 60, "x", node="n1", workspace="ws1")
    assert store.info(first) is None and store.info(second) is not None  # the oldest went ...
    await pending.write(b"c" * 10)  # ... never an open upload
    assert store.used_bytes() == 70


async def test_ids_are_checked_before_redis(clients: tuple[Any, Any]) -> None:
    store = RedisArtifactStore(clients[0])
    assert store.info("x" * 10_000) is None
    assert store.get("", WS1) is None
