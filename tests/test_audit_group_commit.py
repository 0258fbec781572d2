"""Group commit and the audit log that cannot be silenced, engine level (desktop_agent.audit 1, 2, 5, 6)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from desktop_agent.audit import STATE_FILE, AuditLog, AuditSilenced, read_saved_head, verify
from desktop_agent.engine import ToolEngine

CALLER = {"sub": "alice", "ws": "w1"}


def records(home: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (home / "audit.log").read_text().splitlines() if x]


def _rm(log: Path) -> None:
    log.unlink()


def _mv(log: Path) -> None:
    log.rename(log.with_name("audit.old"))


def _replace(log: Path) -> None:  # an identical copy under the same name: only the inode tells
    shutil.copyfile(log, log.with_name("audit.copy"))
    log.with_name("audit.copy").replace(log)


def _truncate(log: Path) -> None:
    os.truncate(log, log.stat().st_size // 2)


SILENCERS: dict[str, Callable[[Path], None]] = {
    "rm": _rm,
    "mv": _mv,
    "replace": _replace,
    "truncate": _truncate,
}


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[ToolEngine]:
    root, home = tmp_path / "root", tmp_path / "home"
    root.mkdir()
    home.mkdir()
    (home / "agent.toml").write_text(f'allowed_roots = ["{root}"]\n[browser]\nenabled = false\n')
    eng = ToolEngine(home, watch_poll_ms=100)
    await eng.start()
    try:
        yield eng
    finally:
        await eng.aclose()


async def test_one_batch_holds_every_waiting_record(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    await log.open()
    writes = 0
    real_write = os.write

    def counting_write(fd: int, data: Any) -> int:
        nonlocal writes
        writes += 1
        return real_write(fd, data)

    os.write = counting_write  # type: ignore[assignment]
    try:
        got = await asyncio.gather(*(log.append("tool.requested", request_id=i) for i in range(100)))
    finally:
        os.write = real_write
    assert [r["seq"] for r in got] == list(range(1, 101))  # queue order is chain order
    assert writes <= 3  # 100 appends waiting together: a batch or two, not 100 writes
    assert verify(tmp_path / "audit.log").count == 100
    await log.aclose()


async def test_each_caller_is_released_when_its_record_is_on_disk(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    await log.open()
    for i in range(20):
        record = await log.append("tool.requested", request_id=i)
        on_disk = [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]
        assert on_disk[-1]["hash"] == record["hash"]
    # The saved head may lag the log (rule 6: the writer saves it after waking the callers); once
    # closed, it is the last record's.
    await log.aclose()
    assert read_saved_head(tmp_path / STATE_FILE) == (20, record["hash"])
    assert stat.S_IMODE((tmp_path / STATE_FILE).stat().st_mode) == 0o600


async def test_queued_record_is_written_without_a_waiter(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    await log.open()
    log.enqueue("tool.finished", request_id=1, status="ok")
    assert [r["event"] for r in await log.read(0, 10)] == ["tool.finished"]  # read flushes first
    await log.aclose()


@pytest.mark.parametrize("how", sorted(SILENCERS))
async def test_a_silenced_log_refuses_every_tool(engine: ToolEngine, tmp_path: Path, how: str) -> None:
    home, marker = engine.home, tmp_path / "root" / "ran"
    ok = await engine.call("echo", {"text": "before"}, request_id=1, caller=CALLER)
    assert not ok["isError"]
    await engine.audit_read(0, 1)  # everything queued is on disk
    SILENCERS[how](home / "audit.log")
    for request_id in (2, 3):
        refused = await engine.call(
            "shell_exec", {"command": f"touch {marker}"}, request_id=request_id, caller=CALLER
        )
        assert refused["isError"] and "audit log" in refused["content"][0]["text"]
        assert not marker.exists()  # the tool never ran
    assert engine.audit_failure is not None
    await engine.record("node.connected", server="x")  # no error: the node stays reachable


@pytest.mark.parametrize("how", sorted(SILENCERS))
async def test_restart_records_the_recovery_and_verify_sees_a_cut(tmp_path: Path, how: str) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path)
    await log.open()
    for i in range(10):
        await log.append("tool.requested", request_id=i)
    SILENCERS[how](path)
    if how in ("rm", "mv", "truncate"):  # a log that no longer reaches the saved head
        report = verify(path)
        assert not report.ok and report.bad_seq is not None
    with pytest.raises(AuditSilenced):
        await log.append("tool.requested", request_id=99)
    await log.aclose()

    again = AuditLog(path)  # the restarted agent
    await again.open()
    await again.append("tool.requested", request_id=100)
    await again.aclose()
    recovered = [r for r in records(tmp_path) if r["event"] == "audit.recovered"]
    assert len(recovered) == 1
    assert recovered[0]["expected_head"]["seq"] == 10
    assert "refused every tool" in recovered[0]["reason"]
    assert verify(path).ok
    if how in ("rm", "mv"):  # the chain on disk starts afresh, with the recovery first
        assert records(tmp_path)[0]["seq"] == 1 and records(tmp_path)[0]["event"] == "audit.recovered"


async def test_a_tail_cut_while_the_agent_was_stopped_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path)
    await log.open()
    for i in range(10):
        await log.append("tool.requested", request_id=i)
    await log.aclose()
    kept = path.read_bytes().splitlines(keepends=True)[:6]
    path.write_bytes(b"".join(kept))  # the last 4 records gone, the rest a valid chain
    report = verify(path)
    assert (report.ok, report.bad_seq) == (False, 7)
    again = AuditLog(path)
    await again.open()
    await again.aclose()
    last = records(tmp_path)[-1]
    assert last["event"] == "audit.recovered" and last["seq"] == 7
    assert last["expected_head"]["seq"] == 10 and last["found_head"]["seq"] == 6
    assert verify(path).ok


async def test_no_tool_answers_before_its_request_is_durable(
    engine: ToolEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow disk: each fsync takes 0.2 s; an echo must not answer before the fsync of its record."""
    import desktop_agent.audit as audit_module

    synced: list[float] = []
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        time.sleep(0.2)  # the disk being slow is the point of this test
        real_fsync(fd)
        synced.append(time.monotonic())

    monkeypatch.setattr(audit_module.os, "fsync", slow_fsync)
    answered: list[float] = []

    async def one(i: int) -> None:
        result = await engine.call(
            "echo", {"text": f"t{i}"}, request_id=i, caller=CALLER, durable_finish=False
        )
        assert not result["isError"]
        answered.append(time.monotonic())

    async with asyncio.timeout(20):
        await asyncio.gather(*(one(i) for i in range(8)))
    assert synced and min(answered) >= min(synced)  # the first answer came after the first fsync


@pytest.mark.skipif(not os.access("/dev/shm", os.W_OK), reason="no tmpfs at /dev/shm")
async def test_on_tmpfs_batches_commit_on_the_loop_in_order() -> None:
    import tempfile

    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
        path = Path(tmp) / "audit.log"
        log = AuditLog(path)
        await log.open()
        assert log._inline  # a hop would cost more than the write
        got = await asyncio.gather(*(log.append("tool.requested", request_id=i) for i in range(200)))
        log.enqueue("tool.finished", request_id=0)
        await log.aclose()
        assert [r["seq"] for r in got] == list(range(1, 201))
        assert verify(path).count == 201


async def test_open_reports_an_unwritable_log(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("x")
    log = AuditLog(tmp_path / "not-a-dir" / "audit.log")
    with pytest.raises(OSError):
        await log.open()
