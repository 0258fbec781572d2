"""Simulated nodes for load: many of them in one process, same protocol and same auth as a real agent.

Where it sits: outside the product (bench/ only). A `SimFleet` opens one `websockets` connection per
node to ``WS /api/v1/nodes/connect`` with a real node access token (minted from the server's own
signing key with `server.auth.TokenAuthority`, for nodes enrolled in the server's store), and answers
`initialize`, `tools/list` (the manifest's `echo` entry only), `ping` and `tools/call` `echo` — nothing
else, no audit log, no policy. It is deliberately thin so that the server, not the load generator,
is what a benchmark measures.

A node counts as *ready* once the server answered a `ping` the node sent right after `tools/list`:
the server registers a node before it reads that ping (see `server.tunnel`), so readiness implies
the node is callable.

With ``reconnect=`` (a `desktop_agent.connection.Backoff`, the agent's own policy object) a node whose
connection ends dials again like the agent does: full-jitter exponential backoff, bounded by the cap,
reset after a long enough connection, each attempt with a fresh access token (from ``/oauth/token``
with the node's credential when ``credentials=`` are given, as the agent does; minted locally
otherwise), to ``reconnect_url`` (e.g. a load balancer) when given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection, connect

from bench.harness import raise_fd_limit
from desktop_agent.connection import Backoff
from server.auth import TokenAuthority
from server.store import ServerStore
from spec.manifest import load_manifest

__all__ = ["SimFleet", "SimFleetProcess", "SimNode", "main"]

SUBPROTOCOL = "cortex.v1"
_READY_ID = "sim-ready"


def _echo_tool() -> dict[str, Any]:
    return next(t for t in load_manifest() if t["name"] == "echo")


def _dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


@dataclass
class SimNode:
    """One simulated node's connection and counters."""

    name: str
    workspace: str
    token: str
    ws: ClientConnection | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    pings: int = 0
    calls: int = 0
    ready_at: float | None = None
    error: str | None = None
    connections: int = 0


class SimFleet:
    """Many `SimNode`s against one server; `connect_all` opens them at once (a connection storm)."""

    def __init__(
        self,
        ws_base: str,
        authority: TokenAuthority,
        workspace: str,
        *,
        tools: list[Any] | None = None,
        reconnect: Backoff | None = None,
        reconnect_url: str | None = None,
        credentials: dict[str, str] | None = None,
    ):
        self.url = ws_base.rstrip("/") + "/api/v1/nodes/connect"
        self.authority = authority
        self.workspace = workspace
        self.nodes: list[SimNode] = []
        self._tools = tools if tools is not None else [_echo_tool()]
        self._tools_text = {"tools": self._tools}
        self._tasks: list[asyncio.Task[None]] = []
        self.reconnect = reconnect
        self.reconnect_url = (reconnect_url or ws_base).rstrip("/") + "/api/v1/nodes/connect"
        self.credentials = credentials
        self.ready_count = 0
        self.first_lost_at: float | None = None
        """time.monotonic() of the first loss since all nodes were last ready (reconnect mode)."""
        self.all_ready = asyncio.Event()
        self.on_recovered: Any = None
        """Called with (nodes lost, first loss, all ready again, failed attempts so far) — monotonic
        times — after each recovery."""
        self._lost_since_ready = 0
        self.failed_attempts = 0
        """Connection attempts that ended before the node was ready (refused, timed out, dropped)."""
        self._rng = random.Random()

    def mint(self, names: list[str]) -> None:
        """Mint one access token per node (before any timing starts)."""
        for name in names:
            token, _ = self.authority.mint_node_token(name, self.workspace, ttl=900)
            self.nodes.append(SimNode(name, self.workspace, token))

    async def connect_all(self, timeout: float, concurrency: int | None = None) -> float:
        """Connect every minted node at once; returns the seconds until the last one was ready.

        *concurrency* bounds how many handshakes are in progress at a time (None: all of them).
        Raises TimeoutError if not all were ready within *timeout*.
        """
        gate = asyncio.Semaphore(concurrency or len(self.nodes) or 1)
        started = time.perf_counter()
        for node in self.nodes:
            run = self._run_forever(node, gate) if self.reconnect else self._run(node, gate)
            self._tasks.append(asyncio.create_task(run))
        async with asyncio.timeout(timeout):
            for node in self.nodes:
                await node.ready.wait()
        return time.perf_counter() - started

    async def close(self) -> None:
        for node in self.nodes:
            if node.ws is not None:
                await node.ws.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    @property
    def pings(self) -> int:
        return sum(n.pings for n in self.nodes)

    async def _run_forever(self, node: SimNode, gate: asyncio.Semaphore) -> None:
        """The agent's reconnect loop (`desktop_agent.connection`): forever, full jitter, bounded."""
        assert self.reconnect is not None
        attempt = 0
        url = self.url
        async with contextlib.AsyncExitStack() as stack:
            http = None
            if self.credentials is not None:
                import httpx2

                http = await stack.enter_async_context(httpx2.AsyncClient(timeout=60))
            while True:
                started = time.monotonic()
                if node.connections:  # a fresh token for every attempt, as the agent mints one
                    node.token = await self._fresh_token(node, http)
                await self._run(node, gate, url)
                if not node.ready.is_set():  # this attempt never got as far as ready
                    self.failed_attempts += 1
                if node.ready_at is not None:  # until first ready, retry where it was sent first
                    url = self.reconnect_url
                if node.ready.is_set():
                    node.ready.clear()
                    self._lost(node)
                if time.monotonic() - started >= self.reconnect.reset_after:
                    attempt = 0
                await asyncio.sleep(self.reconnect.delay(attempt, self._rng))
                attempt += 1

    async def _fresh_token(self, node: SimNode, http: Any) -> str:
        if http is None or self.credentials is None:
            return self.authority.mint_node_token(node.name, self.workspace, ttl=900)[0]
        base = self.reconnect_url.split("/api/v1/", 1)[0].replace("ws://", "http://", 1)
        try:
            response = await http.post(
                base + "/oauth/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": node.name,
                    "client_secret": self.credentials[node.name],
                },
            )
            if response.status_code == 200:
                return str(response.json()["access_token"])
            node.error = f"oauth {response.status_code}"
        except Exception as exc:  # the attempt fails at the WebSocket with the old token: back off
            node.error = f"oauth {type(exc).__name__}: {exc}"
        return node.token

    def _became_ready(self, node: SimNode) -> None:
        self.ready_count += 1
        if self.ready_count == len(self.nodes):
            self.all_ready.set()
            if self._lost_since_ready and self.first_lost_at is not None:
                if self.on_recovered is not None:
                    self.on_recovered(
                        self._lost_since_ready, self.first_lost_at, time.monotonic(), self.failed_attempts
                    )
                self._lost_since_ready = 0
                self.first_lost_at = None

    def _lost(self, node: SimNode) -> None:
        self.ready_count -= 1
        self.all_ready.clear()
        self._lost_since_ready += 1
        if self.first_lost_at is None:
            self.first_lost_at = time.monotonic()

    async def _run(self, node: SimNode, gate: asyncio.Semaphore, url: str | None = None) -> None:
        try:
            async with gate:
                node.connections += 1
                ws = await connect(
                    url or self.url,
                    additional_headers={"Authorization": f"Bearer {node.token}"},
                    subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
                    compression=None,
                    max_size=16 * 1024 * 1024,
                    open_timeout=120,
                    ping_interval=None,  # the server's JSON-RPC ping is the heartbeat
                    close_timeout=1,
                )
                node.ws = ws
                async for message in ws:
                    if await self._answer(node, ws, message):
                        break
                else:
                    return
            async for message in ws:
                await self._answer(node, ws, message)
        except (OSError, TimeoutError, websockets.WebSocketException) as exc:
            node.error = f"{type(exc).__name__}: {exc}"

    async def _answer(self, node: SimNode, ws: ClientConnection, text: str | bytes) -> bool:
        """Answer one frame; True once the node became ready (ends the gated phase)."""
        msg = json.loads(text)
        method = msg.get("method")
        id_ = msg.get("id")
        if method is None:
            if id_ == _READY_ID:
                node.ready_at = time.perf_counter()
                node.ready.set()
                self._became_ready(node)
                return True
            return False
        if id_ is None:  # a notification (initialized, cancelled): nothing to answer
            return False
        if method == "ping":
            node.pings += 1
            await ws.send(f'{{"jsonrpc":"2.0","result":{{}},"id":{json.dumps(id_)}}}')
            return False
        if method == "tools/call":
            node.calls += 1
            params = msg.get("params") or {}
            text_arg = (params.get("arguments") or {}).get("text", "")
            result: Any = {"content": [{"type": "text", "text": text_arg}], "isError": False}
        elif method == "initialize":
            result = {
                "protocolVersion": "2025-11-25",
                "capabilities": {"tools": {"listChanged": True}},
                "serverInfo": {"name": "cortex-bench-simnode", "version": "0"},
                "node": {"hostname": "sim", "os": "sim", "arch": "sim", "agent_version": "0"},
                "audit_head": {"seq": 0, "hash": "0" * 64},
            }
        elif method == "tools/list":
            await ws.send(_dumps({"jsonrpc": "2.0", "result": self._tools_text, "id": id_}))
            # The server registers the node before it reads this ping: its answer means "callable".
            await ws.send(_dumps({"jsonrpc": "2.0", "method": "ping", "id": _READY_ID}))
            return False
        else:
            await ws.send(_dumps({"jsonrpc": "2.0", "error": {"code": -32601, "message": method}, "id": id_}))
            return False
        await ws.send(_dumps({"jsonrpc": "2.0", "result": result, "id": id_}))
        return False


@dataclass
class SimFleetProcess:
    """A `SimFleet` in its own process (so the load generator and the nodes do not share a core)."""

    ws_base: str
    data_dir: Path
    workspace: str
    names: list[str]
    proc: subprocess.Popen[str] | None = None
    options: list[str] = field(default_factory=list)
    ready_seconds: float | None = None
    """How long the fleet took to have every node ready (measured inside it: no process start)."""
    """Leading options of ``python3 -m bench.simnode`` (``--reconnect-url``, ``--credentials``)."""

    def start(self, timeout: float = 120.0) -> SimFleetProcess:
        cmd = [
            sys.executable,
            "-m",
            "bench.simnode",
            *self.options,
            self.ws_base,
            str(self.data_dir),
            self.workspace,
            *self.names,
        ]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1]
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "ready N S" once all are callable, or EOF if it failed
        if not line.startswith("ready"):
            self.stop()
            raise RuntimeError(f"simulated nodes did not come up: {line!r}")
        words = line.split()
        self.ready_seconds = float(words[2]) if len(words) > 2 else None
        return self

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
            if self.proc.stdout is not None:
                self.proc.stdout.close()


async def _serve_fleet(
    ws_base: str,
    data_dir: Path,
    workspace: str,
    names: list[str],
    *,
    reconnect_url: str | None = None,
    credentials_file: Path | None = None,
) -> None:
    store = ServerStore(data_dir)
    try:
        authority = TokenAuthority(store.load_or_create_signing_key())
    finally:
        store.close()
    credentials = None
    if credentials_file is not None:
        credentials = json.loads(await asyncio.to_thread(credentials_file.read_text, encoding="utf-8"))
    backoff = Backoff() if reconnect_url is not None else None
    fleet = SimFleet(
        ws_base, authority, workspace, reconnect=backoff, reconnect_url=reconnect_url, credentials=credentials
    )

    def recovered(lost: int, first_lost: float, all_ready: float, failed: int) -> None:
        # Monotonic times: CLOCK_MONOTONIC is one clock for every process of the machine.
        print(f"recovered {lost} {first_lost:.6f} {all_ready:.6f} {failed}", flush=True)

    fleet.on_recovered = recovered
    fleet.mint(names)
    seconds = await fleet.connect_all(timeout=300, concurrency=200)
    print(f"ready {len(names)} {seconds:.6f}", flush=True)
    await asyncio.Future()


def main(argv: list[str] | None = None) -> None:
    """``python3 -m bench.simnode [--reconnect-url WS] [--credentials F] WS_BASE DATA_DIR WORKSPACE NAME...``

    Prints ``ready N SECONDS`` once all are callable, then serves; with ``--reconnect-url`` nodes that
    lose their connection dial that address again (full-jitter backoff) and
    ``recovered LOST T_LOST T_READY FAILED`` is printed each time all are ready again (FAILED: the
    attempts so far that ended before ready). ``--credentials`` (a
    JSON file ``{name: credential}``, 0600) makes every reconnect ask ``/oauth/token`` first, as the
    agent does."""
    parser = argparse.ArgumentParser(prog="python3 -m bench.simnode")
    parser.add_argument("--reconnect-url", default=None)
    parser.add_argument("--credentials", type=Path, default=None)
    parser.add_argument("ws_base")
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("workspace")
    parser.add_argument("names", nargs="+")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    raise_fd_limit()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            _serve_fleet(
                args.ws_base,
                args.data_dir,
                args.workspace,
                args.names,
                reconnect_url=args.reconnect_url,
                credentials_file=args.credentials,
            )
        )


if __name__ == "__main__":
    main()
