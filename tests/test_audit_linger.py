"""Queued records ride the next batch someone waits for (desktop_agent.audit rule 2): calls made one after
another cost one fsync each on a real disk, and a queued record alone still lands within the linger."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import desktop_agent.audit as audit_module
from desktop_agent.audit import MEMORY_FILESYSTEMS, AuditLog, filesystem_type, verify

CALLER = {"sub": "alice", "ws": "w1"}


@pytest.fixture(params=["disk", "tmpfs"])
def disk_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A real disk (the writer thread commits) and tmpfs (commits on the loop): rule 2 holds on both."""
    if request.param == "disk":
        if filesystem_type(tmp_path) in MEMORY_FILESYSTEMS:
            pytest.skip("needs a real disk: on tmpfs batches commit on the loop (rule 1)")
        yield tmp_path
        return
    if not os.access("/dev/shm", os.W_OK) or filesystem_type(Path("/dev/shm")) not in MEMORY_FILESYSTEMS:
        pytest.skip("no tmpfs at /dev/shm")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
        yield Path(tmp)


async def test_calls_one_after_another_cost_one_fsync_each(
    disk_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fsyncs: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        fsyncs.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(audit_module.os, "fsync", counting_fsync)
    log = AuditLog(disk_dir / "audit.log", linger_s=30)  # longer than the test: only the next call flushes
    await log.open()
    assert log._inline == (filesystem_type(disk_dir) in MEMORY_FILESYSTEMS)
    calls = 20
    try:
        for i in range(calls):  # what the engine does per call: wait for requested, queue finished
            await log.append("tool.requested", request_id=i, tool="echo", caller=CALLER)
            log.enqueue("tool.finished", request_id=i, tool="echo", caller=CALLER, status="ok")
            await asyncio.sleep(0.005)  # the next request comes a network round trip later
        assert len(fsyncs) == calls  # each tool.finished rode the next call's tool.requested
    finally:
        await log.aclose()
    report = verify(disk_dir / "audit.log")
    assert report.ok and report.count == 2 * calls  # the last finished was written on close


async def test_a_queued_record_alone_lands_within_the_linger(disk_dir: Path) -> None:
    path = disk_dir / "audit.log"
    log = AuditLog(path, linger_s=0.05)
    await log.open()
    try:
        queued_at = time.monotonic()
        log.enqueue("tool.finished", request_id=1, status="ok")
        written = None
        async with asyncio.timeout(10):
            while written is None:  # bounded by the timeout; the file is read, not `read` (that flushes)
                lines = path.read_text().splitlines() if path.exists() else []
                if lines:
                    written = time.monotonic()
                    assert json.loads(lines[-1])["event"] == "tool.finished"
                else:
                    await asyncio.sleep(0.01)
        assert written - queued_at >= 0.04  # it waited for company first
    finally:
        await log.aclose()


async def test_a_lone_append_on_tmpfs_is_durable_without_a_loop_pass() -> None:
    """Rule 1: `append(alone=True)` (one call in flight) commits at once on a log committed on the loop."""
    if not os.access("/dev/shm", os.W_OK) or filesystem_type(Path("/dev/shm")) not in MEMORY_FILESYSTEMS:
        pytest.skip("no tmpfs at /dev/shm")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
        log = AuditLog(Path(tmp) / "audit.log")
        await log.open()
        try:
            assert log._inline
            log.enqueue("tool.finished", request_id=0, status="ok")  # rides along
            step = log.append("tool.requested", alone=True, request_id=1, tool="echo", caller=CALLER)
            with pytest.raises(StopIteration) as done:
                step.send(None)  # one step: it never waits for the loop
            assert done.value.value["seq"] == 2
            assert [r["request_id"] for r in await log.read(0, 10)] == [0, 1]
        finally:
            await log.aclose()


def test_a_log_reopened_on_another_loop_still_lingers() -> None:
    """`aclose` leaves no linger timer of a finished event loop behind (rule 2 on the loop)."""
    if not os.access("/dev/shm", os.W_OK) or filesystem_type(Path("/dev/shm")) not in MEMORY_FILESYSTEMS:
        pytest.skip("no tmpfs at /dev/shm")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
        path = Path(tmp) / "audit.log"
        log = AuditLog(path, linger_s=0.05)

        async def first() -> None:
            await log.open()
            log.enqueue("tool.finished", request_id=1, status="ok")  # arms the linger timer
            await log.aclose()  # writes it

        async def second() -> int:
            await log.open()
            log.enqueue("tool.finished", request_id=2, status="ok")
            try:
                lines = 0
                async with asyncio.timeout(
                    10
                ):  # the file is read, not `read` (that flushes); no event to wait on
                    while lines < 2:
                        lines = len(path.read_text().splitlines())
                        if lines < 2:
                            await asyncio.sleep(0.01)
                return lines
            finally:
                await log.aclose()

        asyncio.run(first())
        assert asyncio.run(second()) == 2


async def _until_lines(path: Path, count: int) -> None:
    """Until the log file holds `count` lines (the file, not `read`: that flushes), at most 10 s."""
    async with asyncio.timeout(10):
        while True:
            if len((await asyncio.to_thread(path.read_text)).splitlines()) >= count:
                return
            await asyncio.sleep(0.01)  # no event: the writer thread tells nobody about a lingered record


class _CountingCondition(threading.Condition):
    notified = 0

    def notify(self, n: int = 1) -> None:
        self.notified += 1
        super().notify(n)


async def test_queuing_a_record_wakes_no_thread(tmp_path: Path) -> None:
    """Rule 2: the linger is a timer on the loop; an `enqueue` never wakes the writer thread (that
    wake-up came in the middle of every call's answer on a real disk)."""
    if filesystem_type(tmp_path) in MEMORY_FILESYSTEMS:
        pytest.skip("needs a real disk: on tmpfs batches commit on the loop (rule 1)")
    path = tmp_path / "audit.log"
    log = AuditLog(path, linger_s=0.05)
    log._cond = cond = _CountingCondition()
    await log.open()
    try:
        await log.append("tool.requested", request_id=1, tool="echo", caller=CALLER)
        woken = cond.notified
        log.enqueue("tool.finished", request_id=1, status="ok")
        log.enqueue("tool.finished", request_id=2, status="ok")
        assert cond.notified == woken
        await _until_lines(path, 3)
        assert cond.notified == woken + 1  # the timer, once, for both
    finally:
        await log.aclose()


def test_a_record_queued_on_a_loop_that_ended_is_written_with_the_next_loops(tmp_path: Path) -> None:
    """A loop that ends without `aclose` takes its linger timer with it: the next loop arms its own, and
    both records land."""
    path = tmp_path / "audit.log"
    log = AuditLog(path, linger_s=0.05)

    async def first() -> None:
        await log.open()
        log.enqueue("tool.finished", request_id=1, status="ok")  # its timer dies with this loop

    async def second() -> None:
        log.enqueue("tool.finished", request_id=2, status="ok")
        try:
            await _until_lines(path, 2)
        finally:
            await log.aclose()

    asyncio.run(first())
    asyncio.run(second())
    assert [json.loads(line)["request_id"] for line in path.read_text().splitlines()] == [1, 2]


def test_a_commit_scheduled_on_a_loop_that_ended_is_done_by_the_next_loop() -> None:
    """On tmpfs a batch commits in a callback of the loop pass (rule 1); a loop that stops before that
    pass takes the callback with it: the next loop schedules its own, and the record waiting is kept."""
    if not os.access("/dev/shm", os.W_OK) or filesystem_type(Path("/dev/shm")) not in MEMORY_FILESYSTEMS:
        pytest.skip("no tmpfs at /dev/shm")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
        path = Path(tmp) / "audit.log"
        log = AuditLog(path)
        asyncio.run(log.open())
        loop = asyncio.new_event_loop()
        try:
            task = loop.create_task(log.append("tool.requested", request_id=1, alone=False))
            loop.call_soon(loop.stop)  # runs in the task's pass: the commit it scheduled never runs
            loop.run_forever()
            assert not task.done()
            task.cancel()
        finally:
            loop.close()

        async def second() -> None:
            await log.append("tool.requested", request_id=2, alone=False)  # an append is not cancellable
            await log.aclose()

        # In a thread, so that a commit never scheduled fails the test (bounded) instead of hanging it.
        ended: list[None] = []
        thread = threading.Thread(target=lambda: ended.append(asyncio.run(second())), daemon=True)
        thread.start()
        thread.join(20)
        assert ended, "the next loop never committed: the record waits for a callback of a loop that ended"
        assert [json.loads(line)["request_id"] for line in path.read_text().splitlines()] == [1, 2]
        assert verify(path).ok
