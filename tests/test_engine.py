"""ToolEngine: the checked path of a call (policy, schema, audit before and after, limits, live policy)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from desktop_agent.audit import AuditLog, verify
from desktop_agent.engine import QUEUE_FACTOR, ToolEngine
from desktop_agent.policy import Overrides
from spec.errors import INTERNAL_ERROR, INVALID_PARAMS, OVERLOADED, RpcError
from spec.manifest import load_manifest

BROWSER = {t["name"] for t in load_manifest() if t["name"].startswith("browser_")}
CALLER = {"sub": "alice", "ws": "w1"}


class Home:
    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "root"
        self.home = tmp / "home"
        self.root.mkdir()
        self.home.mkdir()

    def toml(self, body: str = "") -> None:
        text = f'allowed_roots = ["{self.root}"]\n[browser]\nenabled = false\n{body}'
        (self.home / "agent.toml").write_text(text)

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in (self.home / "audit.log").read_text().splitlines()]


@pytest.fixture
def h(tmp_path: Path) -> Home:
    home = Home(tmp_path)
    home.toml()
    return home


@pytest.fixture
async def engine(h: Home) -> AsyncIterator[ToolEngine]:
    eng = ToolEngine(h.home, watch_poll_ms=100)
    await eng.start()
    try:
        yield eng
    finally:
        await eng.aclose()


async def call(engine: ToolEngine, name: str, request_id: str | int = 1, **arguments: Any) -> dict[str, Any]:
    return await engine.call(name, arguments, request_id=request_id, caller=CALLER)


def names(engine: ToolEngine) -> list[str]:
    return [t["name"] for t in engine.list_tools()]


async def test_listed_tools_equal_the_manifest(h: Home) -> None:
    manifest = [t["name"] for t in load_manifest()]
    engine = ToolEngine(h.home)
    assert names(engine) == [n for n in manifest if n not in BROWSER]  # browser.enabled = false
    assert engine.list_tools()[0] == load_manifest()[0]
    (h.home / "agent.toml").write_text(f'allowed_roots = ["{h.root}"]\n')
    listed = names(ToolEngine(h.home))
    assert [n for n in listed if n not in BROWSER] == [n for n in manifest if n not in BROWSER]
    assert {n for n in listed if n in BROWSER} in (set(), BROWSER)  # all or none, as the browser allows
    assert names(ToolEngine(h.home, Overrides(browser_enabled=False))) == [
        n for n in manifest if n not in BROWSER
    ]


async def test_a_call_is_audited_before_and_after(engine: ToolEngine, h: Home) -> None:
    result = await call(engine, "echo", "r1", text="hi")
    audit = result.pop("_meta")["cortex/audit"]
    assert result == {"content": [{"type": "text", "text": "hi"}], "isError": False}
    assert audit["finished_seq"] == audit["requested_seq"] + 1
    requested, finished = h.records()
    assert requested["event"] == "tool.requested" and requested["arguments"] == {"text": "hi"}
    assert requested["caller"] == CALLER and requested["request_id"] == "r1" and requested["tool"] == "echo"
    assert (
        finished["event"] == "tool.finished" and finished["status"] == "ok" and finished["exit_code"] is None
    )
    content = json.dumps(
        result["content"], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()
    assert finished["output_sha256"] == hashlib.sha256(content).hexdigest()
    assert finished["output_bytes"] == len(content) and finished["duration_ms"] >= 0
    assert engine.audit_head() == {"seq": 2, "hash": finished["hash"]}
    page = await engine.audit_read(1, 10)
    assert [r["seq"] for r in page["records"]] == [2] and page["head"]["seq"] == 2


async def test_requested_is_on_disk_before_the_tool_runs(engine: ToolEngine, h: Home) -> None:
    result = await call(engine, "shell_exec", "see-me", command=f"cat {h.home / 'audit.log'}")
    seen = [json.loads(line) for line in result["structuredContent"]["stdout"].splitlines()]
    assert seen[-1]["event"] == "tool.requested" and seen[-1]["request_id"] == "see-me"


async def test_shell_statuses_and_exit_codes(engine: ToolEngine, h: Home) -> None:
    failed = await call(engine, "shell_exec", command="exit 3")
    assert failed["isError"] and failed["structuredContent"]["exit_code"] == 3
    await call(engine, "shell_exec", command="sleep 30", timeout_s=0.2)
    finished = [r for r in h.records() if r["event"] == "tool.finished"]
    assert [(r["status"], r["exit_code"]) for r in finished] == [("error", 3), ("timeout", -15)]


async def test_tool_failure_is_an_error_result(engine: ToolEngine, h: Home) -> None:
    result = await call(engine, "fs_read", path="/etc/passwd")
    assert result["isError"] and "outside" in result["content"][0]["text"]
    assert h.records()[-1]["status"] == "error"


async def test_disabled_tools_vanish_and_are_denied(h: Home) -> None:
    h.toml('[tools]\nenabled = ["echo", "shell_exec", "fs_read"]\n[shell]\nenabled = false\n')
    engine = ToolEngine(h.home)
    assert names(engine) == ["echo", "fs_read"]
    for tool, args in (("shell_exec", {"command": "touch x"}), ("fs_write", {"path": "x", "content": "y"})):
        with pytest.raises(RpcError) as info:
            await engine.call(tool, args, request_id=7, caller=CALLER)
        assert info.value.code == INVALID_PARAMS
    assert not (h.root / "x").exists()
    denied = h.records()
    assert [(r["event"], r["tool"]) for r in denied] == [
        ("tool.denied", "shell_exec"),
        ("tool.denied", "fs_write"),
    ]
    assert denied[0]["caller"] == CALLER and denied[0]["request_id"] == 7
    await engine.aclose()


async def test_unknown_tool_and_bad_arguments_run_nothing(engine: ToolEngine, h: Home) -> None:
    with pytest.raises(RpcError) as unknown:
        await call(engine, "rm_rf", path="/")
    assert unknown.value.code == INVALID_PARAMS
    with pytest.raises(RpcError) as bad:
        await call(engine, "fs_write", path="x", content="y", extra=True)
    assert bad.value.code == INVALID_PARAMS and "extra" in bad.value.message
    with pytest.raises(RpcError):
        await call(engine, "shell_exec", command="touch ran", timeout_s=99999)
    assert not (h.root / "x").exists() and not (h.root / "ran").exists()
    assert {r["event"] for r in h.records()} == {"tool.denied"}


async def test_unwritable_audit_log_means_the_tool_does_not_run(h: Home) -> None:
    (h.home / "audit.log").mkdir()  # cannot be opened as a file
    engine = ToolEngine(h.home)
    with pytest.raises(RpcError) as info:
        await call(engine, "shell_exec", command=f"touch {h.root / 'ran'}")
    assert info.value.code == INTERNAL_ERROR
    assert not (h.root / "ran").exists()


async def test_cancelled_call_is_audited_and_propagates(engine: ToolEngine, h: Home) -> None:
    started = asyncio.Event()

    async def progress(value: float, total: float | None, message: str | None) -> None:
        started.set()

    task = asyncio.ensure_future(
        engine.call(
            "shell_exec", {"command": "echo go; sleep 60"}, request_id="c", caller=CALLER, progress=progress
        )
    )
    async with asyncio.timeout(10):
        await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(10):
            await task
    last = h.records()[-1]
    assert (last["event"], last["status"], last["request_id"]) == ("tool.finished", "cancelled", "c")


async def test_concurrency_limit_queue_and_overload(h: Home) -> None:
    engine = ToolEngine(h.home, Overrides(max_concurrency=1))
    await engine.start()
    running = asyncio.Event()

    async def progress(value: float, total: float | None, message: str | None) -> None:
        running.set()

    first = asyncio.ensure_future(
        engine.call(
            "shell_exec", {"command": "echo go; sleep 60"}, request_id=0, caller=CALLER, progress=progress
        )
    )
    async with asyncio.timeout(10):
        await running.wait()
    waiting = QUEUE_FACTOR * 1  # max_concurrency=1
    queued = [asyncio.ensure_future(call(engine, "echo", i, text=str(i))) for i in range(1, waiting + 1)]
    for _ in range(waiting + 1):
        await asyncio.sleep(0)  # let each queued call reach the queue
    assert not any(t.done() for t in queued)
    with pytest.raises(RpcError) as info:
        await call(engine, "echo", 99, text="too many")
    assert info.value.code == OVERLOADED
    assert h.records()[-1]["event"] == "tool.denied"
    first.cancel()
    async with asyncio.timeout(10):
        done = await asyncio.gather(*queued)
    assert [d["content"][0]["text"] for d in done] == [str(i) for i in range(1, waiting + 1)]
    with pytest.raises(asyncio.CancelledError):
        await first
    await engine.aclose()
    assert verify(h.home / "audit.log").ok


async def test_many_concurrent_calls_each_finish_once(engine: ToolEngine, h: Home) -> None:
    await asyncio.gather(*(call(engine, "echo", i, text=str(i)) for i in range(40)))
    records = h.records()
    assert [r["seq"] for r in records] == list(range(1, 81))
    finished = sorted(r["request_id"] for r in records if r["event"] == "tool.finished")
    assert finished == list(range(40))
    assert verify(h.home / "audit.log").count == 80


async def test_live_edit_removes_a_tool_and_fires_the_callback(engine: ToolEngine, h: Home) -> None:
    changed = asyncio.Event()
    engine.on_tools_changed(changed.set)
    assert "shell_exec" in names(engine)
    h.toml("[shell]\nenabled = false\n")
    async with asyncio.timeout(10):
        await changed.wait()
    assert "shell_exec" not in names(engine) and not engine.config.policy.shell_enabled
    with pytest.raises(RpcError):
        await call(engine, "shell_exec", command="true")
    assert h.records()[-1]["event"] == "tool.denied"

    changed.clear()
    (h.home / "agent.toml").write_text("[shell]\nenabled = nope\n")  # bad: old policy stays
    h.toml('[tools]\nenabled = ["echo"]\n')
    async with asyncio.timeout(10):
        await changed.wait()
    assert names(engine) == ["echo"]


async def test_record_and_caller_in_node_events(engine: ToolEngine, h: Home) -> None:
    await engine.record("node.connected", server="http://127.0.0.1:8765")
    record = h.records()[-1]
    assert record["event"] == "node.connected" and record["server"] == "http://127.0.0.1:8765"


@pytest.mark.skipif(not os.access("/dev/shm", os.W_OK), reason="no tmpfs at /dev/shm")
@pytest.mark.parametrize("alone", [True, False])
async def test_calls_that_came_together_commit_their_records_together(
    alone: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`alone=False` (the link read these calls in one frame): on a log committed on the loop, their
    `tool.requested` records go in one batch; the first call alone commits at once, by itself."""
    batches: list[list[str | None]] = []
    commit = AuditLog._commit

    def spy(log: AuditLog, batch: list[Any]) -> Any:
        batches.append([p.event for p in batch])
        return commit(log, batch)

    monkeypatch.setattr(AuditLog, "_commit", spy)
    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
        h = Home(Path(tmp))
        h.toml()
        eng = ToolEngine(h.home, watch_poll_ms=100)
        await eng.start()
        try:
            batches.clear()
            results = await asyncio.gather(
                *(
                    eng.call("echo", {"text": str(i)}, request_id=i, caller=CALLER, alone=alone)
                    for i in range(4)
                )
            )
        finally:
            await eng.aclose()
        assert [r["content"][0]["text"] for r in results] == ["0", "1", "2", "3"]
        requested = [b.count("tool.requested") for b in batches if "tool.requested" in b]
        # alone: the first commits at once (the others, started while it runs, are not alone then)
        assert requested[0] == 1 if alone else requested == [4]
        assert sum(requested) == 4
        assert verify(h.home / "audit.log").ok
