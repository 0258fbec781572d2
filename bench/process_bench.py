"""Background processes: long-poll wake-up, a flooding process beside echo, 16 processes + 16 calls.

Where it sits: outside the product; `python3 -m bench` picks it up through `main(quick)`. A real server
and a real `cortex-agent run` child on loopback, driven through the SDK.

1. Wake-up: a process prints its own wall-clock time every 100 ms; a client loops `process_read`
   with `wait_s` and, when a read returns, takes now minus the time printed in the first line it got.
   Reference, same run: the same program as a local asyncio child, its stdout pipe read directly.
   Target (issue 17): within 50 ms.
2. Flood: while a background process writes ~50 MB/s, sequential `echo` calls; p99 against the same
   echo calls with no process running. Target: p99 < 50 ms.
3. 16 background processes and 16 concurrent `process_read` calls (wait_s 1 s each, on silent
   processes): the wall time of the 16 against one alone. No call waiting on another means about 1x.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import AgentProcess, Row, ServerProcess, percentile
from bench.roundtrip import _wait_nodes
from sdk import AsyncClient

__all__ = ["main"]

WORKSPACE = "bench"
NODE = "agent-0"
CLOCK = (
    f"{sys.executable} -u -c 'import time\n"
    "while True:\n print(repr(time.time()), flush=True)\n time.sleep(0.1)'"
)
FLOOD = (
    f"{sys.executable} -u -c 'import sys, time\n"
    'chunk = b"x" * (512 * 1024)\nstart = time.monotonic()\nsent = 0\n'
    "while True:\n"
    " sys.stdout.buffer.write(chunk); sys.stdout.flush(); sent += len(chunk)\n"
    " ahead = sent / 50e6 - (time.monotonic() - start)\n"
    " time.sleep(max(0.0, ahead))'"
)


async def _call(client: AsyncClient, tool: str, args: dict[str, Any]) -> Any:
    return await client.call(NODE, tool, args, timeout=60)


async def _wakeups(client: AsyncClient, rounds: int) -> list[float]:
    started = await _call(client, "process_start", {"command": CLOCK, "name": "clock"})
    pid = started.structured["process_id"]
    samples: list[float] = []
    offset = 0
    try:
        while len(samples) < rounds:
            r = await _call(client, "process_read", {"process_id": pid, "offset": offset, "wait_s": 5})
            now = time.time()
            out = r.structured["output"]
            offset = r.structured["next_offset"]
            first = out.split("\n", 1)[0]
            if first and out.count("\n") == 1:  # exactly one new line: its print time is the output time
                samples.append(now - float(first))
    finally:
        await _call(client, "process_kill", {"process_id": pid, "signal": "KILL"})
    return samples[1:] or samples


async def _local_wakeups(rounds: int) -> list[float]:
    proc = await asyncio.create_subprocess_shell(
        CLOCK, stdout=asyncio.subprocess.PIPE, start_new_session=True
    )
    assert proc.stdout is not None
    samples = []
    try:
        for _ in range(rounds + 1):
            line = await proc.stdout.readline()
            samples.append(time.time() - float(line))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
    return samples[1:]


async def _echo_times(client: AsyncClient, calls: int) -> list[float]:
    samples = []
    for i in range(calls):
        began = time.perf_counter()
        await _call(client, "echo", {"text": f"ping {i}"})
        samples.append(time.perf_counter() - began)
    return samples


async def _flood(client: AsyncClient, calls: int) -> tuple[list[float], list[float], float]:
    quiet = await _echo_times(client, calls)
    started = await _call(client, "process_start", {"command": FLOOD, "name": "flood"})
    pid = started.structured["process_id"]
    try:
        await asyncio.sleep(0.5)  # the flood is under way (time is the subject here)
        before = await _listed_bytes(client, pid)
        t0 = time.perf_counter()
        loaded = await _echo_times(client, calls)
        rate = (await _listed_bytes(client, pid) - before) / (time.perf_counter() - t0)
    finally:
        await _call(client, "process_kill", {"process_id": pid, "signal": "KILL"})
    return loaded, quiet, rate


async def _listed_bytes(client: AsyncClient, pid: str) -> int:
    listed = (await _call(client, "process_list", {})).structured["processes"]
    return int(next(p["output_bytes"] for p in listed if p["process_id"] == pid))


async def _sixteen(client: AsyncClient) -> tuple[float, float]:
    pids = []
    for i in range(16):
        r = await _call(client, "process_start", {"command": "sleep 600", "name": f"silent-{i}"})
        pids.append(r.structured["process_id"])
    try:
        began = time.perf_counter()
        await _call(client, "process_read", {"process_id": pids[0], "wait_s": 1})
        alone = time.perf_counter() - began
        began = time.perf_counter()
        await asyncio.gather(*(_call(client, "process_read", {"process_id": p, "wait_s": 1}) for p in pids))
        together = time.perf_counter() - began
    finally:
        await asyncio.gather(
            *(_call(client, "process_kill", {"process_id": p, "signal": "KILL"}) for p in pids)
        )
    return together, alone


async def _run(quick: bool, workdir: Path) -> list[dict[str, Any]]:
    rounds = 20 if quick else 100
    calls = 100 if quick else 500
    server = await asyncio.to_thread(ServerProcess(workdir / "server").start)
    agent: AgentProcess | None = None
    try:
        creds = server.enroll([NODE], WORKSPACE)
        agent = AgentProcess(workdir / "agent-home", server.url, NODE, creds[NODE], ["--no-browser"]).start()
        async with AsyncClient(server.url, token=server.user_token(workspace=WORKSPACE)) as client:
            await _wait_nodes(client, {NODE}, timeout=30)
            wake = await _wakeups(client, rounds)
            loaded, quiet, rate = await _flood(client, calls)
            together, alone = await _sixteen(client)
        local_wake = await _local_wakeups(rounds)
    finally:
        if agent is not None:
            agent.stop()
        server.stop()
    rows = [
        Row(
            f"process_read wait_s wake-up p{q} ({len(wake)} outputs)",
            percentile(wake, q) * 1000,
            percentile(local_wake, q) * 1000,
            "ms",
            higher_is_better=False,
            note="ref: local pipe read of the same program",
            target="≤ 50 ms" if q == 99 else "",
        )
        for q in (50, 99)
    ]
    rows += [
        Row(
            f"echo p{q} beside a {rate / 1e6:.0f} MB/s process ({calls} calls)",
            percentile(loaded, q) * 1000,
            percentile(quiet, q) * 1000,
            "ms",
            higher_is_better=False,
            note="ref: the same echo calls with no process running",
            target="p99 < 50 ms" if q == 99 else "",
        )
        for q in (50, 99)
    ]
    rows.append(
        Row(
            "16 processes + 16 concurrent process_read (wait_s 1)",
            together * 1000,
            alone * 1000,
            "ms",
            higher_is_better=False,
            note="ref: one such call alone; ≈1x = no call waits on another",
        )
    )
    return [r.as_dict() for r in rows]


def main(quick: bool = False) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="cortex-process-bench-") as tmp:
        rows = asyncio.run(_run(quick, Path(tmp)))
    for row in rows:
        print(
            f"{row['scenario']:<60} ours {row['ours']:8.2f} {row['unit']}  reference {row['reference']:8.2f}"
        )
    return rows


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
