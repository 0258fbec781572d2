"""Server limits (server.limits): bodies, JSON shape, handshake deadlines, the connection cap, accept errors.

Real server processes on loopback with small limits (1 MB frames, a 1 s handshake timeout, 80
connections) so each defence shows within a second or two; raw sockets play the hostile client.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from websockets.asyncio.client import connect

from spec import errors
from tests.support.procs import ServerProc, raw_node_socket
from tests.support.rawnode import RawNode

FRAME = 1_000_000
HANDSHAKE = 1.0
MAX_CONNECTIONS = 80


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    server = ServerProc(
        tmp_path_factory.mktemp("limits") / "server",
        args=[
            "--max-frame-bytes",
            str(FRAME),
            "--handshake-timeout",
            str(HANDSHAKE),
            "--max-connections",
            str(MAX_CONNECTIONS),
        ],
    ).start()
    try:
        yield server
    finally:
        server.stop()


async def _exchange(server: ServerProc, head: bytes, body: bytes = b"", timeout: float = 5.0) -> bytes:
    """Send raw bytes, return everything the server sends back until it closes (bounded)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    received = b""
    try:
        writer.write(head + body)
        await writer.drain()
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                received += chunk
    except ConnectionError:  # the server closed with our unread body in its buffer
        pass
    finally:
        writer.close()
    return received


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def _body(response: bytes) -> dict[str, object]:
    payload: dict[str, object] = json.loads(response.split(b"\r\n\r\n", 1)[1])
    return payload


def _call_head(server: ServerProc, length: int | None, token: str, chunked: bool = False) -> bytes:
    lines = [
        "POST /api/v1/nodes/nobody/tools/echo/call HTTP/1.1",
        f"Host: 127.0.0.1:{server.port}",
        f"Authorization: Bearer {token}",
        "Content-Type: application/json",
    ]
    lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# -- rule 1: bodies ---------------------------------------------------------------------------------------
async def test_declared_oversized_bodies_get_413_before_any_body_byte(limited: ServerProc) -> None:
    token_head = (
        b"POST /oauth/token HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 70000\r\n\r\n"
    )
    response = await _exchange(limited, token_head)  # no body byte sent: an answer means it was not read
    assert _status(response) == 413
    response = await _exchange(limited, _call_head(limited, FRAME + 1, limited.admin_token))
    assert _status(response) == 413
    assert _body(response)["error"] == "request_too_large"


async def test_streamed_bodies_are_counted(limited: ServerProc) -> None:
    chunk = b"a" * 50_000
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(30))  # 1.5 MB > the 1 MB limit
    response = await _exchange(limited, _call_head(limited, None, limited.admin_token, chunked=True), chunks)
    assert _status(response) == 413
    # An under-declared body is counted too: the oauth limit (64 KiB) through a chunked form post.
    head = b"POST /oauth/token HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    response = await _exchange(limited, head, chunks[: 2 * (len(chunk) + 10)])
    assert _status(response) == 413


async def test_parallel_bodies_share_one_memory_budget(limited: ServerProc) -> None:
    # Three bodies of 0.45 MB each, held open (unterminated): 1.35 MB > the 1 MB budget (the frame
    # limit), so one of them is turned away with 503 while the others wait for their end.
    piece = b"a" * 450_000
    head = _call_head(limited, None, limited.admin_token, chunked=True)
    streams = []
    try:
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", limited.port)
            writer.write(head + b"%x\r\n%s\r\n" % (len(piece), piece))
            streams.append((reader, writer))
        async with asyncio.timeout(HANDSHAKE + 3):
            answers = await asyncio.gather(*(reader.read(200) for reader, _ in streams))
    finally:
        for _, writer in streams:
            writer.close()
    assert [a[:12] for a in answers].count(b"HTTP/1.1 503") == 1, answers


# -- rule 2: JSON shape -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000 + b"]" * 100_000, b'{"arguments":' * 65 + b"{}" + b"}" * 65, b"{not json", b"\xff\xfe"],
    ids=["100k-deep", "65-deep", "syntax", "not-utf8"],
)
def test_bad_json_bodies_get_400_invalid_request(limited: ServerProc, body: bytes) -> None:
    with limited.http() as http:
        response = http.post(
            "/api/v1/nodes/nobody/tools/echo/call", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_request"
        mcp = http.post("/mcp", content=body, headers={"content-type": "application/json"})
        assert mcp.status_code == 400
        assert mcp.json()["error"]["code"] in (errors.PARSE_ERROR, errors.INVALID_REQUEST)
        planner = http.post("/api/v1/planner/runs", content=body)
        assert planner.status_code == 400 and planner.json()["error"] == "invalid_request"
        # 64 deep is allowed: the request goes on to the endpoint (which finds no such node).
        ok = http.post("/api/v1/nodes/nobody/tools/echo/call", content=b"[" * 64 + b"]" * 64)
        assert ok.status_code != 500


async def test_deep_json_frames_get_rpc_errors_and_the_links_stay_up(limited: ServerProc) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    async with RawNode(await raw_node_socket(limited, "deepnode")) as node, asyncio.timeout(20):
        await node.ws.send(deep)
        assert (await node.reply(None))["error"]["code"] == errors.INVALID_REQUEST
        await node.ws.send(
            '{"jsonrpc":"2.0","method":"ping","params":' + "{}" * 0 + "[" * 65 + "]" * 65 + "}"
        )
        assert (await node.reply(None))["error"]["code"] == errors.INVALID_REQUEST
        assert (await node.request("ping", 7))["result"] == {}
    url = limited.url.replace("http", "ws") + "/api/v1/rpc"
    headers = {"Authorization": f"Bearer {limited.admin_token}"}
    async with connect(url, additional_headers=headers, subprotocols=["cortex.v1"]) as ws:  # type: ignore[list-item]
        async with asyncio.timeout(20):
            await ws.send(deep)
            assert json.loads(await ws.recv())["error"]["code"] == errors.INVALID_REQUEST
            await ws.send("{")
            assert json.loads(await ws.recv())["error"]["code"] == errors.PARSE_ERROR
            await ws.send('{"jsonrpc":"2.0","method":"ping","id":1}')
            assert json.loads(await ws.recv()) == {"jsonrpc": "2.0", "result": {}, "id": 1}


# -- rule 3: deadlines ------------------------------------------------------------------------------------
async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(65536):
                pass
            return True
    except TimeoutError:
        return False
    except ConnectionError:
        return True


async def test_idle_partial_and_slow_connections_are_closed_in_time(limited: ServerProc) -> None:
    sends = [
        b"",  # idle: never sends a byte
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ",  # partial headers
        b"POST /oauth/token HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc",  # slow body
        b"GET /api/v1/nodes/connect HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n",  # half an upgrade
    ]
    streams = []
    for data in sends * 10:
        reader, writer = await asyncio.open_connection("127.0.0.1", limited.port)
        writer.write(data)
        streams.append((reader, writer))
    started = time.monotonic()
    try:
        closed = await asyncio.gather(*(_closed_within(r, HANDSHAKE + 3) for r, _ in streams))
    finally:
        for _, writer in streams:
            writer.close()
    assert all(closed), f"{closed.count(False)} of {len(closed)} connections still open"
    assert time.monotonic() - started < HANDSHAKE + 3
    # A kept-alive connection starts a new deadline with its next request's first byte.
    reader, writer = await asyncio.open_connection("127.0.0.1", limited.port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(5):
            assert (await reader.readuntil(b"}")).startswith(b"HTTP/1.1 200")
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # ... and never finishes it
        assert await _closed_within(reader, HANDSHAKE + 3)
    finally:
        writer.close()
    with httpx2.Client(base_url=limited.url, timeout=5) as http:
        assert http.get("/healthz").status_code == 200


# -- rule 4: the connection cap ---------------------------------------------------------------------------
async def test_past_max_connections_new_ones_are_refused_and_links_keep_working(limited: ServerProc) -> None:
    async with RawNode(await raw_node_socket(limited, "capnode")) as node:
        async with asyncio.timeout(10):
            assert (await node.request("ping", 1))["result"] == {}
        streams = []
        try:
            for _ in range(MAX_CONNECTIONS + 20):
                streams.append(await asyncio.open_connection("127.0.0.1", limited.port))
            async with asyncio.timeout(5):
                answers = await asyncio.gather(*(r.read(200) for r, _ in streams[-10:]))
            assert all(a.startswith(b"HTTP/1.1 503") for a in answers)
            async with asyncio.timeout(2):
                assert (await node.request("ping", 2))["result"] == {}  # the existing link is untouched
        finally:
            for _, writer in streams:
                writer.close()
        # The held sockets go at the handshake deadline; then new connections are served again.
        deadline = time.monotonic() + HANDSHAKE + 5
        while True:
            reader, writer = await asyncio.open_connection("127.0.0.1", limited.port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            async with asyncio.timeout(5):
                first = await reader.read(200)
            writer.close()
            if first.startswith(b"HTTP/1.1 200") or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)  # polling the server from outside: each try is bounded above
        assert first.startswith(b"HTTP/1.1 200")
        assert any("connection limit reached" in line for line in limited.output)


# -- rule 5: accept errors --------------------------------------------------------------------------------
async def test_accept_errors_are_logged_once_per_interval_without_traceback(tmp_path: Path) -> None:
    server = ServerProc(tmp_path / "server", args=["--handshake-timeout", "30"]).start()
    try:
        open_fds = len(os.listdir(f"/proc/{server.pid}/fd"))
        limit = open_fds + 8
        resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (limit, limit))
        streams = []
        try:
            for _ in range(40):
                streams.append(await asyncio.open_connection("127.0.0.1", server.port))
            # asyncio retries accept() every second: over 3 s that is several failures.
            assert server.wait_output("accept() failed", timeout=10)
            await asyncio.sleep(3)  # time is the feature: failures keep coming during these seconds
            log = "".join(server.output)
        finally:
            for _, writer in streams:
                writer.close()
        assert log.count("accept() failed") == 1
        assert "Traceback" not in log
        async with asyncio.timeout(15):
            while True:
                try:
                    with httpx2.Client(base_url=server.url, timeout=2) as http:
                        if http.get("/healthz").status_code == 200:
                            break
                except httpx2.HTTPError:
                    await asyncio.sleep(0.2)
    finally:
        server.stop()
