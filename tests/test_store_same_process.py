"""SQLite: a second store opened and closed in the server's own process (the demo enrolls its node that
way, through `server.admin`) must not pull the WAL out from under the server's open store.

Closing any file descriptor of a database file drops every POSIX lock the process holds on it, the
server connection's included; the closing store then believes it is the file's last user, checkpoints
and deletes the ``-wal``/``-shm`` files, and the server's connection goes on reading through a stale
index (a lookup by name answered with rows of another table). So no store opens an fd of an existing
database file outside SQLite.
"""

from __future__ import annotations

import os
from pathlib import Path

from server import admin
from server.store import ServerStore


def _our_locks_on(path: Path) -> list[str]:
    """This process's POSIX locks on `path` (Linux /proc/locks: pid and device:inode per line)."""
    inode, pid = os.stat(path).st_ino, os.getpid()
    with open("/proc/locks", encoding="ascii") as locks:
        return [line for line in locks if f":{inode} " in line and f" {pid} " in line]


def test_an_admin_command_in_the_servers_process_keeps_its_store_whole(tmp_path: Path) -> None:
    server = ServerStore(tmp_path)
    try:
        server.load_or_create_signing_key()
        held = _our_locks_on(tmp_path / "cortex.db")
        assert held  # WAL mode: an open connection holds a shared lock on the database file
        for i in range(5):
            admin.issue_token(tmp_path, "demo-admin", "local", "admin", 60)
            admin.enroll_node(tmp_path, f"node-{i}", "local")
            assert _our_locks_on(tmp_path / "cortex.db") == held  # the server's lock survived
            assert (tmp_path / "cortex.db-wal").exists()  # and so did its WAL
            record = server.get_node(f"node-{i}")
            assert record is not None and record.name == f"node-{i}"
        assert [n.name for n in server.list_nodes()] == [f"node-{i}" for i in range(5)]
    finally:
        server.close()
