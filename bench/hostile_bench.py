"""Hostile-input benchmark: what oversized bodies, idle sockets and a ReDoS schema cost the server.

Where it sits: outside the product; `python3 -m bench` picks it up through `main(quick)`, and
``python3 -m bench.hostile_bench [--quick]`` runs it alone. A real `cortex-server serve` child on
loopback; hand-driven nodes (`tests.support.rawnode.RawNode`) on real tunnel sockets. Scenarios and
targets (issue 13), each beside a reference measured in the same run:

1. Bodies: one 20 MB body, then 5 parallel 300 MB bodies (declared with Content-Length, then the
   same chunked), against the server's 16 MiB frame limit → peak server RSS growth (target < 40 MB).
   Reference: 5 parallel 1 MB bodies the server accepts.
2. Idle sockets: 20,000 (quick: 2,000) sockets that never send a byte → echo calls on a node already
   connected, through an RPC socket already open, still answer (target < 1 s, reference: the same
   echo before the flood); every idle socket is closed within the handshake timeout (10 s; quick 2 s);
   `/healthz` on a fresh connection answers right after.
3. ReDoS: a node declares ``"pattern": "^(a+)+$"``; a call with 40 a's and a "!" is refused, and echo
   on another node answers meanwhile (target: no stall). Reference: Python's `re` on 24 a's (what the
   default jsonschema engine does; doubling per extra character).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import selectors
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2
from websockets.asyncio.client import ClientConnection, connect

from bench.harness import ServerProcess, raise_fd_limit, rss_kib
from tests.support.rawnode import ECHO_TOOL, RawNode

__all__ = ["main", "run"]

WORKSPACE = "bench"
MB = 1_000_000
REDOS = "^(a+)+$"


# -- plumbing ----------------------------------------------------------------------------------------------
async def _node(server: ServerProcess, name: str, tools: list[dict[str, Any]] | None = None) -> RawNode:
    credential = server.enroll([name], WORKSPACE)[name]
    async with httpx2.AsyncClient(base_url=server.url) as http:
        token = (
            await http.post(
                "/oauth/token",
                data={"grant_type": "client_credentials", "client_id": name, "client_secret": credential},
            )
        ).json()["access_token"]
    ws = await connect(
        server.ws_base + "/api/v1/nodes/connect",
        additional_headers={"Authorization": f"Bearer {token}"},
        subprotocols=["cortex.v1"],  # type: ignore[list-item]
        max_size=None,
    )
    node = await RawNode(ws, tools=tools).__aenter__()
    headers = {"Authorization": f"Bearer {server.user_token()}"}
    async with httpx2.AsyncClient(base_url=server.url, headers=headers) as http, asyncio.timeout(15):
        while True:  # polling from outside, bounded
            if (await http.get(f"/api/v1/nodes/{name}")).json().get("status") == "connected":
                break
            await asyncio.sleep(0.05)
    return node


class _Rpc:
    """A JSON-RPC caller on `/api/v1/rpc`, opened once (an already connected client)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.next_id = 0
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, server: ServerProcess) -> _Rpc:
        ws = await connect(
            server.ws_base + "/api/v1/rpc",
            additional_headers={"Authorization": f"Bearer {server.user_token()}"},
            subprotocols=["cortex.v1"],  # type: ignore[list-item]
        )
        return cls(ws)

    async def _read(self) -> None:
        async for frame in self.ws:
            message = json.loads(frame)
            fut = self.waiting.pop(message.get("id"), None)
            if fut is not None and not fut.done():
                fut.set_result(message)

    async def call(self, node: str, tool: str, arguments: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        self.next_id += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[self.next_id] = fut
        started = time.perf_counter()
        params = {"node": node, "name": tool, "arguments": arguments}
        await self.ws.send(
            json.dumps({"jsonrpc": "2.0", "method": "tools/call", "params": params, "id": self.next_id})
        )
        async with asyncio.timeout(30):
            answer = await fut
        return time.perf_counter() - started, answer

    async def close(self) -> None:
        self.reader.cancel()
        await self.ws.close()


class _RssPeak:
    """Samples a process's RSS every few milliseconds while running; `peak` in KiB."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss_kib(pid)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> _RssPeak:
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self.peak = max(self.peak, rss_kib(self.pid))

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, rss_kib(self.pid))
            await asyncio.sleep(0.005)  # sampling: time is the measurement


# -- 1. bodies ---------------------------------------------------------------------------------------------
async def _post(server: ServerProcess, size: int, token: str, *, chunked: bool) -> int:
    """POST a body of `size` bytes (stopping when the server closes); returns the status (0: none read)."""
    host, port = server.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
    writer.write(
        (
            f"POST /api/v1/nodes/nobody/tools/echo/call HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
        ).encode()
    )
    # A valid JSON body (an echo call) of exactly `size` bytes, written 1 MiB at a time.
    head, tail = b'{"arguments":{"text":"', b'"}}'
    filler = size - len(head) - len(tail)
    block = b"a" * (1 << 20)
    status_line = asyncio.create_task(reader.readline())  # the server may answer before the body ends
    sent = 0
    with contextlib.suppress(ConnectionError, TimeoutError):
        async with asyncio.timeout(60):
            for piece in (head, *([block] * (filler // len(block))), block[: filler % len(block)], tail):
                if status_line.done():
                    break
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                await writer.drain()
                sent += len(piece)
            if chunked and not status_line.done():
                writer.write(b"0\r\n\r\n")
                await writer.drain()
    status = 0
    with contextlib.suppress(ConnectionError, TimeoutError, ValueError, IndexError):
        async with asyncio.timeout(5):
            status = int((await status_line).split()[1])
    status_line.cancel()
    writer.close()
    return status


async def _body_growth(
    server: ServerProcess, token: str, sizes: list[int], chunked: bool
) -> tuple[float, list[int]]:
    before = rss_kib(server.pid)
    async with _RssPeak(server.pid) as rss:
        statuses = await asyncio.gather(*(_post(server, size, token, chunked=chunked) for size in sizes))
    return (rss.peak - before) / 1024, list(statuses)


async def bodies(workdir: Path, quick: bool) -> list[dict[str, Any]]:
    server = ServerProcess(workdir / "bodies").start()
    try:
        token = server.user_token()
        big = 60 * MB if quick else 300 * MB
        reference, ref_status = await _body_growth(server, token, [MB] * 5, chunked=False)
        one, one_status = await _body_growth(server, token, [20 * MB], chunked=False)
        declared, declared_status = await _body_growth(server, token, [big] * 5, chunked=False)
        chunked, chunked_status = await _body_growth(server, token, [big] * 5, chunked=True)
    finally:
        server.stop()
    print(f"bodies: statuses 1 MB {ref_status}, 20 MB {one_status}, 5x{big // MB} MB {declared_status},"
          f" chunked {chunked_status}")  # fmt: skip
    note = "reference: 5 parallel 1 MB bodies within the limit"
    rows = [
        ("one 20 MB body (over the 16 MiB limit)", one),
        (f"5 parallel {big // MB} MB bodies, Content-Length", declared),
        (f"5 parallel {big // MB} MB bodies, chunked", chunked),
    ]
    return [
        {"scenario": f"{name}: server RSS growth", "ours": round(growth, 1), "reference": round(reference, 1),
         "unit": "MB", "higher_is_better": False, "target": "< 40 MB", "note": note}
        for name, growth in rows
    ]  # fmt: skip


# -- 2. idle sockets ---------------------------------------------------------------------------------------
def _open_idle(host: str, port: int, count: int) -> tuple[list[socket.socket], int]:
    """`count` sockets that never send (a thread: blocking connects); returns (open ones, refused)."""
    sockets: list[socket.socket] = []
    failed = 0
    for _ in range(count):
        try:
            sockets.append(socket.create_connection((host, port), timeout=5))
        except OSError:
            failed += 1
    return sockets, failed


def _wait_closed(sockets: list[socket.socket], timeout: float) -> tuple[float, int, int]:
    """Seconds until every socket saw EOF or a reset (bounded); (seconds, closed, still open)."""
    started = time.monotonic()
    selector = selectors.DefaultSelector()
    for sock in sockets:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    left = len(sockets)
    refused_503 = 0
    while left and time.monotonic() - started < timeout:
        for key, _ in selector.select(timeout=0.5):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            if data.startswith(b"HTTP/1.1 503"):
                refused_503 += 1
            selector.unregister(sock)
            sock.close()
            left -= 1
    for key in list(selector.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    return time.monotonic() - started, len(sockets) - left - refused_503, left


HOLDER_SOCKETS = 9_000  # per holder process: the container's hard descriptor limit is 20,000


def hold(host: str, port: int, count: int, timeout: float) -> dict[str, Any]:
    """One holder process's part: open `count` idle sockets, wait until the server closed them."""
    raise_fd_limit()
    sockets, failed = _open_idle(host, port, count)
    seconds, closed, left = _wait_closed(sockets, timeout)
    return {"failed": failed, "closed": closed, "left": left, "seconds": seconds, "opened": len(sockets)}


async def _holders(host: str, port: int, count: int, timeout: float) -> list[dict[str, Any]]:
    parts = [min(HOLDER_SOCKETS, count - i) for i in range(0, count, HOLDER_SOCKETS)]
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.hostile_bench", "--hold", host, str(port), str(n), str(timeout + 20),
            stdout=asyncio.subprocess.PIPE,
        )
        for n in parts
    ]  # fmt: skip
    results = []
    for proc in procs:
        out, _ = await proc.communicate()
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    return results


async def idle_sockets(workdir: Path, quick: bool) -> list[dict[str, Any]]:
    count = 2_000 if quick else 20_000
    timeout = 2.0 if quick else 10.0
    server = ServerProcess(workdir / "idle", extra_args=["--handshake-timeout", str(timeout)]).start()
    host, port = server.url.removeprefix("http://").split(":")
    try:
        node = await _node(server, "steady")
        rpc = await _Rpc.open(server)
        before = [(await rpc.call("steady", "echo", {"text": "x"}))[0] for _ in range(20)]
        started_flood = time.monotonic()
        holders = asyncio.create_task(_holders(host, int(port), count, timeout))
        during: list[float] = []
        while not holders.done():
            during.append((await rpc.call("steady", "echo", {"text": "x"}))[0])
            await asyncio.sleep(0.02)  # a steady trickle of calls while the flood arrives and is closed
        results = await holders
        all_closed_after = max(r["seconds"] for r in results)  # from each holder's last open
        flood_seconds = time.monotonic() - started_flood
        failed = sum(r["failed"] for r in results)
        closed = sum(r["closed"] for r in results)
        left = sum(r["left"] for r in results)
        started = time.perf_counter()
        async with httpx2.AsyncClient(base_url=server.url, timeout=10) as http:
            healthy = (await http.get("/healthz")).status_code
        healthz = time.perf_counter() - started
        await rpc.close()
        await node.__aexit__(None, None, None)
    finally:
        server.stop()
    ordered = sorted(during)
    p50, p99 = ordered[len(ordered) // 2] * 1000, ordered[int(len(ordered) * 0.99)] * 1000
    print(f"idle sockets: whole flood (open + closed) {flood_seconds:.1f} s; {len(during)} echoes during it:"
          f" p50 {p50:.1f} ms, p99 {p99:.1f} ms, over 1 s: {sum(1 for x in during if x > 1.0)}")  # fmt: skip
    refused = count - failed - closed - left
    print(f"idle sockets: {count} opened ({failed} failed to connect), {refused} refused at once (503, past"
          f" --max-connections), {closed} closed by the deadline, {left} left open; /healthz {healthy}"
          f" in {healthz * 1000:.0f} ms")  # fmt: skip
    return [
        {"scenario": f"echo on a connected node during {count:,} idle sockets (max)",
         "ours": round(max(during) * 1000, 1), "reference": round(max(before) * 1000, 1), "unit": "ms",
         "higher_is_better": False,
         "target": "< 1000 ms", "note": "reference: max of 20 echoes before the flood"},
        {"scenario": f"{count:,} idle sockets: all closed after the last opened",
         "ours": round(all_closed_after, 2), "reference": timeout, "unit": "s", "higher_is_better": False,
         "target": "<= handshake timeout", "note": f"reference: --handshake-timeout; {left} left open"},
        {"scenario": "/healthz on a fresh connection right after", "ours": round(healthz * 1000, 1),
         "reference": round(min(before) * 1000, 1), "unit": "ms", "higher_is_better": False,
         "note": f"status {healthy}; reference: fastest echo before the flood"},
    ]  # fmt: skip


# -- 3. ReDoS ----------------------------------------------------------------------------------------------
async def redos(workdir: Path, quick: bool) -> list[dict[str, Any]]:
    tool = {
        "name": "match",
        "inputSchema": {"type": "object", "properties": {"s": {"type": "string", "pattern": REDOS}}},
    }
    server = ServerProcess(workdir / "redos").start()
    try:
        evil = await _node(server, "evil", [ECHO_TOOL, tool])
        good = await _node(server, "good")
        rpc = await _Rpc.open(server)
        baseline = min([(await rpc.call("good", "echo", {"text": "x"}))[0] for _ in range(20)])
        hostile = asyncio.create_task(rpc.call("evil", "match", {"s": "a" * 40 + "!"}))
        beside = [(await rpc.call("good", "echo", {"text": "x"}))[0] for _ in range(20)]
        spent, answer = await hostile
        await rpc.close()
        for node in (evil, good):
            await node.__aexit__(None, None, None)
    finally:
        server.stop()
    started = time.perf_counter()
    re.search(REDOS, "a" * 24 + "!")
    reference = time.perf_counter() - started
    print(f"redos: answer {answer.get('error', {}).get('code')} in {spent * 1000:.1f} ms;"
          f" python re on 24 chars {reference:.2f} s")  # fmt: skip
    return [
        {"scenario": "schema pattern ^(a+)+$ on 40 a's + '!' (call refused)", "ours": round(spent * 1000, 2),
         "reference": round(reference * 1000, 1), "unit": "ms", "higher_is_better": False,
         "target": "no stall", "note": "reference: Python re on 24 a's (x2 per extra char)"},
        {"scenario": "echo on another node meanwhile (max of 20)", "ours": round(max(beside) * 1000, 2),
         "reference": round(baseline * 1000, 2), "unit": "ms", "higher_is_better": False,
         "note": "reference: fastest echo before"},
    ]  # fmt: skip


async def run(quick: bool, workdir: Path) -> list[dict[str, Any]]:
    rows = await bodies(workdir, quick)
    rows += await idle_sockets(workdir, quick)
    rows += await redos(workdir, quick)
    return rows


def main(quick: bool = False) -> list[dict[str, Any]]:
    """Rows for `python3 -m bench` (scenario, ours, reference, unit, target)."""
    raise_fd_limit()
    with tempfile.TemporaryDirectory(prefix="cortex-hostile-") as tmp:
        return asyncio.run(run(quick, Path(tmp)))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--hold"]:
        print(json.dumps(hold(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))))
        sys.exit(0)
    for row in main(quick="--quick" in sys.argv[1:]):
        print(f"{row['scenario']:<62} {row['ours']:>10} {row['unit']:<4} (reference {row['reference']})"
              f"  {row.get('target', '')}")  # fmt: skip
