"""Operator commands behind ``cortex-server enroll-node | issue-token | revoke-node | revoke-user``.

Where it sits: between `server.cli` (argument parsing, printing) and `server.store` / `server.auth`. Each
function opens the data directory's `ServerStore`, does one thing and closes it, so it is safe to run
while a server process uses the same directory (SQLite orders the writers; the server's
`SQLiteRevocationFeed` notices a revocation within its poll interval).
"""

from __future__ import annotations

import os
from pathlib import Path

from server.auth import TokenAuthority
from server.store import ServerStore, UserRevocation

__all__ = ["default_data_dir", "enroll_node", "issue_token", "revoke_node", "revoke_user"]


def default_data_dir() -> Path:
    """``$CORTEX_SERVER_HOME`` if set, else ``~/.cortex-server``."""
    env = os.environ.get("CORTEX_SERVER_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cortex-server"


def enroll_node(data_dir: Path, name: str, workspace: str) -> str:
    """Enroll *name* in *workspace* and return its credential (print it once; it is not stored).

    Raises `server.store.InvalidName` or `server.store.NodeExists`.
    """
    store = ServerStore(data_dir)
    try:
        return store.enroll_node(name, workspace)
    finally:
        store.close()


def issue_token(data_dir: Path, name: str, workspace: str, role: str = "member", ttl: int = 3600) -> str:
    """A user token for *name* in *workspace*, signed with the data directory's key.

    Raises ValueError for a bad workspace, role or ttl (1 s to 30 days).
    """
    store = ServerStore(data_dir)
    try:
        key = store.load_or_create_signing_key()
    finally:
        store.close()
    return TokenAuthority(key).mint_user_token(name, workspace, role=role, ttl=ttl)


def revoke_node(data_dir: Path, name: str) -> bool:
    """Revoke *name*; True if it was live, False if unknown or already revoked."""
    store = ServerStore(data_dir)
    try:
        return store.revoke_node(name)
    finally:
        store.close()


def revoke_user(data_dir: Path, name: str, workspace: str | None = None) -> UserRevocation:
    """Kill every token of user *name* issued up to now (in *workspace*, or in all workspaces).

    A running server sees it within its poll interval and closes the user's live RPC and MCP links.
    """
    store = ServerStore(data_dir)
    try:
        return store.revoke_user(name, workspace)
    finally:
        store.close()
