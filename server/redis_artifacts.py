"""Artifacts kept in Redis, readable through every replica of a cluster.

Where it sits: the shared twin of `server.artifact_store.DiskArtifactStore` behind the same
`ArtifactStore` interface, chosen by `server.shared_state` when ``--redis-url`` is set. A result
uploaded by a node on replica A is fetched with ``GET /api/v1/artifacts/{id}`` from whichever replica
the load balancer picks, so the bytes must be where every replica reads them.

Why Redis, and not PostgreSQL or reading through the replica that holds it: artifacts are a cache with
a lifetime, which Redis expiry expresses directly (and backs up: every key also carries its own TTL, so
nothing outlives its time even if no replica sweeps); ``APPEND``/``GETRANGE`` upload and stream in
chunks without a transaction per chunk or a table of blobs bloating the database's WAL and backups;
and reading through the holder would lose every artifact of a replica that dies, the very case several
replicas exist for. The cost is Redis memory: the budgets below bound it (``--artifact-total-bytes``).

Redis keys (all under ``cortex:artifact``):

- ``cortex:artifact:<id>`` — hash ``mime``, ``node``, ``workspace``, ``size``, ``sha256``, ``expires``
  (Unix seconds), written at commit.
- ``cortex:artifact:<id>:data`` — the bytes (appended chunk by chunk while an upload is open).
- ``cortex:artifacts:deadline`` — sorted set of every reservation (open upload or committed artifact)
  scored by when it ends: an artifact's expiry, an open upload's last chunk + ``upload_idle_s``.
- ``cortex:artifacts:size`` / ``cortex:artifacts:owner`` — hashes: reservation id → bytes / node.
- ``cortex:artifacts:pending`` — hash: id of each open upload → 1.
- ``cortex:artifacts:used`` — hash: ``total`` and ``n:<node>`` → bytes reserved (committed + declared).
- ``cortex:artifacts:opens`` — hash: node → open uploads.

Rules (those of `server.artifact_store`, plus):

1. Every budget decision is one Lua script on the Redis server (atomic across replicas), timed by the
   Redis server's clock. It first ends every reservation whose time is up (at most `_EXPIRE_BATCH` a
   call; the sweep loops until none is left), giving back its bytes.
2. An open upload whose replica died stops being refreshed and ends at its deadline like any other
   idle upload: a dead replica leaks no budget.
3. Keys carry their own TTL besides the sorted set, so Redis frees them even when no replica runs.
4. Redis calls are short and bounded (socket timeouts); the byte-moving ones (chunks, whole blobs,
   reads) run in worker threads, as the embedded store's file I/O does.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import secrets
import time
from typing import TYPE_CHECKING, Any, BinaryIO

from server.artifact_store import (
    Artifact,
    ArtifactBudgetExceeded,
    ArtifactInfo,
    ArtifactLimits,
    visible_artifact,
)

if TYPE_CHECKING:
    from server.router import Caller

__all__ = ["RedisArtifactStore"]

_P = "cortex:artifact"
_DEADLINE, _SIZE, _OWNER = f"{_P}s:deadline", f"{_P}s:size", f"{_P}s:owner"
_PENDING, _USED, _OPENS = f"{_P}s:pending", f"{_P}s:used", f"{_P}s:opens"
_KEYS = [_DEADLINE, _SIZE, _OWNER, _PENDING, _USED, _OPENS]
_EXPIRE_BATCH = 256
_KEY_GRACE_S = 60  # rule 3: a key's own TTL is its deadline plus this

_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) + tonumber(t[2]) / 1000000\n"

# KEYS = _KEYS; drops one reservation: its bytes go back to the budgets, its keys go.
_END = """
local function finish(id)
    local size = tonumber(redis.call('HGET', KEYS[2], id) or '0')
    local node = redis.call('HGET', KEYS[3], id)
    redis.call('HINCRBY', KEYS[5], 'total', -size)
    if node then redis.call('HINCRBY', KEYS[5], 'n:' .. node, -size) end
    if redis.call('HDEL', KEYS[4], id) == 1 and node then redis.call('HINCRBY', KEYS[6], node, -1) end
    redis.call('HDEL', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
    redis.call('ZREM', KEYS[1], id)
    redis.call('DEL', 'cortex:artifact:' .. id, 'cortex:artifact:' .. id .. ':data')
end
local function expire(now)
    local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, %d)
    for _, id in ipairs(gone) do finish(id) end
    return #gone
end
""".replace("%d", str(_EXPIRE_BATCH))

_SWEEP = _NOW + _END + "return expire(now)\n"

_DISCARD = _END + "if redis.call('ZSCORE', KEYS[1], ARGV[1]) then finish(ARGV[1]) end return 1\n"

# ARGV: id, node, size, node_bytes, total_bytes, deadline_in_s, max_open (0: a whole blob), evict (0|1)
_RESERVE = (
    _NOW
    + _END
    + """
expire(now)
local id, node, size = ARGV[1], ARGV[2], tonumber(ARGV[3])
local node_bytes, total_bytes, max_open = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[7])
if max_open > 0 and tonumber(redis.call('HGET', KEYS[6], node) or '0') >= max_open then
    return {'uploads', tostring(max_open), tostring(max_open)}
end
if ARGV[8] == '1' then
    local scanned = 0
    local function total() return tonumber(redis.call('HGET', KEYS[5], 'total') or '0') end
    while total() + size > total_bytes and scanned < 10000 do
        local oldest = redis.call('ZRANGE', KEYS[1], scanned, scanned)
        if #oldest == 0 then break end
        if redis.call('HEXISTS', KEYS[4], oldest[1]) == 1 then
            scanned = scanned + 1
        else
            finish(oldest[1])
        end
    end
else
    local used = tonumber(redis.call('HGET', KEYS[5], 'n:' .. node) or '0')
    if used + size > node_bytes then return {'node', tostring(used), tostring(node_bytes)} end
end
local total = tonumber(redis.call('HGET', KEYS[5], 'total') or '0')
if total + size > total_bytes and ARGV[8] ~= '1' then
    return {'total', tostring(total), tostring(total_bytes)}
end
redis.call('HINCRBY', KEYS[5], 'total', size)
redis.call('HINCRBY', KEYS[5], 'n:' .. node, size)
redis.call('HSET', KEYS[2], id, size)
redis.call('HSET', KEYS[3], id, node)
if max_open > 0 then
    redis.call('HSET', KEYS[4], id, 1)
    redis.call('HINCRBY', KEYS[6], node, 1)
end
local deadline = now + tonumber(ARGV[6])
redis.call('ZADD', KEYS[1], deadline, id)
return {'ok', tostring(deadline), '0'}
"""
)

# ARGV: id, idle_s. An open upload got a chunk: its deadline moves on. 0 if it is no longer open.
_TOUCH = (
    _NOW
    + """
if redis.call('HEXISTS', KEYS[4], ARGV[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
return 1
"""
)

# ARGV: id, ttl_s, mime, node, workspace, size, sha256, key_ttl_ms. An open upload becomes an artifact.
_COMMIT = (
    _NOW
    + """
local id = ARGV[1]
if redis.call('HDEL', KEYS[4], id) == 0 then return '' end
redis.call('HINCRBY', KEYS[6], ARGV[4], -1)
local expires = now + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], expires, id)
local meta = 'cortex:artifact:' .. id
redis.call('HSET', meta, 'mime', ARGV[3], 'node', ARGV[4], 'workspace', ARGV[5], 'size', ARGV[6],
    'sha256', ARGV[7], 'expires', tostring(expires))
redis.call('PEXPIRE', meta, ARGV[8])
redis.call('PEXPIRE', meta .. ':data', ARGV[8])
return tostring(expires)
"""
)


class _RedisUpload:
    """One result arriving in chunks, appended to its data key (rules 2-3)."""

    def __init__(
        self, store: RedisArtifactStore, node: str, workspace: str, size: int, mime_type: str, upload_id: str
    ) -> None:
        self.store = store
        self.node, self.workspace, self.size, self.mime_type = node, workspace, size, mime_type
        self.id = upload_id
        self.written = 0
        self._hash = hashlib.sha256()
        self._done = False

    def _write(self, data: bytes) -> None:
        s = self.store
        if not s._touch(keys=_KEYS, args=[self.id, s.limits.upload_idle_s]):
            raise ValueError("the upload was idle too long and has ended")
        pipe = s.redis.pipeline(transaction=False)
        pipe.append(f"{_P}:{self.id}:data", data)
        pipe.pexpire(f"{_P}:{self.id}:data", s._key_ttl_ms())
        pipe.execute()
        self._hash.update(data)

    async def write(self, data: bytes) -> None:
        if self._done:
            raise ValueError("the upload is closed")
        if self.written + len(data) > self.size:
            raise ValueError(f"chunk goes past the declared size of {self.size} bytes")
        self.written += len(data)
        await asyncio.to_thread(self._write, data)

    async def commit(self, sha256: str) -> ArtifactInfo:
        if self.written != self.size:
            raise ValueError(f"{self.written} bytes received of the {self.size} declared")
        digest = self._hash.hexdigest()
        if digest != sha256.lower():
            raise ValueError("the SHA-256 of the bytes received does not match the one declared")
        s = self.store
        expires = await asyncio.to_thread(
            s._commit,
            keys=_KEYS,
            args=[
                self.id,
                s.limits.ttl_s,
                self.mime_type,
                self.node,
                self.workspace,
                self.size,
                digest,
                s._key_ttl_ms(),
            ],
        )
        self._done = True
        if not expires:
            raise ValueError("the upload was idle too long and has ended")
        return ArtifactInfo(
            self.id, self.mime_type, self.node, self.workspace, self.size, digest, _monotonic(expires)
        )

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self.store.discard(self.id)


def _monotonic(expires_unix: Any) -> float:
    """An expiry in Unix seconds (Redis server time) as `time.monotonic()` (what `ArtifactInfo` holds)."""
    value = float(expires_unix.decode() if isinstance(expires_unix, bytes) else expires_unix)
    return time.monotonic() + (value - time.time())


class _Reader(io.RawIOBase):
    """The bytes of an artifact, read from Redis in ranges (what `open_bytes` hands out). Blocking."""

    def __init__(self, redis: Any, key: str, size: int) -> None:
        self._redis, self._key, self._size, self._pos = redis, key, size, 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self._pos >= self._size:
            return b""
        end = self._size if n is None or n < 0 else min(self._size, self._pos + n)
        data: bytes = self._redis.getrange(self._key, self._pos, end - 1)
        self._pos += len(data)
        if not data:
            self._pos = self._size  # the artifact expired under the reader: end of file
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class RedisArtifactStore:
    """`ArtifactStore` in Redis (see the module rules). *redis* is a synchronous `redis.Redis`."""

    def __init__(self, redis: Any, limits: ArtifactLimits | None = None) -> None:
        self.limits = limits or ArtifactLimits()
        self.redis = redis
        self._reserve = redis.register_script(_RESERVE)
        self._touch = redis.register_script(_TOUCH)
        self._commit = redis.register_script(_COMMIT)
        self._sweep = redis.register_script(_SWEEP)
        self._discard = redis.register_script(_DISCARD)

    def _key_ttl_ms(self) -> int:
        return int((max(self.limits.ttl_s, self.limits.upload_idle_s) + _KEY_GRACE_S) * 1000)

    def _reserve_or_raise(
        self, artifact_id: str, node: str, size: int, deadline_s: float, uploads: bool
    ) -> None:
        lim = self.limits
        answer = self._reserve(
            keys=_KEYS,
            args=[
                artifact_id,
                node,
                size,
                lim.node_bytes,
                lim.total_bytes,
                deadline_s,
                lim.max_open_uploads if uploads else 0,
                0 if uploads else 1,
            ],
        )
        scope, used, limit = (a.decode() if isinstance(a, bytes) else str(a) for a in answer)
        if scope == "ok":
            return
        if scope == "uploads":
            raise ArtifactBudgetExceeded(
                f"node {node} already has {limit} uploads open", needed=size, limit=int(limit), scope=scope
            )
        raise ArtifactBudgetExceeded(
            f"a result of {size} bytes is over the server's {scope} artifact budget "
            f"({used} of {limit} bytes in use; results expire after {lim.ttl_s:g} s)",
            needed=size,
            limit=int(limit),
            scope=scope,
        )

    # -- uploads ----------------------------------------------------------------------------------------
    def open_upload(self, *, node: str, workspace: str, size: int, mime_type: str) -> _RedisUpload:
        upload_id = secrets.token_urlsafe(16)
        self._reserve_or_raise(upload_id, node, size, self.limits.upload_idle_s, uploads=True)
        return _RedisUpload(self, node, workspace, size, mime_type, upload_id)

    def sweep(self) -> None:
        """End every reservation whose time is up (rule 1), all of them, a batch at a time."""
        for _ in range(10_000):
            if int(self._sweep(keys=_KEYS)) < _EXPIRE_BATCH:
                return

    async def sweep_every(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(self.sweep)
            except Exception:  # Redis away: the keys' own TTLs free them meanwhile (rule 3)
                continue

    def used_bytes(self, node: str | None = None) -> int:
        self._sweep(keys=_KEYS)
        value = self.redis.hget(_USED, "total" if node is None else f"n:{node}")
        return int(value or 0)

    # -- whole blobs ----------------------------------------------------------------------------------------
    def put(self, data: bytes, mime_type: str, *, node: str, workspace: str) -> str:
        artifact_id = secrets.token_urlsafe(16)
        self._reserve_or_raise(artifact_id, node, len(data), self.limits.ttl_s, uploads=False)
        expires = time.time() + self.limits.ttl_s
        meta = f"{_P}:{artifact_id}"
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(f"{meta}:data", data, px=self._key_ttl_ms())
        pipe.hset(
            meta,
            mapping={
                "mime": mime_type,
                "node": node,
                "workspace": workspace,
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "expires": repr(expires),
            },
        )
        pipe.pexpire(meta, self._key_ttl_ms())
        pipe.execute()
        return artifact_id

    def discard(self, artifact_id: str) -> None:
        self._discard(keys=_KEYS, args=[artifact_id])

    def info(self, artifact_id: str) -> ArtifactInfo | None:
        if not isinstance(artifact_id, str) or not 0 < len(artifact_id) <= 64:
            return None
        raw = self.redis.hgetall(f"{_P}:{artifact_id}")
        if not raw:
            return None
        meta = {k.decode(): v.decode() for k, v in raw.items()}
        try:
            expires = float(meta["expires"])
            if expires <= time.time():
                return None
            return ArtifactInfo(
                artifact_id,
                meta["mime"],
                meta["node"],
                meta["workspace"],
                int(meta["size"]),
                meta["sha256"],
                _monotonic(expires),
            )
        except (KeyError, ValueError):
            return None

    def read_bytes(self, artifact_id: str) -> bytes | None:
        return self._data(artifact_id) if self.info(artifact_id) is not None else None

    def get(self, artifact_id: str, caller: Caller) -> Artifact | None:
        return visible_artifact(self.info(artifact_id), caller, self._data)  # one metadata read

    def _data(self, artifact_id: str) -> bytes | None:
        data: bytes | None = self.redis.get(f"{_P}:{artifact_id}:data")
        return data

    def open_bytes(self, artifact_id: str) -> BinaryIO | None:
        info = self.info(artifact_id)
        if info is None:
            return None
        reader = io.BufferedReader(_Reader(self.redis, f"{_P}:{artifact_id}:data", info.size))
        return reader

    def __len__(self) -> int:
        self._sweep(keys=_KEYS)
        return int(self.redis.zcard(_DEADLINE)) - int(self.redis.hlen(_PENDING))
