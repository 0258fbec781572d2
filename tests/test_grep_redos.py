"""Caller regexes run in linear time, and a file tool's timeout or cancel really stops its work; the
node keeps answering while any file tool runs (issue 13: `(a+)+$` froze a node for ~36 s)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from desktop_agent.engine import ToolEngine
from desktop_agent.policy import Overrides, Policy
from desktop_agent.tools import fs as fs_module
from desktop_agent.tools import fs_search
from desktop_agent.tools.base import ToolContext, ToolFailure
from desktop_agent.tools.fs import FsTools
from sdk import AsyncClient, CallTimeout
from tests.support.procs import AgentProc, ServerProc

REDOS = "(a+)+$"
EVIL_LINE = "a" * 40 + "!"  # Python's re needs ~2^40 steps for this line


def _sparse(path: Path, size: int) -> None:
    """A huge file that costs no disk: text at the start (so it is searched), zeros after."""
    path.write_text("header line\n" * 2000)  # past the binary sniff
    os.truncate(path, size)


def _threads_in(code: Any) -> int:
    """Threads whose stack currently runs `code` (a real observation of the worker, not a mock)."""
    found = 0
    for frame in sys._current_frames().values():
        f: Any = frame
        while f is not None:
            if f.f_code is code:
                found += 1
                break
            f = f.f_back
    return found


async def _until(condition: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _cpu_settles(pid: int, within: float, window: float = 0.5, most: float = 0.04) -> bool:
    """True once `pid` uses less than `most` CPU seconds in each of two `window`s in a row (time is the
    observation here; two quiet windows, because a busy shared machine can starve a busy process once)."""
    deadline = time.monotonic() + within
    quiet = 0
    while time.monotonic() < deadline:
        before = _cpu_seconds(pid)
        await asyncio.sleep(window)
        quiet = quiet + 1 if _cpu_seconds(pid) - before < most else 0
        if quiet == 2:
            return True
    return False


def _ctx(root: Path) -> ToolContext:
    return ToolContext(request_id=1, caller={}, home=root / ".cortex", policy=Policy(allowed_roots=(root,)))


async def test_unsupported_patterns_are_a_clear_error(tmp_path: Path) -> None:
    tools = FsTools()
    try:
        for pattern in (r"(a)\1", "(?=x)y", "(?<!a)b", "(", "a{1000}{1000}", "(a|b)" * 100_000):
            with pytest.raises(ToolFailure) as info:
                await tools.fs_grep({"pattern": pattern, "path": "."}, _ctx(tmp_path))
            assert "regular expression" in str(info.value)
    finally:
        tools.close()


async def test_a_redos_pattern_finishes_at_once(tmp_path: Path) -> None:
    (tmp_path / "evil.txt").write_text((EVIL_LINE + "\n") * 200)
    tools = FsTools()
    try:
        async with asyncio.timeout(10):  # with Python's re this takes hours
            result = await tools.fs_grep({"pattern": REDOS, "path": "evil.txt"}, _ctx(tmp_path))
        assert result.structured is not None and result.structured["matches"] == []
    finally:
        tools.close()


async def test_a_cancel_stops_the_grep_thread(tmp_path: Path) -> None:
    _sparse(tmp_path / "huge.txt", 200 << 30)  # minutes of work if nothing stops it
    tools = FsTools()
    try:
        call = asyncio.ensure_future(tools.fs_grep({"pattern": "needle", "path": "."}, _ctx(tmp_path)))
        assert await _until(lambda: _threads_in(fs_search.grep_file.__code__) == 1, 10)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert await _until(lambda: _threads_in(fs_search.grep_file.__code__) == 0, 3)
    finally:
        tools.close()


async def test_blocked_file_calls_never_starve_the_node(tmp_path: Path) -> None:
    """More slow file calls (FIFOs nobody writes) than the loop's default thread pool has threads:
    the audit log's appends (and so every other call) must still go through."""
    root, home = tmp_path / "root", tmp_path / "home"
    root.mkdir()
    n = min(32, (os.cpu_count() or 1) + 4) + 2  # asyncio's default executor size, plus two
    pipes = [root / f"pipe{i}" for i in range(n)]
    for pipe in pipes:
        os.mkfifo(pipe)
    engine = ToolEngine(home, Overrides(allowed_roots=(root,), max_concurrency=64, browser_enabled=False))
    await engine.start()
    caller = {"sub": "alice", "ws": "w1"}
    reads = [
        asyncio.ensure_future(engine.call("fs_read", {"path": str(p)}, request_id=i, caller=caller))
        for i, p in enumerate(pipes)
    ]
    try:
        assert await _until(lambda: _threads_in(fs_module._read_stream.__code__) >= n - 2, 10)
        async with asyncio.timeout(5):
            echoed = await engine.call("echo", {"text": "alive"}, request_id="e", caller=caller)
        assert echoed["content"][0]["text"] == "alive"
    finally:
        for r in reads:
            r.cancel()
        await asyncio.gather(*reads, return_exceptions=True)
        await engine.aclose()


async def test_grep_with_a_redos_pattern_leaves_the_node_answering(
    server_proc: ServerProc, start_node: Callable[..., AgentProc], tmp_path: Path
) -> None:
    start_node("laptop")
    root = tmp_path / "laptop-root"
    (root / "evil.txt").write_text((EVIL_LINE + "\n") * 2000)
    async with AsyncClient(server_proc.url, token=server_proc.token()) as client:
        grep = asyncio.ensure_future(
            client.call("laptop", "fs_grep", {"pattern": REDOS, "path": str(root)}, timeout=30)
        )
        worst = 0.0
        async with asyncio.timeout(20):
            while not grep.done():
                started = time.monotonic()
                assert (await client.call("laptop", "echo", {"text": "ping"})).text == "ping"
                worst = max(worst, time.monotonic() - started)
            result = await grep
        assert not result.is_error and result.structured is not None
        assert result.structured["matches"] == []
        assert worst < 5.0  # behaviour, not a speed target: bench/race_bench.py measures the stall


async def test_the_call_timeout_stops_the_work_on_the_node(
    server_proc: ServerProc, start_node: Callable[..., AgentProc], tmp_path: Path
) -> None:
    agent = start_node("laptop")
    root = tmp_path / "laptop-root"
    _sparse(root / "huge.txt", 500 << 30)
    async with AsyncClient(server_proc.url, token=server_proc.token()) as client:
        with pytest.raises(CallTimeout):
            await client.call("laptop", "fs_grep", {"pattern": "needle", "path": str(root)}, timeout=1)
        assert (await client.call("laptop", "echo", {"text": "ok"})).text == "ok"
        # the node stopped searching: its CPU time stands nearly still once the cancel has landed
        assert await _cpu_settles(agent.pid, within=8.0)
