"""ReDoS stall: how long a node stops answering while `fs_grep` runs `(a+)+$` over hostile lines.

Where it sits: outside the product; `python3 -m bench` picks it up through `main(quick)`. A real server
and a real `cortex-agent run` child on loopback. During each `fs_grep` of `(a+)+$` over a file of lines
made to blow up a backtracking engine (40 `a`s and a `!`, plus one 1 MiB line of `a`s and a `!`), echo
calls go to the same node back to back; the figure is the slowest echo (the node's stall). Reference,
same run: the slowest of as many echo calls while the node is idle. Target (issue 13): < 1 s; with
Python's `re` the first line alone takes hours, holding the GIL, so the node would answer nothing.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import AgentProcess, Row, ServerProcess
from bench.roundtrip import _wait_nodes
from sdk import AsyncClient

__all__ = ["main"]

WORKSPACE = "bench"
REDOS = "(a+)+$"


async def _echo_worst_while(
    client: AsyncClient, busy: asyncio.Future[Any] | None, n: int
) -> tuple[float, int]:
    """Slowest echo round trip (s) over `n` echoes, or for as long as `busy` runs, whichever is longer."""
    worst, count = 0.0, 0
    while count < n or (busy is not None and not busy.done()):
        started = time.perf_counter()
        await client.call("agent-0", "echo", {"text": "ping"}, timeout=30)
        worst = max(worst, time.perf_counter() - started)
        count += 1
    return worst, count


async def _run(quick: bool, workdir: Path) -> list[dict[str, Any]]:
    rounds = 3 if quick else 10
    root = workdir / "root"
    root.mkdir()
    evil = root / "evil.txt"
    evil.write_text(("a" * 40 + "!\n") * (2000 if quick else 20000) + "a" * (1 << 20) + "!\n")
    server = await asyncio.to_thread(ServerProcess(workdir / "server").start)
    agent: AgentProcess | None = None
    try:
        creds = server.enroll(["agent-0"], WORKSPACE)
        agent = AgentProcess(
            workdir / "agent-home",
            server.url,
            "agent-0",
            creds["agent-0"],
            ["--no-browser", "--allow-root", str(root)],
        ).start()
        async with AsyncClient(server.url, token=server.user_token(workspace=WORKSPACE)) as client:
            await _wait_nodes(client, {"agent-0"}, timeout=30)
            stall, echoes, grep_s = 0.0, 0, 0.0
            for _ in range(rounds):
                started = time.perf_counter()
                grep = asyncio.ensure_future(
                    client.call("agent-0", "fs_grep", {"pattern": REDOS, "path": str(evil)}, timeout=60)
                )
                worst, count = await _echo_worst_while(client, grep, 1)
                result = await grep
                assert not result.is_error, result.text
                grep_s = max(grep_s, time.perf_counter() - started)
                stall, echoes = max(stall, worst), echoes + count
            idle, _ = await _echo_worst_while(client, None, echoes)
    finally:
        if agent is not None:
            agent.stop()
        server.stop()
    row = Row(
        f"ReDoS (a+)+$ grep: slowest echo during it ({echoes} echoes, {rounds} greps)",
        stall * 1000,
        idle * 1000,
        "ms",
        higher_is_better=False,
        note=f"ref: slowest of {echoes} echoes on the idle node; slowest grep {grep_s * 1000:.0f} ms",
        target="< 1000 ms",
    )
    return [row.as_dict()]


def main(quick: bool = False) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="cortex-redos-bench-") as tmp:
        rows = asyncio.run(_run(quick, Path(tmp)))
    for row in rows:
        print(
            f"{row['scenario']}: ours {row['ours']:.1f} ms, "
            f"reference {row['reference']:.1f} ms ({row['note']})"
        )
    return rows


if __name__ == "__main__":
    import sys

    main(quick="--quick" in sys.argv)
