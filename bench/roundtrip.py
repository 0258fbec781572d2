"""Echo round trips through the whole chain, beside the raw relay measured in the same run.

Where it sits: outside the product (bench/ only), driven by ``python3 -m bench``. Ours is
SDK `AsyncClient` → `cortex-server` → node (a real `cortex-agent run`, or `bench.simnode` nodes when
there are many); the reference is `bench.relay` (caller → relay → worker, raw `websockets`).

Scenarios: sequential echo p50/p99; 64 calls in flight on one node (real agent and simulated);
64 in flight spread over 10 and 100 simulated nodes; a 1 MiB `fs_read`; a full-page screenshot.
"""

from __future__ import annotations

import asyncio
import functools
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.harness import AgentProcess, Row, ServerProcess, cpu_seconds, percentile
from bench.relay import RelayCaller, RelayProcesses
from bench.simnode import SimFleetProcess
from sdk import AsyncClient

__all__ = ["in_flight", "run", "sequential"]

WORKSPACE = "bench"
PAYLOAD = "x" * 64


async def sequential(call: Callable[[], Awaitable[Any]], n: int, warmup: int = 50) -> list[float]:
    """Latency of *n* calls made one after another, in seconds each."""
    for _ in range(warmup):
        await call()
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return samples


async def in_flight(
    call: Callable[[int], Awaitable[Any]], total: int, concurrency: int = 64
) -> tuple[float, list[float]]:
    """Keep *concurrency* calls in flight until *total* finished; returns (calls/s, latencies)."""
    latencies: list[float] = []
    counter = iter(range(total))

    async def lane() -> None:
        for i in counter:
            started = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - started)

    for i in range(min(total, concurrency)):  # warm-up
        await call(i)
    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return total / (time.perf_counter() - started), latencies


async def _wait_nodes(client: AsyncClient, names: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        connected = {n["name"] for n in await client.nodes() if n["status"] == "connected"}
        if names <= connected:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"nodes {sorted(names)} did not connect within {timeout} s")


async def _sim_call(client: AsyncClient, nodes: int, args: dict[str, Any], i: int) -> Any:
    return await client.call(f"sim-{i % nodes}", "echo", args)


async def _relay_call(ref: RelayCaller, nodes: int, i: int) -> Any:
    return await ref.call(i % nodes, PAYLOAD)


def _us(seconds: float) -> float:
    return seconds * 1e6


async def run(
    quick: bool, workdir: Path, *, seq_calls: int | None = None, load_calls: int | None = None
) -> list[Row]:
    seq_n = seq_calls or (300 if quick else 2000)
    load_n = load_calls or (2000 if quick else 10000)
    rows: list[Row] = []
    relay = RelayProcesses(workers=100).start()
    server = await asyncio.to_thread(ServerProcess(workdir / "server-roundtrip").start)
    agent: AgentProcess | None = None
    fleet: SimFleetProcess | None = None
    try:
        await relay.wait_ready()
        root = workdir / "agent-root"
        root.mkdir(parents=True, exist_ok=True)
        big = root / "one-mib.txt"
        big.write_text("abcdefghijklmnopqrstuvwxyz012345" * (32 * 1024), encoding="ascii")
        credentials = server.enroll(["agent-0"], WORKSPACE)
        sim_names = [f"sim-{i}" for i in range(100)]
        server.enroll(sim_names, WORKSPACE)
        agent = AgentProcess(
            workdir / "agent-home",
            server.url,
            "agent-0",
            credentials["agent-0"],
            ["--allow-root", str(root), "--max-concurrency", "64"],
        ).start()
        fleet = await asyncio.to_thread(
            SimFleetProcess(server.ws_base, server.data_dir, WORKSPACE, sim_names).start
        )
        token = server.user_token()
        async with AsyncClient(server.url, token=token) as client, RelayCaller(relay.url) as ref:
            await _wait_nodes(client, {"agent-0"}, timeout=30)
            args = {"text": PAYLOAD}

            # 1. sequential echo, real agent (audited, fsync'd) and a simulated node, vs relay
            warm = min(50, seq_n)
            theirs = await sequential(lambda: ref.call(0, PAYLOAD), seq_n, warm)
            for label, node in (("real agent", "agent-0"), ("sim node", "sim-0")):
                ours = await sequential(functools.partial(client.call, node, "echo", args), seq_n, warm)
                for q in (50, 99):
                    rows.append(
                        Row(
                            f"sequential echo p{q} ({label})",
                            _us(percentile(ours, q)),
                            _us(percentile(theirs, q)),
                            "µs",
                            higher_is_better=False,
                            target="≤ 1.3x relay" if q == 50 else "",
                        )
                    )

            # 2. 64 in flight on one node: the real agent (audited, fsync'd) and a simulated node
            rate, _ = await in_flight(lambda i: client.call("agent-0", "echo", args), load_n)
            ref_rate, ref_lat = await in_flight(lambda i: ref.call(0, PAYLOAD), load_n)
            relay_cpu = cpu_seconds(relay.pid)
            rows.append(
                Row(
                    "64 in flight, 1 node (real agent) calls/s",
                    rate,
                    ref_rate,
                    "calls/s",
                    note="agent: group-committed audit, one fsync per call on its path",
                )
            )
            for nodes in (1, 10, 100):
                cpu0 = cpu_seconds(server.pid)
                rate, lat = await in_flight(functools.partial(_sim_call, client, nodes, args), load_n)
                cpu1 = cpu_seconds(server.pid)
                ref_rate, ref_lat = await in_flight(functools.partial(_relay_call, ref, nodes), load_n)
                cpu2 = cpu_seconds(relay.pid)
                label = f"64 in flight, {nodes} sim node{'s' if nodes > 1 else ''}"
                rows.append(Row(f"{label} calls/s", rate, ref_rate, "calls/s", target="≥ 0.6x relay"))
                if nodes == 10:  # CPU per call: steadier than calls/s when other work shares the cores
                    rows.append(
                        Row(
                            f"{label}: server CPU per call",
                            _us((cpu1 - cpu0) / (load_n + 64)),
                            _us((cpu2 - relay_cpu) / (load_n + 64)),
                            "µs CPU",
                            higher_is_better=False,
                            note="ref: the relay process's CPU per call",
                        )
                    )
                relay_cpu = cpu_seconds(relay.pid)
                rows.append(
                    Row(
                        f"{label} p50",
                        _us(percentile(lat, 50)),
                        _us(percentile(ref_lat, 50)),
                        "µs",
                        higher_is_better=False,
                    )
                )
                rows.append(
                    Row(
                        f"{label} p99",
                        _us(percentile(lat, 99)),
                        _us(percentile(ref_lat, 99)),
                        "µs",
                        higher_is_better=False,
                    )
                )

            # 3. 1 MiB fs_read and a full-page screenshot, when the agent has those tools
            tools = {t["name"] for t in await client.tools("agent-0")}
            rows.append(await _fs_read_row(client, ref, big, tools, min(seq_n, 10 if quick else 50)))
            rows.append(await _screenshot_row(client, root, tools, min(seq_n, 5 if quick else 20)))
    finally:
        if fleet is not None:
            fleet.stop()
        if agent is not None:
            agent.stop()
        server.stop()
        relay.stop()
    return rows


async def _fs_read_row(client: AsyncClient, ref: RelayCaller, big: Path, tools: set[str], n: int) -> Row:
    name = "fs_read 1 MiB p50 (real agent)"
    if "fs_read" not in tools:
        return Row(
            name, None, None, "ms", higher_is_better=False, note="n/a: fs_read not declared by the agent"
        )

    async def ours() -> None:
        result = await client.call("agent-0", "fs_read", {"path": str(big)})
        if result.is_error or len(result.text) < 1024 * 1024:
            raise RuntimeError(f"fs_read failed: {result.text[:200]}")

    async def theirs() -> None:  # the relay's worker reads the same file and returns its text
        await ref.call(0, "", tool="fs_read", arguments={"path": str(big)})

    ours_s = await sequential(ours, n, warmup=2)
    theirs_s = await sequential(theirs, n, warmup=2)
    return Row(
        name,
        percentile(ours_s, 50) * 1e3,
        percentile(theirs_s, 50) * 1e3,
        "ms",
        higher_is_better=False,
        note="ref: relay worker reads the same file",
    )


async def _screenshot_row(client: AsyncClient, root: Path, tools: set[str], n: int) -> Row:
    name = "full-page screenshot p50 (real agent)"
    if "browser_screenshot" not in tools or "browser_navigate" not in tools:
        return Row(
            name,
            None,
            None,
            "ms",
            higher_is_better=False,
            note="n/a: browser tools not declared by the agent",
        )
    html = root / "page.html"  # a tall page inside the node's allowed root (data: URLs are refused)
    html.write_text("<h1>bench</h1>" + "<p>a line of text</p>" * 400, encoding="utf-8")
    page = html.as_uri()
    navigated = await client.call("agent-0", "browser_navigate", {"url": page}, timeout=60)
    if navigated.is_error:
        return Row(name, None, None, "ms", higher_is_better=False, note=f"n/a: {navigated.text[:80]}")

    async def ours() -> None:
        result = await client.call("agent-0", "browser_screenshot", {"full_page": True}, timeout=60)
        if result.is_error or not result.images:
            raise RuntimeError(f"screenshot failed: {result.text[:200]}")

    ours_s = await sequential(ours, n, warmup=1)
    reference = await asyncio.to_thread(_playwright_screenshot_p50, page, n)
    return Row(
        name,
        percentile(ours_s, 50) * 1e3,
        reference,
        "ms",
        higher_is_better=False,
        note="ref: Playwright directly, same page",
    )


def _playwright_screenshot_p50(page_url: str, n: int) -> float | None:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    from desktop_agent.tools.browser import CHROMIUM_ARGS

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=list(CHROMIUM_ARGS))
        try:
            page = browser.new_page()
            page.goto(page_url)
            page.screenshot(full_page=True)
            samples = []
            for _ in range(n):
                started = time.perf_counter()
                page.screenshot(full_page=True)
                samples.append(time.perf_counter() - started)
        finally:
            browser.close()
    return percentile(samples, 50) * 1e3
