"""Which implementation each piece of per-process state gets: embedded, or shared by the replicas.

Where it sits: called by `server.state.build_state` only; below it the services' embedded and shared
twins. The embedded default (no ``--redis-url``, the SQLite store) is exactly the single process as it
always was; each shared twin (embedded | shared) is picked by the setting that names its engine:

- enroll / revoke-node / revoke-user: `SQLiteChangeFeed` (polls) | `PostgresChangeFeed`
  (``--database-url postgresql://…``; LISTEN/NOTIFY, see `server.stores.postgres_changes`).
- user revocations: the store + the feed, in both cases (every replica applies each one).
- audit heads: `AuditHeads` cache | + `AuditHeadChanged` from the PostgreSQL feed (an acknowledge on one
  replica shows on every replica).
- oauth back-off tables: `InProcessBackoff` | `RedisFailureBackoff` (``--redis-url``).
- recent calls: `RecentCalls` | `RedisRecentCalls` (``--redis-url``).
- artifacts: `DiskArtifactStore` | `RedisArtifactStore` (``--redis-url``; why Redis: its module).
- pending approvals: `NodeEntry.approvals`, always read through the registry (`server.approvals`), so a
  shared registry that mirrors entries across replicas shares them too.

Redis keys used by these services (all under ``cortex:``; the registry's keys are listed in its own
module): ``cortex:oauth:*`` (`server.redis_backoff`), ``cortex:calls``, ``cortex:calls:id``
(`server.redis_calls`), ``cortex:artifact:*``, ``cortex:artifacts:*`` (`server.redis_artifacts`).

Rules:

1. A URL is never logged with its password (`redacted`).
2. Everything opened here is closed by `SharedEngines.aclose` (the app's lifespan calls it).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from server.artifact_store import ArtifactLimits, ArtifactStore
from server.backoff import OAuthBackoff
from server.changes import ChangeFeed, SQLiteChangeFeed
from server.config import ServerConfig
from server.recent_calls import RecentCalls
from server.store import Store

__all__ = ["SharedEngines", "is_postgres_url", "redacted"]

logger = logging.getLogger(__name__)


def _sync_closer(client: Any) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        client.close()

    return close


def is_postgres_url(url: str | None) -> bool:
    return bool(url) and urlsplit(str(url)).scheme in ("postgresql", "postgres")


def redacted(url: str) -> str:
    """*url* without its password (rule 1)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


@dataclass
class SharedEngines:
    """The clients of the shared engines this process uses (none in the embedded default)."""

    database_url: str | None = None
    redis: Any = None
    """A `redis.asyncio.Redis` when ``--redis-url`` is set."""
    redis_url: str | None = field(default=None, repr=False)
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @classmethod
    def open(cls, config: ServerConfig) -> SharedEngines:
        engines = cls(database_url=config.database_url if is_postgres_url(config.database_url) else None)
        if config.redis_url:
            import redis.asyncio as aioredis

            engines.redis_url = config.redis_url
            engines.redis = aioredis.Redis.from_url(
                config.redis_url, socket_connect_timeout=5, socket_timeout=10, health_check_interval=15
            )
            engines._closers.append(engines.redis.aclose)
            logger.info("shared state in Redis at %s", redacted(config.redis_url))
        return engines

    def oauth_backoff(self, config: ServerConfig) -> OAuthBackoff:
        if self.redis is None:
            return OAuthBackoff.in_process(config.oauth_client_backoff, config.oauth_address_backoff)
        from server.redis_backoff import RedisFailureBackoff

        return OAuthBackoff(
            RedisFailureBackoff(self.redis, "client", config.oauth_client_backoff),
            RedisFailureBackoff(self.redis, "address", config.oauth_address_backoff),
        )

    def recent_calls(self) -> RecentCalls:
        """The recent calls: this process's `RecentCalls`, or with Redis the shared log."""
        from server.redis_calls import RedisRecentCalls

        if self.redis is None:
            return RecentCalls()

        recent = RedisRecentCalls(self.redis)
        self._closers.insert(0, recent.aclose)  # stop the flusher before its client closes
        return recent

    def artifacts(self, limits: ArtifactLimits) -> ArtifactStore | None:
        """Artifacts in Redis (server.redis_artifacts), or None for the embedded disk store."""
        if self.redis_url is None:
            return None
        import redis

        from server.redis_artifacts import RedisArtifactStore

        # Synchronous: the store's interface is (its byte-moving calls run in worker threads).
        client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=5, socket_timeout=10)
        self._closers.append(_sync_closer(client))
        return RedisArtifactStore(client, limits)

    def change_feed(
        self,
        config: ServerConfig,
        store: Store,
        *,
        revocation_after: int,
        user_after: int,
        enrollment_after: int,
    ) -> ChangeFeed:
        if self.database_url is None:
            return SQLiteChangeFeed(store, user_after, config.revocation_poll_interval, enrollment_after)
        from server.stores.postgres_changes import PostgresChangeFeed

        return PostgresChangeFeed(self.database_url, revocation_after=revocation_after, user_after=user_after)

    async def aclose(self) -> None:
        for close in self._closers:
            try:
                await close()
            except Exception:
                logger.warning("closing a shared engine client failed", exc_info=True)
        self._closers.clear()
