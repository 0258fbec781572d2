"""Big results: a 50 MB `fs_read` through the server, beside the same read over a raw `websockets` link.

Where it sits: outside the product; `python3 -m bench` picks it up through `main(quick)`. Ours: a real
server (default frame limit) and a real `cortex-agent run` child on loopback; the SDK calls `fs_read` of
a 50 MB text file (the node uploads it in `artifacts/write` chunks, the SDK fetches the artifact and
checks its SHA-256) while a second SDK client calls `echo` on the same node every 10 ms. Reference, same
run: a raw `websockets` server process that reads the same file and sends it as one JSON-RPC result
frame to a raw `websockets` client — the floor of moving those bytes over loopback as JSON.
Targets (issue 21): throughput ≥ 0.5 x the reference; echo p99 during the transfer < 50 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from bench.harness import REPO, AgentProcess, Row, ServerProcess, percentile
from bench.roundtrip import _wait_nodes
from sdk import AsyncClient

__all__ = ["main"]

WORKSPACE = "bench"
MB = 1_000_000
AGENT_TOML = "[limits]\nmax_read_bytes = 134217728\nmax_output_bytes = 67108864\n"


# -- the reference: raw websockets, one frame ------------------------------------------------------------
async def _raw_server(path: Path) -> None:
    async def handle(ws: ServerConnection) -> None:
        async for message in ws:
            id_ = json.loads(message)["id"]
            text = await asyncio.to_thread(path.read_text)
            result = {"content": [{"type": "text", "text": text}], "isError": False}
            frame = json.dumps({"jsonrpc": "2.0", "id": id_, "result": result}, ensure_ascii=False)
            await ws.send(frame)

    async with serve(handle, "127.0.0.1", 0, max_size=None, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(f"raw-listening {port}", flush=True)
        await asyncio.Future()


async def _reference(port: int, rounds: int, digest: str) -> list[float]:
    samples = []
    async with connect(f"ws://127.0.0.1:{port}", max_size=None, compression=None) as ws:
        for i in range(rounds):
            started = time.perf_counter()
            await ws.send(json.dumps({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {}}))
            answer = json.loads(await ws.recv())
            text = answer["result"]["content"][0]["text"]
            samples.append(time.perf_counter() - started)
            assert hashlib.sha256(text.encode()).hexdigest() == digest
    return samples


# -- ours ---------------------------------------------------------------------------------------------------
async def _echo_caller(url: str) -> None:
    """A separate caller process (the big result's SDK client parses megabytes of JSON, which would
    stall an echo loop sharing its process): echo on ``agent-0`` every 10 ms between a ``go`` and a
    ``stop`` line on stdin, then print the latencies as JSON. The token comes in env CORTEX_TOKEN."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with AsyncClient(url, token=os.environ["CORTEX_TOKEN"]) as client:
        await client.call("agent-0", "echo", {"text": "warm"})
        print("ready", flush=True)
        while (await reader.readline()).strip() == b"go":
            latencies: list[float] = []
            stop = asyncio.ensure_future(reader.readline())
            while not stop.done():
                started = time.perf_counter()
                await client.call("agent-0", "echo", {"text": "ping"})
                latencies.append(time.perf_counter() - started)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(stop), 0.01)
            print(json.dumps(latencies), flush=True)


async def _ours(
    url: str, token: str, path: Path, rounds: int, digest: str
) -> tuple[list[float], list[float], int]:
    samples: list[float] = []
    latencies: list[float] = []
    async with AsyncClient(url, token=token) as big:
        await _wait_nodes(big, {"agent-0"}, timeout=30)
        before = {n["name"]: n["connected_at"] for n in await big.nodes()}["agent-0"]
        await big.call("agent-0", "echo", {"text": "warm"})
        echo = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.results_bench", "--echo-caller", url,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=REPO,
            env={**os.environ, "CORTEX_TOKEN": token, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        assert echo.stdin is not None and echo.stdout is not None
        try:
            async with asyncio.timeout(30):
                assert (await echo.stdout.readline()).strip() == b"ready"
            for _ in range(rounds):
                echo.stdin.write(b"go\n")
                await echo.stdin.drain()
                started = time.perf_counter()
                result = await big.call(
                    "agent-0", "fs_read", {"path": str(path), "limit": 128 * MB}, timeout=120
                )
                samples.append(time.perf_counter() - started)
                echo.stdin.write(b"stop\n")
                await echo.stdin.drain()
                async with asyncio.timeout(30):
                    latencies += json.loads(await echo.stdout.readline())
                text = result.text
                assert await asyncio.to_thread(_sha, text) == digest, "the result is not whole"
        finally:
            echo.stdin.close()
            async with asyncio.timeout(10):
                await echo.wait()
        after = {n["name"]: n["connected_at"] for n in await big.nodes()}["agent-0"]
        reconnects = 0 if after == before else 1
    return samples, latencies, reconnects


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def _run(
    quick: bool, workdir: Path, size_mb: int = 50, rounds: int | None = None
) -> list[dict[str, Any]]:
    rounds = rounds or (2 if quick else 5)
    size = size_mb * MB
    root = workdir / "root"
    root.mkdir(parents=True)
    path = root / "big.txt"
    text = os.urandom(size // 2).hex()
    path.write_text(text)
    digest = hashlib.sha256(text.encode()).hexdigest()
    del text

    raw = subprocess.Popen(  # noqa: ASYNC220 (started once, before anything is timed)
        [sys.executable, "-m", "bench.results_bench", "--serve-raw", str(path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    server = await asyncio.to_thread(ServerProcess(workdir / "server").start)
    agent: AgentProcess | None = None
    try:
        assert raw.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(raw.stdout.readline), 20)
        port = int(line.split()[-1])
        reference = await _reference(port, rounds, digest)

        creds = server.enroll(["agent-0"], WORKSPACE)
        home = workdir / "agent-home"
        home.mkdir()
        (home / "agent.toml").write_text(AGENT_TOML)
        agent = AgentProcess(
            home, server.url, "agent-0", creds["agent-0"], ["--no-browser", "--allow-root", str(root)]
        ).start()
        ours, latencies, reconnects = await _ours(
            server.url, server.user_token(workspace=WORKSPACE), path, rounds, digest
        )
    finally:
        if agent is not None:
            agent.stop()
        server.stop()
        raw.kill()
        raw.wait(10)
        if raw.stdout is not None:
            raw.stdout.close()
    ours_mbps = size / MB / min(ours)
    ref_mbps = size / MB / min(reference)
    rows = [
        Row(
            f"{size_mb} MB fs_read result, best of {rounds}",
            ours_mbps,
            ref_mbps,
            "MB/s",
            note=f"ours: agent → chunks → server → SDK, digest checked; ref: raw websockets, one frame"
            f"; reconnects {reconnects}",
            target="≥ 0.5 x reference",
        ),
        Row(
            f"echo p99 on the same node during the transfer ({len(latencies)} calls)",
            percentile(latencies, 99) * 1000,
            percentile(latencies, 50) * 1000,
            "ms",
            higher_is_better=False,
            note="reference column: p50 of the same calls",
            target="p99 < 50 ms",
        ),
    ]
    return [r.as_dict() for r in rows]


def main(quick: bool = False) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="cortex-results-bench-") as tmp:
        rows = asyncio.run(_run(quick, Path(tmp)))
    for row in rows:
        print(
            f"{row['scenario']:<60} ours {row['ours']:9.2f} {row['unit']}  reference {row['reference']:9.2f}"
        )
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-raw":
        asyncio.run(_raw_server(Path(sys.argv[2])))
    elif len(sys.argv) == 3 and sys.argv[1] == "--echo-caller":
        asyncio.run(_echo_caller(sys.argv[2]))
    else:
        main(quick="--quick" in sys.argv)
