"""Concurrency, cancellation and faults through real processes on loopback (issue: never hang)."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sdk import AsyncClient, CallCancelled, CallHandle, CallTimeout, ConnectionLost, NodeDisconnected
from tests.support.pids import pids_with, wait_gone
from tests.support.procs import AgentProc, ServerProc


async def _until_gone(marker: str, within: float) -> float:
    """Seconds until every process carrying `marker` has exited (waited on pidfds, bounded)."""
    started = time.monotonic()
    assert await asyncio.to_thread(wait_gone, pids_with(marker), within), f"{marker} still running"
    return time.monotonic() - started


def _start_shell(
    client: AsyncClient, marker: str, command: str, **kw: Any
) -> tuple[CallHandle, asyncio.Event]:
    """Start `command` (which must print before it blocks); the event fires on its first output."""
    running = asyncio.Event()
    handle = client.start(
        "laptop",
        "shell_exec",
        {"command": f"echo started {marker}; {command}"},
        on_progress=lambda _p: running.set(),
        **kw,
    )
    return handle, running


async def test_five_slow_reads_run_together_and_ping_answers(
    server_proc: ServerProc, start_node: Callable[..., AgentProc], tmp_path: Path
) -> None:
    start_node("laptop")
    root = tmp_path / "laptop-root"
    pipes = [root / f"pipe{i}" for i in range(5)]
    for pipe in pipes:
        os.mkfifo(pipe)
    async with AsyncClient(server_proc.url, token=server_proc.token()) as client:
        reads = [client.start("laptop", "fs_read", {"path": str(p)}, timeout=30) for p in pipes]
        async with asyncio.timeout(10):
            # All five are blocked on their pipes; the tunnel still answers.
            assert (await client.call("laptop", "echo", {"text": "alive"})).text == "alive"
            assert not any(r.done() for r in reads)

        def feed(path: Path, text: str) -> None:
            with open(path, "w") as f:
                f.write(text)

        await asyncio.gather(*(asyncio.to_thread(feed, p, f"data {i}") for i, p in enumerate(pipes)))
        async with asyncio.timeout(20):
            results = [await r for r in reads]
    assert [r.text for r in results] == [f"data {i}" for i in range(5)]


async def test_hundred_calls_from_ten_clients(
    server_proc: ServerProc, start_node: Callable[..., AgentProc]
) -> None:
    start_node("laptop")
    token = server_proc.token()

    async def one_client(n: int) -> list[str]:
        async with AsyncClient(server_proc.url, token=token) as client:
            results = await asyncio.gather(
                *(client.call("laptop", "echo", {"text": f"{n}-{i}"}) for i in range(10))
            )
            return [r.text for r in results]

    async with asyncio.timeout(60):
        answers = await asyncio.gather(*(one_client(n) for n in range(10)))
    assert answers == [[f"{n}-{i}" for i in range(10)] for n in range(10)]


async def test_cancel_kills_the_process_group(
    server_proc: ServerProc, start_node: Callable[..., AgentProc]
) -> None:
    start_node("laptop")
    marker = f"600.{uuid.uuid4().int % 10**6}"
    async with AsyncClient(server_proc.url, token=server_proc.token()) as client:
        # a shell with a child of its own: both must die
        call, running = _start_shell(client, marker, f"sleep {marker} & sleep {marker}; wait")
        async with asyncio.timeout(10):
            await running.wait()
        await call.cancel()
        with pytest.raises(CallCancelled):
            await call
        assert await _until_gone(marker, within=1.0) <= 1.0
        # harmless: cancelling a finished call
        done = client.start("laptop", "echo", {"text": "x"})
        assert (await done).text == "x"
        await done.cancel()
        # a cancel racing the result never breaks the link
        racers = [client.start("laptop", "echo", {"text": str(i)}) for i in range(20)]
        await asyncio.gather(*(r.cancel() for r in racers[::2]))
        for i, racer in enumerate(racers):
            try:
                assert (await racer).text == str(i)
            except CallCancelled:
                assert i % 2 == 0
        assert (await client.call("laptop", "echo", {"text": "still fine"})).text == "still fine"
    audit = (server_proc.data_dir.parent / "laptop-home" / "audit.log").read_text()
    assert '"status":"cancelled"' in audit


async def test_sdk_timeout_cancels_the_work_on_the_node(
    server_proc: ServerProc, start_node: Callable[..., AgentProc]
) -> None:
    start_node("laptop")
    marker = f"601.{uuid.uuid4().int % 10**6}"
    async with AsyncClient(server_proc.url, token=server_proc.token()) as client:
        with pytest.raises(CallTimeout):
            await client.call("laptop", "shell_exec", {"command": f"sleep {marker}"}, timeout=1.5)
        assert await _until_gone(marker, within=2.0) <= 2.0


async def test_dropped_sdk_connection_cancels_its_calls(
    server_proc: ServerProc, start_node: Callable[..., AgentProc]
) -> None:
    start_node("laptop")
    marker = f"602.{uuid.uuid4().int % 10**6}"
    client = AsyncClient(server_proc.url, token=server_proc.token())
    await client.connect()
    call, running = _start_shell(client, marker, f"sleep {marker}")
    async with asyncio.timeout(10):
        await running.wait()
    await client.aclose()
    with pytest.raises((ConnectionLost, CallCancelled)):
        await call
    await _until_gone(marker, within=3.0)


async def test_progress_arrives_in_order(
    server_proc: ServerProc, start_node: Callable[..., AgentProc]
) -> None:
    start_node("laptop")
    seen: list[str] = []
    async with AsyncClient(server_proc.url, token=server_proc.token()) as client:
        result = await client.call(
            "laptop",
            "shell_exec",
            {"command": "for i in $(seq 1 40); do echo line$i; sleep 0.01; done"},
            on_progress=lambda p: seen.append(p.get("message") or ""),
        )
    assert not result.is_error
    lines = [line for chunk in seen for line in chunk.splitlines() if line.startswith("line")]
    assert lines == [f"line{i}" for i in range(1, 41)]


async def test_agent_killed_mid_call(server_proc: ServerProc, start_node: Callable[..., AgentProc]) -> None:
    agent = start_node("laptop")
    marker = f"603.{uuid.uuid4().int % 10**6}"
    async with AsyncClient(server_proc.url, token=server_proc.token()) as client:
        call, running = _start_shell(client, marker, f"sleep {marker}")
        async with asyncio.timeout(10):
            await running.wait()
        started = time.monotonic()
        agent.kill()
        with pytest.raises(NodeDisconnected):
            async with asyncio.timeout(10):
                await call
        assert time.monotonic() - started < 5
    for pid in pids_with(marker):  # the orphaned sleep of a kill -9'd agent
        os.kill(pid, 9)


async def test_server_killed_mid_call_then_agent_reconnects(
    server_proc: ServerProc, start_node: Callable[..., AgentProc]
) -> None:
    start_node("laptop")
    marker = f"604.{uuid.uuid4().int % 10**6}"
    async with AsyncClient(server_proc.url, token=server_proc.token()) as client:
        call, running = _start_shell(client, marker, f"sleep {marker}")
        async with asyncio.timeout(10):
            await running.wait()
        server_proc.kill()
        with pytest.raises(ConnectionLost):
            async with asyncio.timeout(10):
                await call
    # the node noticed its server is gone and stopped the orphaned work
    await _until_gone(marker, within=10.0)
    server_proc.start()
    await asyncio.to_thread(server_proc.wait_status, "laptop", "connected", 40)
    async with AsyncClient(server_proc.url, token=server_proc.token()) as client:
        assert (await client.call("laptop", "echo", {"text": "back"})).text == "back"
