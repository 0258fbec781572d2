"""Scale: a connection storm of authenticated nodes, and thousands of idle nodes held with heartbeats.

Where it sits: outside the product (bench/ only), driven by ``python3 -m bench``. One load-generator
process (this one) holds every simulated node (`bench.simnode`); the server is a real
`cortex-server serve` child with a short ``--heartbeat-interval`` so the heartbeat's CPU shows.

- storm: N nodes connect at once, each with its own node access token (verified by the server), through
  `initialize` and `tools/list` until callable — handshakes/s. Reference: the raw `websockets` server of
  `bench.relay` accepting the same number of connections (no auth, no protocol).
- idle: N = 1,000 / 5,000 / 10,000 nodes held; server RSS per node (VmRSS after minus before, over N)
  and the server's CPU while idle (utime+stime over a window), as % of one core.
"""

from __future__ import annotations

import asyncio
import gc
import tempfile
import time
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect

from bench.harness import Row, ServerProcess, cpu_seconds, raise_fd_limit, rss_kib
from bench.relay import RelayProcesses
from bench.simnode import SimFleet

__all__ = ["idle", "run", "run_storm"]

WORKSPACE = "scale"
HEARTBEAT_S = 2.0
DEFAULT_HEARTBEAT_S = 15.0  # cortex-server serve's default --heartbeat-interval


async def _fleet(server: ServerProcess, start: int, count: int) -> SimFleet:
    names = [f"n{i}" for i in range(start, start + count)]
    fleet = SimFleet(server.ws_base, server.authority(), WORKSPACE)
    await asyncio.to_thread(fleet.mint, names)
    return fleet


async def _raw_storm(url: str, count: int, concurrency: int) -> float:
    """Connections/s a raw `websockets` server accepts (the reference for the storm)."""
    gate = asyncio.Semaphore(concurrency)
    conns: list[ClientConnection] = []

    async def one() -> None:
        async with gate:
            conns.append(await connect(url + "/idle", compression=None, ping_interval=None, open_timeout=120))

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    elapsed = time.perf_counter() - started
    await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
    return count / elapsed


async def run_storm(workdir: Path, count: int, concurrency: int = 200) -> list[Row]:
    """N authenticated nodes connecting at once (at most *concurrency* handshakes open at a time)."""
    server = await asyncio.to_thread(
        ServerProcess(workdir / f"server-storm-{count}", heartbeat_interval=15).start
    )
    relay = RelayProcesses(workers=0).start()
    fleet: SimFleet | None = None
    try:
        server.enroll([f"n{i}" for i in range(count)], WORKSPACE)
        fleet = await _fleet(server, 0, count)
        seconds = await fleet.connect_all(timeout=120, concurrency=concurrency)
        ours = count / seconds
        await fleet.close()
        fleet = None
        reference = await _raw_storm(relay.url, count, concurrency)
    finally:
        if fleet is not None:
            await fleet.close()
        relay.stop()
        server.stop()
    return [
        Row(
            f"connection storm, {count} nodes (handshakes/s)",
            ours,
            reference,
            "conn/s",
            note="ours: WS + token verify + initialize + tools/list; ref: bare WS accept",
            target="≥ 1,000/s",
        )
    ]


async def idle(workdir: Path, counts: list[int], window: float, heartbeat: float = HEARTBEAT_S) -> list[Row]:
    """Hold growing numbers of idle nodes on one server; RSS per node and heartbeat CPU at each step."""
    raise_fd_limit()
    top = max(counts)
    # A data dir of its own per call: the full run measures twice (its own interval, then the default).
    data = Path(tempfile.mkdtemp(prefix="server-idle-", dir=workdir))
    server = await asyncio.to_thread(ServerProcess(data, heartbeat_interval=heartbeat).start)
    fleets: list[SimFleet] = []
    rows: list[Row] = []
    try:
        server.enroll([f"n{i}" for i in range(top)], WORKSPACE)
        # Warm the server up (imports, first allocations) with one node before the baseline reading.
        warm = await _fleet(server, 0, 1)
        await warm.connect_all(timeout=30)
        fleets.append(warm)
        await asyncio.sleep(heartbeat * 1.2)  # let the first heartbeat pass before the baseline
        base_rss = rss_kib(server.pid)
        held = 1
        for count in sorted(counts):
            fleet = await _fleet(server, held, count - held)
            await fleet.connect_all(timeout=180, concurrency=200)
            fleets.append(fleet)
            held = count
            gc.collect()
            # Two heartbeat rounds so every session reached its steady state, then measure.
            await asyncio.sleep(2 * heartbeat)
            rss = rss_kib(server.pid)
            cpu0, t0, pings0 = cpu_seconds(server.pid), time.monotonic(), sum(f.pings for f in fleets)
            await asyncio.sleep(window)
            cpu1, t1, pings1 = cpu_seconds(server.pid), time.monotonic(), sum(f.pings for f in fleets)
            cpu_pct = 100 * (cpu1 - cpu0) / (t1 - t0)
            pings_s = (pings1 - pings0) / (t1 - t0)
            per_node = (rss - base_rss) * 1024 / (count - 1) / 1000
            rows.append(
                Row(
                    f"idle nodes held: {count:,} — server RSS per node",
                    per_node,
                    40.0,
                    "KB",
                    higher_is_better=False,
                    note=f"ref: the 40 KB target; RSS {rss / 1024:.0f} MiB",
                )
            )
            rows.append(
                Row(
                    f"idle nodes held: {count:,} — heartbeat CPU @{heartbeat:g} s",
                    cpu_pct,
                    10.0,
                    "% core",
                    higher_is_better=False,
                    note=f"{pings_s:,.0f} pings/s; at the 15 s default ≈ {cpu_pct * heartbeat / 15:.1f}%",
                )
            )
            lost = sum(1 for f in fleets for n in f.nodes if n.error)
            if lost:
                rows[-1].note += f"; {lost} nodes dropped"
    finally:
        for fleet in fleets:
            await fleet.close()
        server.stop()
    return rows


async def run(
    quick: bool,
    workdir: Path,
    *,
    storm: bool = True,
    storm_n: int | None = None,
    idle_counts: list[int] | None = None,
    window: float | None = None,
    heartbeat: float = HEARTBEAT_S,
) -> list[Row]:
    raise_fd_limit()
    rows: list[Row] = []
    if storm:
        rows += await run_storm(workdir, storm_n or (1000 if quick else 5000))
    counts = idle_counts or ([1000] if quick else [1000, 5000, 10000])
    rows += await idle(workdir, counts, window or (4.0 if quick else 10.0), heartbeat)
    if not quick and idle_counts is None:
        # The target is about the default interval: measure it there too, not only by extrapolation.
        rows += [
            r for r in await idle(workdir, [max(counts)], 30.0, DEFAULT_HEARTBEAT_S) if "CPU" in r.scenario
        ]
    return rows
