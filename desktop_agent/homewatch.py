"""Wake when one file in the agent home is replaced or rewritten, and for nothing else (Linux inotify).

Where it sits: under `desktop_agent.policy.watch_config`, which reloads `agent.toml` when this says so;
on systems without inotify the policy falls back to `watchfiles`. No asyncio object lives beyond the
`FileWatch` it returns.

Why not a general watcher: the home also holds `audit.log` and `audit.head`, written on every tool call.
A directory watch that reports modifications wakes a thread (and takes the GIL) twice per call for
nothing. This one asks the kernel only for what ends an edit of the watched name — `IN_CLOSE_WRITE`
(a write finished), `IN_MOVED_TO`/`IN_CREATE` (an editor's rename or a new file), `IN_DELETE`,
`IN_MOVED_FROM`, `IN_ATTRIB` — so the audit log's appends (the agent never closes it) cost nothing here.

Rules:
1. `changes()` yields once as soon as it starts (an edit made before the watch was in place is not
   missed), then once per burst of events naming the file (bursts within `debounce_s` coalesce), and
   at least every `poll_s` even without events (a writer that never closes the file is still seen).
2. It returns when `stop_event` is set, and closes the inotify descriptor however it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import struct
import sys
from collections.abc import AsyncGenerator
from pathlib import Path

__all__ = ["FileWatch", "open_watch"]

IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_ONLYDIR = 0x01000000
_MASK = IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_ONLYDIR
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name


class FileWatch:
    """An inotify watch of one directory, reporting events that name one file (rules 1-2)."""

    def __init__(self, fd: int, name: str) -> None:
        self._fd = fd
        self._name = os.fsencode(name)
        self._hit = asyncio.Event()

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, 64 * 1024)
        except (BlockingIOError, InterruptedError):
            return
        offset = 0
        while offset + _HEADER.size <= len(data):
            _wd, _mask, _cookie, length = _HEADER.unpack_from(data, offset)
            start = offset + _HEADER.size
            if data[start : start + length].rstrip(b"\0") == self._name:
                self._hit.set()
            offset = start + length

    async def changes(
        self, stop_event: asyncio.Event | None, poll_s: float, debounce_s: float = 0.05
    ) -> AsyncGenerator[None, None]:
        loop = asyncio.get_running_loop()
        loop.add_reader(self._fd, self._readable)
        stop = stop_event or asyncio.Event()
        try:
            yield None
            while not stop.is_set():
                waiters = [asyncio.ensure_future(self._hit.wait()), asyncio.ensure_future(stop.wait())]
                try:
                    await asyncio.wait(waiters, timeout=poll_s, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiter in waiters:
                        waiter.cancel()
                if stop.is_set():
                    return
                if self._hit.is_set():
                    await asyncio.sleep(debounce_s)  # let the rest of an editor's save arrive
                    self._hit.clear()
                yield None
        finally:
            loop.remove_reader(self._fd)
            with contextlib.suppress(OSError):
                os.close(self._fd)


def open_watch(directory: Path, name: str) -> FileWatch | None:
    """A watch of *name* in *directory*, or None where inotify is not available (then use a general one)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, AttributeError):
        return None
    if fd < 0:
        return None
    if libc.inotify_add_watch(fd, os.fsencode(directory), _MASK) < 0:
        os.close(fd)
        return None
    return FileWatch(fd, name)
