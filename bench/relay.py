"""The reference every echo figure is compared with: a raw `websockets` relay, three processes.

Where it sits: outside the product (bench/ only). caller → relay → worker, the same shape as
SDK → server → node, with the least work a relay can do and still be one: the relay parses each JSON-RPC
request, picks the worker named by ``params.node``, rewrites the id, forwards it, and maps the answer back
to its caller. No auth, no schema checks, no metrics, no dispatcher: what is left is the cost of the
sockets, the event loop and JSON, which is the floor our server is measured against.

    python3 -m bench.relay relay              # prints "relay listening on ws://127.0.0.1:PORT"
    python3 -m bench.relay worker URL COUNT   # COUNT worker connections answering `echo`
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve

__all__ = ["RelayCaller", "RelayProcesses"]

REPO = Path(__file__).resolve().parents[1]


def _dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


# -- the relay process ---------------------------------------------------------------------------------
async def _relay_main() -> None:
    workers: list[ServerConnection] = []
    pending: dict[int, tuple[ServerConnection, Any]] = {}
    ids = itertools.count(1)

    async def handler(ws: ServerConnection) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):  # callers may leave without a close frame
            await route(ws)

    async def route(ws: ServerConnection) -> None:
        assert ws.request is not None
        if ws.request.path == "/worker":
            workers.append(ws)
            async for text in ws:
                msg = json.loads(text)
                caller, original = pending.pop(msg["id"])
                msg["id"] = original
                await caller.send(_dumps(msg))
            return
        async for text in ws:
            msg = json.loads(text)
            node = int((msg.get("params") or {}).get("node", 0))
            if node >= len(workers):
                error = {"code": -32004, "message": f"worker {node} is not connected"}
                await ws.send(_dumps({"jsonrpc": "2.0", "error": error, "id": msg["id"]}))
                continue
            worker = workers[node]
            relay_id = next(ids)
            pending[relay_id] = (ws, msg["id"])
            msg["id"] = relay_id
            await worker.send(_dumps(msg))

    async with serve(handler, "127.0.0.1", 0, compression=None, max_size=None, ping_interval=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(f"relay listening on ws://127.0.0.1:{port}", flush=True)
        await asyncio.Future()


# -- the worker process ----------------------------------------------------------------------------------
async def _worker_main(url: str, count: int) -> None:
    async def one() -> None:
        async with connect(url + "/worker", compression=None, max_size=None, ping_interval=None) as ws:
            async for text in ws:
                msg = json.loads(text)
                params = msg.get("params") or {}
                arguments = params.get("arguments") or {}
                if params.get("name") == "fs_read":  # the 1 MiB scenario: read the file, return its text
                    body = await asyncio.to_thread(Path(arguments["path"]).read_text, encoding="utf-8")
                else:
                    body = arguments.get("text", "")
                result = {"content": [{"type": "text", "text": body}], "isError": False}
                await ws.send(_dumps({"jsonrpc": "2.0", "result": result, "id": msg["id"]}))

    await asyncio.gather(*(one() for _ in range(count)))


# -- the caller (runs in the benchmark process) ------------------------------------------------------------
class RelayCaller:
    """A raw `websockets` JSON-RPC caller of the relay: id correlation with futures, nothing more."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._ws: ClientConnection | None = None
        self._waiters: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RelayCaller:
        self._ws = await connect(self.url + "/caller", compression=None, max_size=None, ping_interval=None)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()

    async def _read(self) -> None:
        assert self._ws is not None
        async for text in self._ws:
            msg = json.loads(text)
            fut = self._waiters.pop(msg["id"], None)
            if fut is not None and not fut.done():
                if "error" in msg:
                    fut.set_exception(RuntimeError(msg["error"]["message"]))
                else:
                    fut.set_result(msg.get("result"))

    async def call(
        self, node: int, text: str, *, tool: str = "echo", arguments: dict[str, Any] | None = None
    ) -> Any:
        assert self._ws is not None
        id_ = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters[id_] = fut
        params = {"node": node, "name": tool, "arguments": {"text": text} if arguments is None else arguments}
        await self._ws.send(_dumps({"jsonrpc": "2.0", "method": "tools/call", "params": params, "id": id_}))
        return await fut


@dataclass
class RelayProcesses:
    """Start the relay and a worker process with *workers* connections; `stop()` ends both."""

    workers: int = 1
    url: str = ""
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        """The relay process (the one comparable with our server)."""
        return self.procs[0].pid

    def start(self, timeout: float = 20.0) -> RelayProcesses:
        relay = subprocess.Popen(
            [sys.executable, "-m", "bench.relay", "relay"], stdout=subprocess.PIPE, text=True, cwd=REPO
        )
        self.procs.append(relay)
        assert relay.stdout is not None
        line = relay.stdout.readline()  # the relay prints its address first thing, or exits
        if "relay listening on" not in line:
            self.stop()
            raise RuntimeError(f"the relay did not start: {line!r}")
        self.url = line.rsplit(" ", 1)[-1].strip()
        self.procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "bench.relay", "worker", self.url, str(self.workers)],
                cwd=REPO,
                text=True,
            )
        )
        return self

    async def wait_ready(self, timeout: float = 20.0) -> None:
        """Bounded: call every worker once until all answer."""
        deadline = time.monotonic() + timeout
        async with RelayCaller(self.url) as caller:
            for node in range(self.workers):
                while True:
                    try:
                        async with asyncio.timeout(0.5):
                            await caller.call(node, "ready?")
                        break
                    except (TimeoutError, RuntimeError):
                        if time.monotonic() > deadline:
                            raise TimeoutError("relay workers did not come up") from None
                        await asyncio.sleep(0.05)

    def stop(self) -> None:
        for proc in reversed(self.procs):  # the worker first, so it does not see the relay vanish
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
        self.procs.clear()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python3 -m bench.relay")
    parser.add_argument("role", choices=["relay", "worker"])
    parser.add_argument("url", nargs="?")
    parser.add_argument("count", nargs="?", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        if args.role == "relay":
            asyncio.run(_relay_main())
        else:
            asyncio.run(_worker_main(args.url, args.count))
    except (KeyboardInterrupt, ConnectionError, websockets.ConnectionClosed):
        pass


if __name__ == "__main__":
    main()
