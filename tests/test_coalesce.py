"""Unit tier: `spec.coalesce.CoalescingTransport` over a real loopback socket pair.

A lone write leaves at once; the small writes after it in the same loop pass leave together, in order;
a large write sends what is held first; what is held stays bounded for a sender that never yields;
close sends what is held, abort drops it.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from spec.coalesce import DIRECT_BYTES, HELD_MAX_BYTES, CoalescingTransport


@dataclass
class _Sink(asyncio.Protocol):
    paused: int = 0
    lost: asyncio.Event = field(default_factory=asyncio.Event)

    def pause_writing(self) -> None:
        self.paused += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()


@dataclass
class _Pair:
    transport: CoalescingTransport
    raw: asyncio.Transport
    peer: socket.socket
    protocol: _Sink

    def readable_now(self) -> bytes:
        """What the peer socket holds at this instant (no waiting)."""
        chunks = []
        while True:
            try:
                chunk = self.peer.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return b"".join(chunks)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)

    async def read_exactly(self, n: int) -> bytes:
        got = b""
        async with asyncio.timeout(10):
            while len(got) < n:
                got += self.readable_now()
                if len(got) < n:
                    await asyncio.sleep(0)
        return got


@pytest.fixture
async def pair() -> AsyncIterator[_Pair]:
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    loop = asyncio.get_running_loop()
    raw, protocol = await loop.create_connection(_Sink, sock=ours)
    assert isinstance(raw, asyncio.Transport)
    try:
        yield _Pair(CoalescingTransport(raw), raw, peer, protocol)
    finally:
        raw.abort()
        peer.close()


async def test_a_lone_write_leaves_at_once_and_later_ones_together_in_order(pair: _Pair) -> None:
    pair.transport.write(b"first")
    assert pair.readable_now() == b"first"  # rule 1: nothing waits for a lone message
    pair.transport.write(b"second,")
    pair.transport.write(b"third")
    assert pair.readable_now() == b""  # held for the end of this loop pass
    assert pair.transport.get_write_buffer_size() == len(b"second,third")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert pair.readable_now() == b"second,third"
    pair.transport.write(b"after a quiet pass")
    assert pair.readable_now() == b"after a quiet pass"


async def test_a_large_write_sends_what_is_held_first(pair: _Pair) -> None:
    pair.transport.write(b"a")
    pair.transport.write(b"b")
    big = b"B" * DIRECT_BYTES
    pair.transport.write(big)
    assert await pair.read_exactly(2 + len(big)) == b"ab" + big


async def test_a_sender_that_never_yields_holds_a_bounded_amount(pair: _Pair) -> None:
    pair.transport.write(b"x")
    most = 0
    for _ in range(1000):
        pair.transport.write(b"y" * 1000)
        most = max(most, pair.transport.get_write_buffer_size() - pair.raw.get_write_buffer_size())
    assert most < HELD_MAX_BYTES
    assert await pair.read_exactly(1 + 1000 * 1000) == b"x" + b"y" * 1_000_000


async def test_close_sends_what_is_held_and_abort_drops_it(pair: _Pair) -> None:
    pair.transport.write(b"one")
    pair.transport.write(b"two")
    pair.transport.close()
    assert await pair.read_exactly(6) == b"onetwo"
    async with asyncio.timeout(10):
        await pair.protocol.lost.wait()


async def test_abort_drops_what_is_held(pair: _Pair) -> None:
    pair.transport.write(b"one")
    pair.transport.write(b"two")
    pair.transport.abort()
    async with asyncio.timeout(10):
        await pair.protocol.lost.wait()
    assert pair.readable_now() == b"one"
