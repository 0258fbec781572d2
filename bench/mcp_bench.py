"""MCP benchmark: `tools/call` round trips through our `/mcp` vs a plain server from the `mcp` package.

Where it sits: outside the product, beside the other benchmarks; ``python3 -m bench.mcp_bench [--quick]``,
or through ``python3 -m bench`` (which calls `main(quick)`). The same official client (`ClientSession`
over `streamable_http_client`, handshake era) drives both sides in one run:

- ours: `cortex-server serve` + a real `cortex-agent run` node, calling ``<node>__echo`` — the call
  crosses the MCP endpoint, the router and the node tunnel (three processes);
- reference: an `MCPServer` (the package's FastMCP successor) with one ``echo`` tool under uvicorn
  (two processes: the tool runs inside the MCP server).

Figures: sequential p50 latency (ms) and calls/s with 64 calls in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from bench.harness import REPO, AgentProcess, ServerProcess, _env, percentile

__all__ = ["main", "run"]

CONCURRENCY = 64


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_reference(port: int) -> None:
    """The reference: a plain `MCPServer` with an echo tool (run in a child process)."""
    import uvicorn
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("reference", log_level="WARNING")

    @server.tool()
    def echo(text: str) -> str:
        """Return the text."""
        return text

    uvicorn.run(server.streamable_http_app(), host="127.0.0.1", port=port, log_level="warning")


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


async def _measure(call: Callable[[], Awaitable[Any]], sequential_n: int, total: int) -> tuple[float, float]:
    for _ in range(20):  # warm-up
        await call()
    samples: list[float] = []
    for _ in range(sequential_n):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    remaining = total
    started = time.perf_counter()

    async def lane() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    await asyncio.gather(*(lane() for _ in range(CONCURRENCY)))
    return percentile(samples, 50), total / (time.perf_counter() - started)


async def _ours(workdir: Path, sequential_n: int, total: int) -> tuple[float, float]:
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
        token = server.user_token()
        async with _session(f"{server.url}/mcp", token) as session:
            deadline = time.monotonic() + 30
            while "mcp-bench__echo" not in {t.name for t in (await session.list_tools()).tools}:
                if time.monotonic() > deadline:
                    raise RuntimeError("the bench node did not connect")
                await asyncio.sleep(0.1)

            async def call() -> Any:
                return await session.call_tool("mcp-bench__echo", {"text": "ping"})

            return await _measure(call, sequential_n, total)
    finally:
        if agent is not None:
            await asyncio.to_thread(agent.stop)
        await asyncio.to_thread(server.stop)


def _start_reference(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.mcp_bench", "--reference-server", str(port)],
        env=_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


async def _reference(sequential_n: int, total: int) -> tuple[float, float]:
    port = _free_port()
    proc = await asyncio.to_thread(_start_reference, port)
    try:
        await asyncio.to_thread(_wait_port, port, proc)
        async with _session(f"http://127.0.0.1:{port}/mcp", None) as session:

            async def call() -> Any:
                return await session.call_tool("echo", {"text": "ping"})

            return await _measure(call, sequential_n, total)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def run(quick: bool = False) -> list[dict[str, Any]]:
    sequential_n, total = (200, 1000) if quick else (1000, 5000)
    with tempfile.TemporaryDirectory(prefix="cortex-mcp-bench-") as tmp:
        ours_p50, ours_rate = await _ours(Path(tmp), sequential_n, total)
    ref_p50, ref_rate = await _reference(sequential_n, total)
    note = "ours relays to a real node (3 processes); reference runs the tool in-process"
    return [
        {
            "scenario": "mcp tools/call sequential p50",
            "ours": round(ours_p50, 3),
            "reference": round(ref_p50, 3),
            "unit": "ms",
            "higher_is_better": False,
            "note": note,
        },
        {
            "scenario": f"mcp tools/call {CONCURRENCY} in flight",
            "ours": round(ours_rate, 1),
            "reference": round(ref_rate, 1),
            "unit": "calls/s",
            "higher_is_better": True,
            "note": note,
        },
    ]


def main(quick: bool = False) -> list[dict[str, Any]]:
    rows = asyncio.run(run(quick))
    for row in rows:
        print(
            f"{row['scenario']:<36} ours {row['ours']:>10} {row['unit']:<8} reference {row['reference']:>10}"
        )
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reference-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.reference_server:
        serve_reference(options.reference_server)
    else:
        main(options.quick)
