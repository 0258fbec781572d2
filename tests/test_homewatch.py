"""The agent.toml watch: woken by edits of that file, not by the audit log's appends (homewatch)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from desktop_agent.homewatch import open_watch

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux only")


async def test_wakes_for_the_file_and_not_for_appends_beside_it(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "audit.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)  # open all along
    watch = open_watch(tmp_path, "agent.toml")
    assert watch is not None
    stop = asyncio.Event()
    woken = 0
    seen = asyncio.Event()
    reads = 0
    readable = watch._readable

    def counting() -> None:  # each call is a loop wake-up caused by a kernel event
        nonlocal reads
        reads += 1
        readable()

    watch._readable = counting  # type: ignore[method-assign]

    async def consume() -> None:
        nonlocal woken
        async for _ in watch.changes(stop, poll_s=30):
            woken += 1
            seen.set()

    task = asyncio.create_task(consume())
    async with asyncio.timeout(5):
        await seen.wait()  # rule 1: once at the start
    seen.clear()
    try:
        for i in range(200):  # what the audit log does on every call: append, fsync, never close
            os.write(fd, b"record %d\n" % i)
            os.fsync(fd)
        await asyncio.sleep(0.3)  # nothing should arrive: give a wrong wake-up the time to show
        assert (woken, reads) == (1, 0)  # the kernel did not even report the appends
    finally:
        os.close(fd)
    (tmp_path / "agent.toml").write_text("max_concurrency = 4\n")
    async with asyncio.timeout(5):
        await seen.wait()
    assert woken == 2
    stop.set()
    async with asyncio.timeout(5):
        await task


async def test_an_editor_rename_is_seen(tmp_path: Path) -> None:
    watch = open_watch(tmp_path, "agent.toml")
    assert watch is not None
    stop = asyncio.Event()
    wakes: list[int] = []
    seen = asyncio.Event()

    async def consume() -> None:
        async for _ in watch.changes(stop, poll_s=30):
            wakes.append(1)
            seen.set()

    task = asyncio.create_task(consume())
    async with asyncio.timeout(5):
        await seen.wait()
    seen.clear()
    (tmp_path / "agent.toml.swp").write_text("x = 1\n")
    (tmp_path / "agent.toml.swp").rename(tmp_path / "agent.toml")
    async with asyncio.timeout(5):
        await seen.wait()
    stop.set()
    async with asyncio.timeout(5):
        await task
