"""One agent per home: an advisory `flock` on `<home>/agent.lock`, held for the process's lifetime.

Layering: a leaf of `desktop_agent`, taken by `cortex-agent run` and `cortex-agent tray` (cli.py, tray.py)
before a `NodeAgent` is built. Two agents on one home would share a credential and a node name, so the
server would replace one connection by the other (close 4409) forever, and both would append to one audit
log.

Rules:
1. The lock is `fcntl.flock(LOCK_EX | LOCK_NB)`: the kernel drops it when the process dies, however it
   dies, so a stale lock file never blocks the next start.
2. The holder writes its pid into the file (after it holds the lock), so a refused second agent can name
   the running one.
3. The file is opened without truncation: a refused agent must not wipe the holder's pid.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

__all__ = ["LOCK_FILE", "HomeLock", "HomeLocked"]

LOCK_FILE = "agent.lock"


class HomeLocked(OSError):
    """Another agent holds this home's lock; `pid` is its process id when it could be read."""

    def __init__(self, path: Path, pid: int | None) -> None:
        who = f"pid {pid}" if pid is not None else "another process"
        super().__init__(f"another agent ({who}) already runs on this home ({path})")
        self.path = path
        self.pid = pid


class HomeLock:
    """`with HomeLock(home):` holds the home for this process; raises `HomeLocked` when taken."""

    def __init__(self, home: Path) -> None:
        self.path = home / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise HomeLocked(self.path, pid) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> HomeLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
