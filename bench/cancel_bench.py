"""Cancel-to-process-gone: how long after `await call.cancel()` the cancelled command's processes are dead.

Where it sits: outside the product; `python3 -m bench` picks it up through `main(quick)`. A real server
and a real `cortex-agent run` child on loopback; each round starts `shell_exec` of a shell with a child
(`sleep X & sleep X; wait`), waits for its first output, cancels through the SDK and waits on pidfds
until every process of it has exited. Reference, same run: the same two processes started locally with
asyncio and killed directly (`killpg`), timed the same way — the floor of "making processes go away".
Target (issue 6): p99 ≤ 500 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.harness import AgentProcess, Row, ServerProcess, percentile
from bench.roundtrip import _wait_nodes
from sdk import AsyncClient, CallCancelled
from tests.support.pids import pids_with, wait_gone

__all__ = ["main"]

WORKSPACE = "bench"


async def _ours(client: AsyncClient, rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        marker = f"9{uuid.uuid4().int % 10**8}"
        running = asyncio.Event()

        def started_output(_params: dict[str, Any], running: asyncio.Event = running) -> None:
            running.set()

        call = client.start(
            "agent-0",
            "shell_exec",
            {"command": f"echo go; sleep {marker} & sleep {marker}; wait"},
            on_progress=started_output,
        )
        async with asyncio.timeout(15):
            await running.wait()
        pids = pids_with(marker)
        started = time.perf_counter()
        await call.cancel()
        assert await asyncio.to_thread(wait_gone, pids, 10.0), "cancelled processes still alive"
        samples.append(time.perf_counter() - started)
        with contextlib.suppress(CallCancelled):
            await call
    return samples


async def _reference(rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        marker = f"8{uuid.uuid4().int % 10**8}"
        proc = await asyncio.create_subprocess_shell(
            f"echo go; sleep {marker} & sleep {marker}; wait",
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        assert proc.stdout is not None
        await proc.stdout.readline()
        pids = pids_with(marker)
        started = time.perf_counter()
        os.killpg(proc.pid, signal.SIGKILL)
        assert await asyncio.to_thread(wait_gone, pids, 10.0), "cancelled processes still alive"
        samples.append(time.perf_counter() - started)
        await proc.wait()
    return samples


async def _run(quick: bool, workdir: Path) -> list[dict[str, Any]]:
    rounds = 20 if quick else 100
    server = await asyncio.to_thread(ServerProcess(workdir / "server").start)
    agent: AgentProcess | None = None
    try:
        creds = server.enroll(["agent-0"], WORKSPACE)
        agent = AgentProcess(
            workdir / "agent-home", server.url, "agent-0", creds["agent-0"], ["--no-browser"]
        ).start()
        async with AsyncClient(server.url, token=server.user_token(workspace=WORKSPACE)) as client:
            await _wait_nodes(client, {"agent-0"}, timeout=30)
            ours = await _ours(client, rounds)
        reference = await _reference(rounds)
    finally:
        if agent is not None:
            agent.stop()
        server.stop()
    rows = [
        Row(
            f"cancel → process group gone p{q} ({rounds} rounds)",
            percentile(ours, q) * 1000,
            percentile(reference, q) * 1000,
            "ms",
            higher_is_better=False,
            note="ref: local killpg of the same processes" + ("; target p99 ≤ 500 ms" if q == 99 else ""),
        )
        for q in (50, 99)
    ]
    return [r.as_dict() for r in rows]


def main(quick: bool = False) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="cortex-cancel-bench-") as tmp:
        rows = asyncio.run(_run(quick, Path(tmp)))
    for row in rows:
        print(
            f"{row['scenario']:<45} ours {row['ours']:8.2f} {row['unit']}  reference {row['reference']:8.2f}"
        )
    return rows


if __name__ == "__main__":
    import sys

    main(quick="--quick" in sys.argv)
