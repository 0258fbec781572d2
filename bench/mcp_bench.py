"""MCP benchmark: `tools/call` round trips through our `/mcp` vs a plain server from the `mcp` package.

Where it sits: outside the product, beside the other benchmarks; ``python3 -m bench.mcp_bench [--quick]``,
or through ``python3 -m bench`` (which calls `main(quick)`). The same official client (`ClientSession`
over `streamable_http_client`, handshake era) drives every side in one run:

- ours: `cortex-server serve` + a real `cortex-agent run` node, calling ``<node>__echo`` — the call
  crosses the MCP endpoint, the router and the node tunnel: three processes (client, server, node);
- reference: an `MCPServer` (the package's FastMCP successor) with one ``echo`` tool under uvicorn, the
  SDK's defaults (every answer an SSE stream): two processes, the tool runs inside the MCP server;
- the same reference with ``json_response=True`` (every answer one JSON body), to show what the SDK's
  framing costs. Ours answers a call with no progress token in JSON (`server/mcp_json_answer.py`).

Figures: sequential p50 latency (ms), calls/s with 64 calls in flight, and CPU per call of each process
(from /proc, over the 64-in-flight phases). The three servers run at once and are measured in
alternating rounds (medians), so load from elsewhere falls on every side alike. All processes share
this machine's cores, so the client's own CPU (the official client costs more per call than either
server) bounds every side's throughput, and ours has a third process (the node) on the same cores.
Target (issue 16): ours ≥ 0.9x the plain `mcp` server's calls/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from bench.harness import REPO, AgentProcess, ServerProcess, _env, cpu_seconds, percentile

__all__ = ["main", "run"]

CONCURRENCY = 64
TARGET = "≥ 0.9x the plain mcp server"


@dataclass
class Figures:
    """One side's figures: sequential p50 (ms), calls/s at 64 in flight, CPU µs per call by process."""

    p50_ms: float
    rate: float
    cpu_us: dict[str, float] = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_reference(port: int, json_response: bool = False) -> None:
    """The reference: a plain `MCPServer` with an echo tool (run in a child process)."""
    import uvicorn
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("reference", log_level="WARNING")

    @server.tool()
    def echo(text: str) -> str:
        """Return the text."""
        return text

    app = server.streamable_http_app(json_response=json_response)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the reference MCP server exited")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)  # polling a port: no event to wait on
    raise RuntimeError(f"the reference MCP server did not listen on {port} within {timeout} s")


@contextlib.asynccontextmanager
async def _session(url: str, token: str | None) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    limits = httpx2.Limits(max_connections=CONCURRENCY + 8, max_keepalive_connections=CONCURRENCY + 8)
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(60.0), limits=limits) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


@dataclass
class Side:
    """One server under test, running: how to make one call, and the pids whose CPU is read."""

    call: Callable[[], Awaitable[Any]]
    pids: dict[str, int]
    samples_ms: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    cpu_us: list[dict[str, float]] = field(default_factory=list)

    async def sequential(self, n: int) -> None:
        for _ in range(n):
            started = time.perf_counter()
            await self.call()
            self.samples_ms.append((time.perf_counter() - started) * 1000)

    async def in_flight(self, total: int) -> None:
        remaining = total

        async def lane() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await self.call()

        cpu_before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        client_before = time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - started
        cpu = {name: (cpu_seconds(pid) - cpu_before[name]) / total * 1e6 for name, pid in self.pids.items()}
        cpu["client"] = (time.process_time() - client_before) / total * 1e6
        self.rates.append(total / elapsed)
        self.cpu_us.append(cpu)

    def figures(self) -> Figures:
        cpu = {name: statistics.median(c[name] for c in self.cpu_us) for name in self.cpu_us[0]}
        return Figures(percentile(self.samples_ms, 50), statistics.median(self.rates), cpu)


@contextlib.asynccontextmanager
async def _ours(workdir: Path) -> AsyncIterator[Side]:
    server = await asyncio.to_thread(ServerProcess(workdir / "server-mcp").start)
    agent: AgentProcess | None = None
    try:
        credential = server.enroll(["mcp-bench"], "bench")["mcp-bench"]
        agent = AgentProcess(
            workdir / "agent-mcp",
            server.url,
            "mcp-bench",
            credential,
            ["--no-browser", "--max-concurrency", "128"],
        ).start()
        assert agent.proc is not None
        token = server.user_token()
        async with _session(f"{server.url}/mcp", token) as session:
            deadline = time.monotonic() + 30
            while "mcp-bench__echo" not in {t.name for t in (await session.list_tools()).tools}:
                if time.monotonic() > deadline:
                    raise RuntimeError("the bench node did not connect")
                await asyncio.sleep(0.1)

            async def call() -> Any:
                return await session.call_tool("mcp-bench__echo", {"text": "ping"})

            yield Side(call, {"server": server.pid, "node": agent.proc.pid})
    finally:
        if agent is not None:
            await asyncio.to_thread(agent.stop)
        await asyncio.to_thread(server.stop)


def _start_reference(port: int, json_response: bool) -> subprocess.Popen[bytes]:
    flag = ["--json-response"] if json_response else []
    return subprocess.Popen(
        [sys.executable, "-m", "bench.mcp_bench", "--reference-server", str(port), *flag],
        env=_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


@contextlib.asynccontextmanager
async def _reference(json_response: bool = False) -> AsyncIterator[Side]:
    port = _free_port()
    proc = await asyncio.to_thread(_start_reference, port, json_response)
    try:
        await asyncio.to_thread(_wait_port, port, proc)
        async with _session(f"http://127.0.0.1:{port}/mcp", None) as session:

            async def call() -> Any:
                return await session.call_tool("echo", {"text": "ping"})

            yield Side(call, {"server": proc.pid})
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def measure(
    quick: bool = False, sizes: tuple[int, int, int] | None = None
) -> tuple[Figures, Figures, Figures]:
    """Ours, the plain server, and the plain server with json_response: measured in alternating rounds.

    All three run at once; each round measures each side in turn, so load from elsewhere on a shared
    machine falls on all of them alike. Sequential samples are pooled; the other figures are medians.
    """
    rounds, sequential_n, total = sizes or ((3, 70, 400) if quick else (5, 200, 1500))
    with tempfile.TemporaryDirectory(prefix="cortex-mcp-bench-") as tmp:
        async with (
            _ours(Path(tmp)) as ours,
            _reference() as ref,
            _reference(json_response=True) as ref_json,
        ):
            sides = (ours, ref, ref_json)
            for side in sides:
                for _ in range(20):  # warm-up
                    await side.call()
            for _ in range(rounds):
                for side in sides:
                    await side.sequential(sequential_n)
                    await side.in_flight(total)
            return ours.figures(), ref.figures(), ref_json.figures()


async def run(quick: bool = False, sizes: tuple[int, int, int] | None = None) -> list[dict[str, Any]]:
    """The rows; *sizes* (rounds, sequential calls, calls in flight per round) overrides the defaults."""
    ours, ref, ref_json = await measure(quick, sizes)
    note = "ours relays to a real node (3 processes); reference: SDK defaults, tool in-process (2)"
    json_note = "reference: the same plain server with json_response=True (every answer one JSON body)"
    node_note = f"ours: + node {ours.cpu_us['node']:.0f} µs per call (the reference has no node)"
    plain = _rows(
        ours,
        ref,
        (
            "mcp tools/call sequential p50",
            f"mcp tools/call {CONCURRENCY} in flight",
            "mcp server CPU per call",
            "mcp client CPU per call",
        ),
        (note, note, node_note, "the official client, in this process"),
        TARGET,
    )
    vs_json = _rows(
        ours,
        ref_json,
        (
            "mcp sequential p50 vs SDK json_response",
            f"mcp {CONCURRENCY} in flight vs SDK json_response",
            "mcp server CPU vs SDK json_response",
            "mcp client CPU vs SDK json_response",
        ),
        (json_note, json_note, node_note, json_note),
    )
    return [*plain, *vs_json[:2], vs_json[3], vs_json[2]]


def _rows(
    ours: Figures,
    ref: Figures,
    names: tuple[str, str, str, str],
    notes: tuple[str, str, str, str],
    target: str | None = None,
) -> list[dict[str, Any]]:
    """Sequential p50, calls/s in flight, server CPU and client CPU per call: ours beside `ref`."""
    figures = (
        (round(ours.p50_ms, 3), round(ref.p50_ms, 3), "ms", False),
        (round(ours.rate, 1), round(ref.rate, 1), "calls/s", True),
        (round(ours.cpu_us["server"]), round(ref.cpu_us["server"]), "µs", False),
        (round(ours.cpu_us["client"]), round(ref.cpu_us["client"]), "µs", False),
    )
    rows = []
    for name, note, (mine, theirs, unit, higher) in zip(names, notes, figures, strict=True):
        row: dict[str, Any] = {
            "scenario": name,
            "ours": mine,
            "reference": theirs,
            "unit": unit,
            "higher_is_better": higher,
            "note": note,
        }
        if target is not None and unit == "calls/s":
            row["target"] = target
        rows.append(row)
    return rows


def main(quick: bool = False) -> list[dict[str, Any]]:
    rows = asyncio.run(run(quick))
    print("shared cores: every process of a side (client included) competes for the same CPUs")
    for row in rows:
        ratio = row["ours"] / row["reference"] if row["reference"] else float("nan")
        target = f"  target {row['target']}" if row.get("target") else ""
        print(
            f"{row['scenario']:<40} ours {row['ours']:>9} {row['unit']:<8} reference {row['reference']:>9}"
            f"  {ratio:5.2f}x{target}"
        )
    for row in rows:
        if row.get("note") and row["note"] not in {r["note"] for r in rows[: rows.index(row)]}:
            print(f"  note: {row['note']}")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reference-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--json-response", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.reference_server:
        serve_reference(options.reference_server, options.json_response)
    else:
        main(options.quick)
