"""When a batch's write fails (desktop_agent.audit rule 1), the records queued behind it while it was being
written land on the durable head: the failed records' seqs are not skipped and the chain stays unbroken.

The failure is a real `OSError` from the write of the log's own descriptor (ENOSPC), injected only for
that descriptor and held until the records behind it are queued.
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from pathlib import Path

import pytest

import desktop_agent.audit as audit_module
from desktop_agent.audit import MEMORY_FILESYSTEMS, AuditLog, filesystem_type, read_records, verify

CALLER = {"sub": "alice", "ws": "w1"}


async def test_records_queued_behind_a_failed_batch_are_rebuilt_on_the_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if filesystem_type(tmp_path) in MEMORY_FILESYSTEMS:
        pytest.skip("needs a real disk: the writer thread's path")
    path = tmp_path / "audit.log"
    log = AuditLog(path)
    await log.open()
    entered, go = threading.Event(), threading.Event()
    real_write = os.write
    failed: list[int] = []

    def write(fd: int, data: bytes | memoryview) -> int:
        if fd == log._fd and not failed:
            failed.append(fd)
            entered.set()
            go.wait(10)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    try:
        for i in range(3):
            await log.append("tool.requested", request_id=i, tool="echo", caller=CALLER)
        monkeypatch.setattr(audit_module.os, "write", write)
        doomed = asyncio.ensure_future(log.append("tool.requested", request_id="doomed", caller=CALLER))
        assert await asyncio.to_thread(entered.wait, 10)
        # Queued while the batch ahead is being written: built on that batch's last record.
        behind = [
            asyncio.ensure_future(log.append("tool.requested", request_id=f"behind-{i}", caller=CALLER))
            for i in range(2)
        ]
        await asyncio.sleep(0)
        go.set()
        with pytest.raises(OSError, match="No space"):
            await asyncio.wait_for(doomed, 10)
        records = await asyncio.wait_for(asyncio.gather(*behind), 10)
        assert [r["seq"] for r in records] == [4, 5]  # the failed record's seq is not skipped
    finally:
        go.set()
        await log.aclose()
    report = verify(path)
    assert report.ok and report.count == 5, report
    written = read_records(path, 0, 10)
    assert [r["request_id"] for r in written] == [0, 1, 2, "behind-0", "behind-1"]
