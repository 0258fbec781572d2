"""Handshake benchmark: N simulated nodes open the authenticated tunnel to one real server at once.

Where it sits: outside the product, beside the other benchmarks; ``python3 -m bench.handshake_bench
[--quick]`` (``main(quick)`` returns the rows for a combined bench runner). It drives a real
``cortex-server serve`` child process over loopback, exactly as agents do, minus ``/oauth/token``: node
tokens are pre-minted with the data directory's own key (`server.store.ServerStore` +
`server.auth.TokenAuthority`), so the figure is the tunnel's own cost — token verification, the
enrollment/revocation lookup, the WebSocket upgrade, ``initialize`` + ``tools/list`` and registration.

Reference, measured in the same run with the same client: a bare ``websockets.serve`` server in a child
process accepting N concurrent connections (upgrade only, nothing else).

Scenarios (rates are N / wall time from the first connect to the last one done):

* accepted: N WebSockets open (each token verified and looked up before the 101).
* registered: the server asked each node for ``initialize`` and ``tools/list`` and ``/healthz``
  reports all N connected.
* per server CPU second: N / (user + system CPU the server process spent on the run), read from
  ``/proc``. Wall rates depend on what else the machine runs (the client shares it too); this one
  says what one core of the server can sustain.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx2
from websockets.asyncio.client import ClientConnection, connect

from server.auth import TokenAuthority
from server.store import ServerStore

__all__ = ["main"]

REPO = Path(__file__).resolve().parents[1]
SUBPROTOCOL = "cortex.v1"
OPEN_CONCURRENCY = 256
"""Connects in flight at once (the same for ours and the reference): enough to keep both servers busy
without overflowing the listen backlog."""

_RAW_SERVER = """
import asyncio, sys
from websockets.asyncio.server import serve

async def echo(ws):
    async for message in ws:
        await ws.send(message)

async def main():
    async with serve(echo, "127.0.0.1", 0, compression=None, ping_interval=None, backlog=4096) as server:
        print("listening", server.sockets[0].getsockname()[1], flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORTEX_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class _Child:
    """A child process that prints one line announcing its port; stopped on exit from the block."""

    def __init__(self, cmd: list[str], marker: str) -> None:
        self.cmd, self.marker = cmd, marker
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    def __enter__(self) -> _Child:
        self.proc = subprocess.Popen(
            self.cmd,
            env=_env(),
            cwd=REPO,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        found = threading.Event()
        lines: list[str] = []

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                if not found.is_set():
                    lines.append(line)
                    if self.marker in line:
                        self.port = int(line.rstrip().rsplit(":", 1)[-1].split()[-1])
                        found.set()
            found.set()

        threading.Thread(target=pump, daemon=True).start()
        if not found.wait(30) or not self.port:
            self.__exit__()
            raise RuntimeError("child did not start:\n" + "".join(lines[-30:]))
        return self

    def cpu_seconds(self) -> float:
        """User + system CPU time the child has used so far (Linux ``/proc``)."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __exit__(self, *exc: object) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(15)


def _prepare(data_dir: Path, count: int) -> list[str]:
    """Enroll `count` nodes and mint each a node token with the data directory's key."""
    with ServerStore(data_dir) as store:
        authority = TokenAuthority(store.load_or_create_signing_key())
        for i in range(count):
            store.enroll_node(f"bench-{i}", "bench")
    return [authority.mint_node_token(f"bench-{i}", "bench", ttl=900)[0] for i in range(count)]


async def _node(url: str, token: str, gate: asyncio.Semaphore, opened: list[float]) -> ClientConnection:
    """Open the tunnel and answer the server's handshake; return the open socket."""
    async with gate:
        ws = await connect(
            url,
            additional_headers={"Authorization": f"Bearer {token}"},
            subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
            compression=None,
            ping_interval=None,
            open_timeout=60,
        )
    opened.append(time.perf_counter())
    while True:
        message = json.loads(await ws.recv())
        method, ident = message.get("method"), message.get("id")
        if method == "initialize":
            result: dict[str, Any] = {
                "protocolVersion": "2025-11-25",
                "capabilities": {"tools": {"listChanged": False}},
                "serverInfo": {"name": "bench", "version": "0"},
            }
            await ws.send(json.dumps({"jsonrpc": "2.0", "id": ident, "result": result}))
        elif method == "tools/list":
            await ws.send(json.dumps({"jsonrpc": "2.0", "id": ident, "result": {"tools": []}}))
            return ws


async def _wait_registered(base: str, count: int, timeout: float = 60.0) -> float:
    """perf_counter() when /healthz first reports `count` nodes connected (polled every 5 ms)."""
    async with httpx2.AsyncClient(base_url=base, timeout=10) as http:
        async with asyncio.timeout(timeout):
            while True:
                body = (await http.get("/healthz")).json()
                if int(body.get("nodes_connected", 0)) >= count:
                    return time.perf_counter()
                await asyncio.sleep(0.005)  # polling a remote counter; bounded by the timeout


async def _ours(port: int, tokens: list[str]) -> tuple[float, float]:
    url = f"ws://127.0.0.1:{port}/api/v1/nodes/connect"
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)
    opened: list[float] = []
    started = time.perf_counter()
    async with asyncio.timeout(120):
        sockets = await asyncio.gather(*(_node(url, t, gate, opened) for t in tokens))
        registered = await _wait_registered(f"http://127.0.0.1:{port}", len(tokens))
    await asyncio.gather(*(ws.close() for ws in sockets))
    return len(tokens) / (max(opened) - started), len(tokens) / (registered - started)


async def _raw(port: int, count: int) -> float:
    url = f"ws://127.0.0.1:{port}/"
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)

    async def one() -> ClientConnection:
        async with gate:
            return await connect(url, compression=None, ping_interval=None, open_timeout=60)

    started = time.perf_counter()
    async with asyncio.timeout(120):
        sockets = await asyncio.gather(*(one() for _ in range(count)))
    elapsed = time.perf_counter() - started
    await asyncio.gather(*(ws.close() for ws in sockets))
    return count / elapsed


def main(quick: bool = False) -> list[dict[str, Any]]:
    count = 300 if quick else 1000
    with tempfile.TemporaryDirectory(prefix="cortex-hs-bench-") as tmp:
        data_dir = Path(tmp) / "server"
        tokens = _prepare(data_dir, count)
        server_cmd = [
            sys.executable,
            "-m",
            "server.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--data-dir",
            str(data_dir),
            "--log-level",
            "warning",
            "--heartbeat-interval",
            "600",
        ]
        with _Child(server_cmd, "cortex-server listening on") as server:
            cpu = server.cpu_seconds()
            accepted, registered = asyncio.run(_ours(server.port, tokens))
            ours_cpu = server.cpu_seconds() - cpu
        with _Child([sys.executable, "-c", _RAW_SERVER], "listening") as raw:
            cpu = raw.cpu_seconds()
            reference = asyncio.run(_raw(raw.port, count))
            raw_cpu = raw.cpu_seconds() - cpu
    rows: list[dict[str, Any]] = [
        {
            "scenario": f"tunnel accepted: token verified + WebSocket open, {count} nodes at once",
            "ours": round(accepted),
            "reference": round(reference),
            "unit": "handshakes/s",
        },
        {
            "scenario": f"tunnel registered: + initialize + tools/list + registry, {count} nodes at once",
            "ours": round(registered),
            "reference": round(reference),
            "unit": "handshakes/s",
        },
        {
            "scenario": f"registered handshakes per server CPU second, {count} nodes",
            "ours": round(count / max(ours_cpu, 1e-3)),
            "reference": round(count / max(raw_cpu, 1e-3)),
            "unit": "handshakes/CPU-s",
        },
    ]
    return rows


def _print(rows: list[dict[str, Any]]) -> None:
    print(f"{'scenario':<82} {'ours':>8} {'reference':>10} {'ratio':>6}  unit")
    for row in rows:
        ratio = row["ours"] / row["reference"] if row["reference"] else float("nan")
        print(f"{row['scenario']:<82} {row['ours']:>8} {row['reference']:>10} {ratio:>6.2f}  {row['unit']}")
    print("reference: a bare websockets.serve server accepting the same number of concurrent connections")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="300 nodes instead of 1000")
    _print(main(parser.parse_args().quick))
