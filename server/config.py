"""Server configuration: one value object built by the CLI (or a test) and handed to `build_app`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from server.backoff import ADDRESS_BACKOFF, CLIENT_BACKOFF, BackoffPolicy

__all__ = ["ServerConfig"]


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8765
    heartbeat_interval: float = 15.0
    heartbeat_misses: int = 2
    node_token_ttl: int = 300
    max_frame_bytes: int = 16 * 1024 * 1024
    artifact_ttl_s: float = 900.0
    artifact_node_bytes: int = 512 * 1024 * 1024
    artifact_total_bytes: int = 2048 * 1024 * 1024
    default_call_timeout: float = 120.0
    revocation_poll_interval: float = 0.5
    issuer: str = "cortex"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None
    public_url: str | None = None
    handshake_timeout: float = 10.0
    max_connections: int = 10_000
    oauth_client_backoff: BackoffPolicy = CLIENT_BACKOFF
    oauth_address_backoff: BackoffPolicy = ADDRESS_BACKOFF
    redis_url: str | None = None
    """Set: this process is one replica of a cluster sharing Redis (server.cluster_registry)."""
    database_url: str | None = field(default=None, repr=False)  # may hold a password: never in a repr
    """``--database-url``: None for the SQLite file in *data_dir*; ``postgresql://...`` to share state."""

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url
        scheme = "https" if self.tls_cert else "http"
        return f"{scheme}://{self.host}:{self.port}"
