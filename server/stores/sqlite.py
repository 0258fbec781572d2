"""`SQLiteStore`: the embedded engine behind the async `server.store.Store` interface.

Where it sits: under `server.stores.open_store` (which builds it when no ``--database-url`` names another
engine) and over `server.store.ServerStore`, the synchronous SQLite implementation of every rule. Each
call runs in a worker thread (`asyncio.to_thread`), so the event loop never waits on SQLite's file lock;
an SQLite error (a database locked past its busy timeout, a disk error) becomes `StoreUnavailable`.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from joserfc.jwk import OKPKey

from server.store import AuditHead, NodeRecord, ServerStore, StoreUnavailable, UserRevocation

__all__ = ["SQLiteStore"]

T = TypeVar("T")


class SQLiteStore:
    """The data directory's SQLite database as a `Store`. Open with `SQLiteStore.open` (or wrap one)."""

    engine = "sqlite"

    def __init__(self, store: ServerStore) -> None:
        self.sync = store
        """The synchronous store underneath (tests and benchmarks reach SQLite through it)."""

    @classmethod
    async def open(cls, data_dir: Path) -> SQLiteStore:
        """Open (create, migrate) ``cortex.db`` in *data_dir*."""
        return cls(await _call(ServerStore, Path(data_dir)))

    @property
    def data_dir(self) -> Path:
        return self.sync.data_dir

    async def enroll_node(self, name: str, workspace: str) -> str:
        return await _call(self.sync.enroll_node, name, workspace)

    async def verify_credential(self, name: str, credential: str) -> NodeRecord | None:
        return await _call(self.sync.verify_credential, name, credential)

    async def get_node(self, name: str) -> NodeRecord | None:
        return await _call(self.sync.get_node, name)

    async def list_nodes(self, workspace: str | None = None) -> list[NodeRecord]:
        return await _call(self.sync.list_nodes, workspace)

    async def is_revoked(self, name: str) -> bool:
        return await _call(self.sync.is_revoked, name)

    async def revoke_node(self, name: str) -> bool:
        return await _call(self.sync.revoke_node, name)

    async def revocations_after(self, seq: int) -> list[tuple[int, str]]:
        return await _call(self.sync.revocations_after, seq)

    async def last_revocation_seq(self) -> int:
        return await _call(self.sync.last_revocation_seq)

    async def enrollments_after(self, seq: int) -> list[tuple[int, NodeRecord]]:
        return await _call(self.sync.enrollments_after, seq)

    async def last_enrollment_seq(self) -> int:
        return await _call(self.sync.last_enrollment_seq)

    async def revoke_user(self, sub: str, workspace: str | None = None) -> UserRevocation:
        return await _call(self.sync.revoke_user, sub, workspace)

    async def user_revocations_after(self, seq: int) -> list[UserRevocation]:
        return await _call(self.sync.user_revocations_after, seq)

    async def audit_heads(self) -> dict[str, AuditHead]:
        return await _call(self.sync.audit_heads)

    async def get_audit_head(self, node: str) -> AuditHead | None:
        return await _call(self.sync.get_audit_head, node)

    async def observe_audit_head(self, node: str, seq: int, head_hash: str | None) -> AuditHead:
        return await _call(self.sync.observe_audit_head, node, seq, head_hash)

    async def acknowledge_audit(self, node: str) -> AuditHead | None:
        return await _call(self.sync.acknowledge_audit, node)

    async def load_or_create_signing_key(self) -> OKPKey:
        return await _call(self.sync.load_or_create_signing_key)

    async def signing_keys(self) -> list[OKPKey]:
        return await _call(self.sync.signing_keys)

    async def close(self) -> None:
        await asyncio.to_thread(self.sync.close)


async def _call(fn: Callable[..., T], *args: object) -> T:
    try:
        return await asyncio.to_thread(fn, *args)
    except sqlite3.Error as exc:
        # The store's own refusals (StoreError) pass through; an engine failure is "try again later".
        raise StoreUnavailable(f"the SQLite database failed: {exc}") from exc
