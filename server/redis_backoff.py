"""The ``/oauth/token`` back-off tables in Redis, shared by every replica of a cluster.

Where it sits: the shared twin of `server.backoff.FailureBackoff`, chosen by the app when ``--redis-url``
is set; `server.oauth` asks it exactly as it asks the embedded table (`BackoffTable`). Behind a load
balancer a guesser's requests land on every replica: tables kept per process would give it one
allowance per replica, and a node blocked on one replica would not be blocked on the next.

Redis keys (all under ``cortex:oauth:``; *table* is ``client`` or ``address``):

- ``cortex:oauth:<table>:<key>`` — hash ``failures``, ``last``, ``blocked`` (Redis server time, seconds);
  expires `BackoffPolicy.forget_after_s` after its last failure (rule 4 of `server.backoff`).
- ``cortex:oauth:<table>`` — sorted set of the table's keys scored by their last failure: the bound on
  the table's size (rule 5: past `BackoffPolicy.max_keys`, the least recently failed keys are dropped).

Rules (those of `server.backoff`, plus):

1. Each operation is one Lua script, atomic on the Redis server, timed by the Redis server's clock
   (``TIME``): replicas with skewed clocks agree on every block.
2. A Redis that fails answers "not blocked" (logged): the back-off slows guessers down, it must not
   lock every node out while Redis is away; the credential is still checked against its hash.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from server.backoff import BackoffPolicy

__all__ = ["KEY_PREFIX", "RedisFailureBackoff"]

logger = logging.getLogger(__name__)

KEY_PREFIX = "cortex:oauth:"

_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) + tonumber(t[2]) / 1000000 "

_FAILED = (
    _NOW
    + """
local free, base, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local forget, max_keys, member = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local rec = redis.call('HMGET', KEYS[1], 'failures', 'last', 'blocked')
local failures, blocked = tonumber(rec[1]), tonumber(rec[3])
if not failures or now - tonumber(rec[2]) >= forget then failures = 0 blocked = now end
failures = failures + 1
local over = failures - free
if over > 0 then
    local delay = cap
    if over <= 64 then delay = math.min(cap, base * 2 ^ (over - 1)) end
    blocked = now + delay
end
redis.call('HSET', KEYS[1], 'failures', failures, 'last', now, 'blocked', blocked)
redis.call('PEXPIRE', KEYS[1], math.ceil(forget * 1000))
redis.call('ZADD', KEYS[2], now, member)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - forget)
local n = redis.call('ZCARD', KEYS[2])
if n > max_keys then
    for _, old in ipairs(redis.call('ZRANGE', KEYS[2], 0, n - max_keys - 1)) do
        redis.call('DEL', KEYS[2] .. ':' .. old)
    end
    redis.call('ZREMRANGEBYRANK', KEYS[2], 0, n - max_keys - 1)
end
return tostring(math.max(0, blocked - now))
"""
)

_RETRY_AFTER = (
    _NOW
    + """
local rec = redis.call('HMGET', KEYS[1], 'last', 'blocked')
if not rec[1] then return '0' end
if now - tonumber(rec[1]) >= tonumber(ARGV[1]) then
    redis.call('DEL', KEYS[1])
    return '0'
end
return tostring(math.max(0, tonumber(rec[2]) - now))
"""
)


class RedisFailureBackoff:
    """One back-off table (``client`` or ``address``) in Redis; the async `BackoffTable` interface."""

    def __init__(self, redis: Any, table: str, policy: BackoffPolicy) -> None:
        if table not in ("client", "address"):
            raise ValueError("table must be 'client' or 'address'")
        self.policy = policy
        self._redis = redis
        self._index = f"{KEY_PREFIX}{table}"
        self._failed = redis.register_script(_FAILED)
        self._retry_after = redis.register_script(_RETRY_AFTER)

    def _key(self, key: str) -> str:
        return f"{self._index}:{key}"

    async def retry_after(self, key: str) -> float:
        """Seconds until *key* may try again; 0 when it may try now (or Redis cannot say: rule 2)."""
        try:
            left = await self._retry_after(keys=[self._key(key)], args=[self.policy.forget_after_s])
        except Exception:
            logger.warning("oauth back-off: Redis unavailable, not blocking", exc_info=True)
            return 0.0
        return _seconds(left)

    async def failed(self, key: str) -> float:
        """Count one failure of *key*; returns how long it is now blocked."""
        p = self.policy
        try:
            left = await self._failed(
                keys=[self._key(key), self._index],
                args=[p.free_failures, p.base_s, p.cap_s, p.forget_after_s, p.max_keys, key],
            )
        except Exception:
            logger.warning("oauth back-off: Redis unavailable, failure not counted", exc_info=True)
            return 0.0
        return _seconds(left)

    async def succeeded(self, key: str) -> None:
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                await pipe.delete(self._key(key)).zrem(self._index, key).execute()
        except Exception:
            logger.warning("oauth back-off: Redis unavailable, success not recorded", exc_info=True)

    async def size(self) -> int:
        """How many keys the table holds now."""
        return int(await self._redis.zcard(self._index))


def _seconds(value: Any) -> float:
    seconds = float(value.decode() if isinstance(value, bytes) else value)
    return seconds if math.isfinite(seconds) and seconds > 0 else 0.0
