"""Watching other processes die without polling: Linux pidfds become readable when their process exits."""

from __future__ import annotations

import contextlib
import os
import select
import time
from pathlib import Path

__all__ = ["descendants_with", "pids_with", "wait_gone"]


def pids_with(marker: str) -> list[int]:
    """Processes whose command line contains `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


def descendants_with(ancestor: int, marker: str) -> list[int]:
    """Descendants of `ancestor` whose command line contains `marker`."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    found = []
    for pid in pids_with(marker):
        up, hops = parents.get(pid), 0
        while up and up != ancestor and hops < 64:
            up, hops = parents.get(up), hops + 1
        if up == ancestor:
            found.append(pid)
    return found


def wait_gone(pids: list[int], timeout: float) -> bool:
    """Block until every pid has exited (each pidfd polled, no sleeping); False if `timeout` ran out."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            if not poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
                return False
        finally:
            os.close(fd)
    return True
