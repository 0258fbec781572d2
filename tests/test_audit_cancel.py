"""An append whose caller is cancelled still lands whole before the cancellation goes on
(desktop_agent.audit rule 1): the engine relies on it to pair every `tool.requested` with its end."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from desktop_agent.audit import MEMORY_FILESYSTEMS, AuditLog, filesystem_type, verify


async def test_a_cancelled_append_is_on_disk_when_the_cancellation_arrives(tmp_path: Path) -> None:
    if filesystem_type(tmp_path) in MEMORY_FILESYSTEMS:
        pytest.skip("needs a log on a real disk: there the writer thread commits, and cancelling can race it")
    log = AuditLog(tmp_path / "audit.log")
    await log.open()
    try:
        for i in range(20):
            task = asyncio.create_task(log.append("tool.requested", request_id=i))
            await asyncio.sleep(0)  # the append is queued and its caller waits for the writer
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # Read straight from the file (`read` would flush first): the record must already be there.
            lines = (tmp_path / "audit.log").read_text().splitlines()
            assert json.loads(lines[-1])["request_id"] == i
            assert len(lines) == i + 1
    finally:
        await log.aclose()
    assert verify(tmp_path / "audit.log").ok
