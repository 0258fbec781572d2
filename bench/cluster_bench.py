"""Calls across replicas of a cluster, beside calls on one replica, measured in the same run.

Where it sits: outside the product (bench/ only); ``python3 -m bench`` runs it (`main(quick)`). Two
`cortex-server serve --redis-url` replicas share one data dir and one `redis-server` child on loopback;
a `bench.simnode` node connects to replica A. The SDK calls `echo` through A (same replica: the
reference) and through B (the call crosses the replica link to A, `server.replica_link`).

Rows: sequential echo p50 (target ≤ 1.5x same replica), measured in one block each and interleaved
(the two calls in turn, so load from other work on a shared machine falls on both alike), 64 in flight
calls/s (target ≥ 0.7x same replica), the server CPU per call of those loads (caller's replica and
holder, from /proc), and 10,000 cross-replica calls each carrying its own text, counted lost or
crossed (must be 0). A sequential cross-replica call adds two process hops (B -> A, A -> B), each a
socket write that wakes a sleeping process, which on a shared VM costs more than the Python work of the
hop; with 64 in flight the replica link's writes are shared by the calls of one loop iteration
(`spec.frames`) and the work spreads over two server processes.

    python3 -m bench.cluster_bench [--quick]
"""

from __future__ import annotations

import asyncio
import functools
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.harness import Row, ServerProcess, cpu_seconds, percentile
from bench.roundtrip import in_flight, sequential
from bench.simnode import SimFleetProcess
from sdk import AsyncClient

__all__ = ["main", "run"]

WORKSPACE = "bench"
CHECKED_CALLS = 10_000
LOAD_SLICES = 4
"""64-in-flight slices per side, taken in turn."""


class _Redis:
    """``redis-server`` as a child on a free loopback port, no persistence (bounded start)."""

    def __init__(self, executable: str) -> None:
        self.executable = executable
        self.dir = Path(tempfile.mkdtemp(prefix="cortex-bench-redis-"))
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    def start(self) -> _Redis:
        import socket

        for _attempt in range(5):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = int(s.getsockname()[1])
            self.proc = subprocess.Popen(
                [self.executable, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                 "--appendonly", "no", "--dir", str(self.dir)],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
            assert self.proc.stdout is not None
            deadline = time.monotonic() + 20
            for line in self.proc.stdout:
                if "Ready to accept connections" in line:
                    return self
                if time.monotonic() > deadline:
                    break
            self.stop()
        raise RuntimeError("redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)


async def _wait_connected(client: AsyncClient, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(n["name"] == name and n["status"] == "connected" for n in await client.nodes()):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{name} not listed connected within {timeout} s")


async def _interleaved(
    first: Callable[[], Awaitable[Any]], second: Callable[[], Awaitable[Any]], n: int
) -> tuple[list[float], list[float]]:
    """Sequential latencies of two calls taken in turn, so both see the same load on a shared machine."""
    await sequential(first, 0)
    await sequential(second, 0)
    a: list[float] = []
    b: list[float] = []
    for _ in range(n):
        a += await sequential(first, 1, warmup=0)
        b += await sequential(second, 1, warmup=0)
    return a, b


async def _checked(client: AsyncClient, total: int, concurrency: int = 64) -> int:
    """*total* calls with a text of their own, *concurrency* at once; returns how many came back wrong."""
    wrong = 0
    counter = iter(range(total))

    async def lane() -> None:
        nonlocal wrong
        for i in counter:
            text = f"call-{i}-{i * 7919 % 100_003}"
            try:
                result = await client.call("sim-0", "echo", {"text": text}, timeout=30)
                if result.text != text:
                    wrong += 1
            except Exception:
                wrong += 1

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return wrong


def _us(seconds: float) -> float:
    return seconds * 1e6


async def run(
    quick: bool,
    workdir: Path,
    *,
    seq_calls: int | None = None,
    load_calls: int | None = None,
    checked_calls: int = CHECKED_CALLS,
) -> list[Row]:
    executable = shutil.which("redis-server")
    if executable is None:
        return []
    seq_n = seq_calls or (300 if quick else 2000)
    load_n = load_calls or (2000 if quick else 10_000)
    redis = await asyncio.to_thread(_Redis(executable).start)
    data = workdir / "cluster-data"
    args = ["--redis-url", redis.url]
    a = ServerProcess(data, extra_args=args, log_name="replica-a.log")
    b = ServerProcess(data, extra_args=args, log_name="replica-b.log")
    fleet: SimFleetProcess | None = None
    rows: list[Row] = []
    try:
        await asyncio.to_thread(a.start)
        await asyncio.to_thread(b.start)
        a.enroll(["sim-0"], WORKSPACE)
        fleet = await asyncio.to_thread(SimFleetProcess(a.ws_base, data, WORKSPACE, ["sim-0"]).start)
        token = a.user_token()
        async with AsyncClient(a.url, token=token) as same, AsyncClient(b.url, token=token) as cross:
            await _wait_connected(cross, "sim-0", 15)
            args_ = {"text": "x" * 64}
            same_call = functools.partial(same.call, "sim-0", "echo", args_)
            cross_call = functools.partial(cross.call, "sim-0", "echo", args_)
            local = await sequential(same_call, seq_n)
            remote = await sequential(cross_call, seq_n)
            rows.append(
                Row(
                    "cluster: sequential echo p50, node on another replica",
                    _us(percentile(remote, 50)),
                    _us(percentile(local, 50)),
                    "µs",
                    higher_is_better=False,
                    note="ref: the same call through the replica holding the node (one block each)",
                    target="≤ 1.5x same replica",
                )
            )
            local, remote = await _interleaved(same_call, cross_call, seq_n)
            rows.append(
                Row(
                    "cluster: sequential echo p50, another replica, interleaved",
                    _us(percentile(remote, 50)),
                    _us(percentile(local, 50)),
                    "µs",
                    higher_is_better=False,
                    note="the two calls taken in turn: both see the same load on a shared machine",
                    target="≤ 1.5x same replica",
                )
            )
            # Slices taken in turn (same, cross, same, ...), as in bench/agent_bench.py: on a shared
            # machine the load drifts within seconds, and the ratio should compare like with like.
            per_slice = max(64, load_n // LOAD_SLICES)
            busy = {"same": 0.0, "cross": 0.0}
            cpu = {"same": 0.0, "holder": 0.0, "relay": 0.0}
            for _slice in range(LOAD_SLICES):
                for side, client in (("same", same), ("cross", cross)):
                    before = cpu_seconds(a.pid), cpu_seconds(b.pid)
                    rate, _ = await in_flight(
                        lambda i, client=client: client.call("sim-0", "echo", args_), per_slice
                    )
                    after = cpu_seconds(a.pid), cpu_seconds(b.pid)
                    busy[side] += per_slice / rate
                    if side == "same":
                        cpu["same"] += after[0] - before[0] + after[1] - before[1]
                    else:
                        cpu["holder"] += after[0] - before[0]
                        cpu["relay"] += after[1] - before[1]
            calls = LOAD_SLICES * (per_slice + 64)  # in_flight's warm-up calls are counted in the CPU too
            local_rate = LOAD_SLICES * per_slice / busy["same"]
            remote_rate = LOAD_SLICES * per_slice / busy["cross"]
            local_cpu = _us(cpu["same"] / calls)
            holder_cpu = _us(cpu["holder"] / calls)
            relay_cpu = _us(cpu["relay"] / calls)
            rows.append(
                Row(
                    "cluster: 64 in flight calls/s, node on another replica",
                    remote_rate,
                    local_rate,
                    "calls/s",
                    note=f"ref: the same load through the holder ({LOAD_SLICES} slices each, in turn)",
                    target="≥ 0.7x same replica",
                )
            )
            rows.append(
                Row(
                    "cluster: server CPU per call at 64 in flight, node on another replica",
                    holder_cpu + relay_cpu,
                    local_cpu,
                    "µs",
                    higher_is_better=False,
                    note=(
                        f"caller's replica {relay_cpu:.0f} + holder {holder_cpu:.0f}; ref: both replicas "
                        "for the same calls through the holder (/proc CPU; a shared machine's is noisy)"
                    ),
                )
            )
            wrong = await _checked(cross, checked_calls)
            rows.append(
                Row(
                    f"cluster: {checked_calls:,} cross-replica calls lost or crossed",
                    float(wrong),
                    0.0,
                    "calls",
                    higher_is_better=False,
                    note="each call carries its own text and must get it back",
                    target="0",
                )
            )
    finally:
        if fleet is not None:
            fleet.stop()
        for replica in (b, a):
            replica.stop()
        redis.stop()
    return rows


def main(quick: bool = False) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="cortex-cluster-bench-") as tmp:
        return [row.as_dict() for row in asyncio.run(run(quick, Path(tmp)))]


if __name__ == "__main__":
    for row in main("--quick" in sys.argv):
        print(row)
