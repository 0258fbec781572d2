"""Unit tier: `spec.coalesce.CoalescingClientConnection.send` (rule 4) against a real `websockets` server
on loopback.

Text messages take the direct path, bytes and fragments the library's; both arrive whole and in order.
A message far over the socket's write buffer waits for room (the direct path's drain) and arrives whole.
A send on a closed connection raises the library's ConnectionClosed, as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from spec.coalesce import CoalescingClientConnection


class _Server:
    """What the server received, a gate that stops its handler, and an event per message."""

    def __init__(self) -> None:
        self.url = ""
        self.received: list[str | bytes] = []
        self.reading = asyncio.Event()
        self.reading.set()
        self.changed = asyncio.Event()

    async def handler(self, ws: ServerConnection) -> None:
        async for message in ws:
            await self.reading.wait()
            self.received.append(message)
            self.changed.set()

    async def until_count(self, n: int, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.received) < n:
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def server() -> AsyncIterator[_Server]:
    state = _Server()
    # max_queue 4: a handler that stops makes the server stop reading the socket after a few messages.
    async with serve(state.handler, "127.0.0.1", 0, compression=None, max_size=None, max_queue=4) as srv:
        port = next(iter(srv.sockets)).getsockname()[1]
        state.url = f"ws://127.0.0.1:{port}"
        yield state


async def test_text_and_bytes_arrive_whole_and_in_order(server: _Server) -> None:
    async with connect(server.url, compression=None, create_connection=CoalescingClientConnection) as ws:
        assert isinstance(ws, CoalescingClientConnection)
        sent: list[str | bytes] = []
        for i in range(200):
            message: str | bytes = f"text-{i}-é" if i % 3 else f"bytes-{i}".encode()
            sent.append(message)
            await ws.send(message)
        await ws.send(["frag-", "mented"])  # a fragmented message: the library's path
        sent.append("frag-mented")
        await server.until_count(len(sent))
    assert server.received == sent


async def test_a_message_over_the_write_buffer_waits_for_room(server: _Server) -> None:
    async with connect(
        server.url, compression=None, max_size=None, create_connection=CoalescingClientConnection
    ) as ws:
        ws.transport.set_write_buffer_limits(high=64 * 1024)
        server.reading.clear()  # the handler stops: past max_queue the server stops reading the socket
        small = [f"small-{i}" for i in range(12)]
        for message in small:
            await ws.send(message)
        big = "x" * (16 * 1024 * 1024)
        task = asyncio.ensure_future(ws.send(big))
        await asyncio.sleep(0)  # the task wrote what the socket took and waits for room
        assert ws.paused and not task.done()
        server.reading.set()
        async with asyncio.timeout(30):
            await task
        await ws.send("after")
        await server.until_count(len(small) + 2)
    assert server.received == [*small, big, "after"]


async def test_a_send_after_close_raises_connection_closed(server: _Server) -> None:
    async with connect(server.url, compression=None, create_connection=CoalescingClientConnection) as ws:
        await ws.close()
        with pytest.raises(websockets.ConnectionClosed):
            await ws.send("too late")
