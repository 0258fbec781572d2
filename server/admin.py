"""Operator commands behind ``cortex-server enroll-node | issue-token | revoke-node | revoke-user``.

Where it sits: between `server.cli` (argument parsing, printing) and the `server.store.Store` /
`server.auth`. Each function opens the store (``database_url``: None for the data directory's SQLite
file, or a shared PostgreSQL, `server.stores.open_store`), does one thing and closes it, so it is safe to
run while servers use the same state (the engine orders the writers; the servers' revocation feeds
notice a revocation within their poll interval).

The store interface is async; these one-shot commands run it under `asyncio.run` (in a worker thread
when the caller already runs an event loop, as a test or an embedding program may).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from server.auth import TokenAuthority
from server.store import NodeRecord, Store, UserRevocation
from server.stores import open_store

__all__ = [
    "default_data_dir",
    "enroll_node",
    "issue_token",
    "list_nodes",
    "revoke_node",
    "revoke_user",
    "with_store",
]

T = TypeVar("T")


def default_data_dir() -> Path:
    """``$CORTEX_SERVER_HOME`` if set, else ``~/.cortex-server``."""
    env = os.environ.get("CORTEX_SERVER_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cortex-server"


def with_store(data_dir: Path, database_url: str | None, action: Callable[[Store], Awaitable[T]]) -> T:
    """Open the store, run *action* on it, close it; blocking, from sync code."""

    async def run() -> T:
        store = await open_store(database_url, Path(data_dir))
        try:
            return await action(store)
        finally:
            await store.close()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run())
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cortex-admin") as pool:
        return pool.submit(asyncio.run, run()).result()


def enroll_node(data_dir: Path, name: str, workspace: str, database_url: str | None = None) -> str:
    """Enroll *name* in *workspace* and return its credential (print it once; it is not stored).

    Raises `server.store.InvalidName` or `server.store.NodeExists`.
    """
    return with_store(data_dir, database_url, lambda store: store.enroll_node(name, workspace))


def issue_token(
    data_dir: Path,
    name: str,
    workspace: str,
    role: str = "member",
    ttl: int = 3600,
    database_url: str | None = None,
) -> str:
    """A user token for *name* in *workspace*, signed with the store's key.

    Raises ValueError for a bad workspace, role or ttl (1 s to 30 days).
    """
    key = with_store(data_dir, database_url, lambda store: store.load_or_create_signing_key())
    return TokenAuthority(key).mint_user_token(name, workspace, role=role, ttl=ttl)


def revoke_node(data_dir: Path, name: str, database_url: str | None = None) -> bool:
    """Revoke *name*; True if it was live, False if unknown or already revoked."""
    return with_store(data_dir, database_url, lambda store: store.revoke_node(name))


def revoke_user(
    data_dir: Path, name: str, workspace: str | None = None, database_url: str | None = None
) -> UserRevocation:
    """Kill every token of user *name* issued up to now (in *workspace*, or in all workspaces).

    A running server sees it within its poll interval and closes the user's live RPC and MCP links.
    """
    return with_store(data_dir, database_url, lambda store: store.revoke_user(name, workspace))


def list_nodes(data_dir: Path, database_url: str | None = None) -> list[NodeRecord]:
    """Every enrolled node (revoked ones included), by name."""
    return with_store(data_dir, database_url, lambda store: store.list_nodes())
