"""Back-off for failed client authentication at ``POST /oauth/token``.

Where it sits: beside `server.oauth`, which asks `FailureBackoff.retry_after` before it checks a
credential and calls `failed` / `succeeded` after. Nothing here knows about HTTP; the clock is injected
so the rules can be tested without waiting.

Rules:

1. Failures are counted per key; the app keeps two tables, one keyed by ``client_id`` and one by the
   remote address. The address table covers only names that are not enrolled (spraying made-up ids): an
   enrolled node is never locked out by another client behind the same NAT or load balancer.
   The first `free_failures` cost nothing; each one after that blocks the key for
   ``base_s * 2 ** (n - free_failures)`` seconds, capped at `cap_s` (exponential, bounded).
2. While a key is blocked its requests are answered 429 with ``Retry-After`` *without* checking the
   credential, so a blocked guesser learns nothing and costs no hashing.
3. A success clears its ``client_id`` key (a node that mistyped its secret recovers at once); it never
   clears an address key, or a guesser could launder its record with one valid credential of its own.
4. A key with no failure for `forget_after_s` starts again from zero.
5. Memory is bounded: each table holds at most `max_keys` keys; the least recently failed one is
   dropped first. Other clients (other keys) are never slowed by someone else's failures.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "ADDRESS_BACKOFF",
    "CLIENT_BACKOFF",
    "BackoffPolicy",
    "BackoffTable",
    "FailureBackoff",
    "InProcessBackoff",
    "OAuthBackoff",
]


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """How one table backs off (rule 1, 4, 5)."""

    free_failures: int = 5
    base_s: float = 1.0
    cap_s: float = 60.0
    forget_after_s: float = 900.0
    max_keys: int = 10_000

    def __post_init__(self) -> None:
        if self.free_failures < 0 or self.base_s <= 0 or self.cap_s < self.base_s or self.max_keys < 1:
            raise ValueError("invalid back-off policy")


CLIENT_BACKOFF = BackoffPolicy()
"""Per ``client_id``: 5 free failures, then 1 s doubling to 60 s (so someone else's guessing delays a
real node by at most a minute per block; its 256-bit credential makes the guessing itself hopeless)."""

ADDRESS_BACKOFF = BackoffPolicy(free_failures=50, cap_s=300.0)
"""Per remote address: a larger allowance (nodes behind one NAT share it), a longer cap."""


@dataclass(slots=True)
class _Record:
    failures: int
    last_failure: float
    blocked_until: float


class FailureBackoff:
    """One table of failure counts (see the module rules)."""

    def __init__(self, policy: BackoffPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def retry_after(self, key: str) -> float:
        """Seconds until *key* may try again; 0 when it may try now."""
        record = self._records.get(key)
        if record is None:
            return 0.0
        now = self._clock()
        if now - record.last_failure >= self.policy.forget_after_s:
            del self._records[key]
            return 0.0
        return max(0.0, record.blocked_until - now)

    def failed(self, key: str) -> float:
        """Count one failure of *key*; returns how long it is now blocked (0 while failures are free)."""
        now = self._clock()
        record = self._records.pop(key, None)
        if record is None or now - record.last_failure >= self.policy.forget_after_s:
            record = _Record(0, now, now)
        record.failures += 1
        record.last_failure = now
        over = record.failures - self.policy.free_failures
        if over > 0:
            # min() before the power would overflow: 2**over grows without bound for a patient guesser.
            delay = (
                self.policy.cap_s
                if over > 64
                else min(self.policy.cap_s, self.policy.base_s * 2 ** (over - 1))
            )
            record.blocked_until = now + delay
        self._records[key] = record  # most recently failed last
        while len(self._records) > self.policy.max_keys:
            self._records.popitem(last=False)
        return max(0.0, record.blocked_until - now)

    def succeeded(self, key: str) -> None:
        self._records.pop(key, None)

    def __len__(self) -> int:
        return len(self._records)

    @staticmethod
    def header_value(seconds: float) -> str:
        """``Retry-After`` in whole seconds, rounded up, at least 1."""
        return str(max(1, math.ceil(seconds)))


class BackoffTable(Protocol):
    """One failure table as ``/oauth/token`` uses it: in this process (`InProcessBackoff`) or shared by
    every replica in Redis (`server.redis_backoff.RedisFailureBackoff`), hence async."""

    async def retry_after(self, key: str) -> float: ...

    async def failed(self, key: str) -> float: ...

    async def succeeded(self, key: str) -> None: ...


class InProcessBackoff:
    """`BackoffTable` over a `FailureBackoff` of this process (the embedded default)."""

    def __init__(self, policy: BackoffPolicy) -> None:
        self.table = FailureBackoff(policy)

    async def retry_after(self, key: str) -> float:
        return self.table.retry_after(key)

    async def failed(self, key: str) -> float:
        return self.table.failed(key)

    async def succeeded(self, key: str) -> None:
        self.table.succeeded(key)


class OAuthBackoff:
    """The two failure tables of one app (rule 1): per ``client_id`` and per remote address."""

    def __init__(self, clients: BackoffTable, addresses: BackoffTable) -> None:
        self.clients = clients
        self.addresses = addresses

    @classmethod
    def in_process(cls, clients: BackoffPolicy, addresses: BackoffPolicy) -> OAuthBackoff:
        return cls(InProcessBackoff(clients), InProcessBackoff(addresses))
