"""Small writes of one event-loop pass leave in one system call: a transport wrapper for every link.

Where it sits: under the WebSocket libraries, at the socket. The server's uvicorn protocol
(`server.ws_protocol`) and the `websockets` clients (the agent's tunnel, the SDK, the replica link,
through `CoalescingClientConnection`) hand it their asyncio transport; nothing above them knows it is
there. stdlib only.

Why: on loopback a `send()` costs the sender the whole TCP delivery to the receiving socket, several
µs, and each frame was one `send()`. With many calls in flight, one pass of the event loop produces
several small frames on the same socket (a batch of answers, a batch of relayed requests); they can
leave together.

Rules:
1. The first write after the socket went quiet goes out at once: a lone message (a sequential call)
   waits for nothing. Later small writes of the same loop pass are held and leave together in one
   write, scheduled with `call_soon` (so they leave at the end of the current pass).
2. What is held is bounded: a write of `DIRECT_BYTES` or more, or one that would make the held bytes
   reach `HELD_MAX_BYTES`, sends everything held first and then itself, so the underlying transport's
   own flow control (`pause_writing`) sees every large write at once and memory stays bounded even
   for a sender that never yields. The bound is small (about a dozen small frames) on purpose: the
   process at the other end starts on the first frames while this one still makes the rest. Held to
   the end of a long pass, 64 calls in flight went through the server and the agent one batch after
   the other instead of side by side (real agent, 64 in flight: ~6,100 calls/s with 64 KiB held,
   ~7,200 with 2-4 KiB, ~6,500 with nothing held).
3. Order is kept: held bytes always leave before any later write, `write_eof` or `close`; `abort`
   drops them (an abort loses unsent data anyway). `get_write_buffer_size` counts them.
4. `CoalescingClientConnection.send` of one text message on an open connection, with no fragmented
   message being sent and the socket writable, hands it to the library's sans-I/O protocol and writes
   the frame itself: what the library's `send` does in that case, without its per-message context
   manager (an async generator, entered and left for each message: about half of a send's CPU,
   ~2.3 of ~4.7 µs). Any other case (bytes, fragments, a closing or paused connection, a library
   without `send_in_progress`) is the library's own `send`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.protocol import State

__all__ = ["DIRECT_BYTES", "HELD_MAX_BYTES", "CoalescingClientConnection", "CoalescingTransport"]

DIRECT_BYTES = 16 * 1024
HELD_MAX_BYTES = 3 * 1024


class CoalescingTransport(asyncio.Transport):
    """`transport` with the small writes of one loop pass sent together (see the module's rules)."""

    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__()
        self._transport = transport
        self._loop = asyncio.get_running_loop()  # made in `connection_made`, on the transport's loop
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._busy = False  # rule 1: something was written in this loop pass; a flush is scheduled

    # -- writing --------------------------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        size = len(data)
        if not self._busy:  # rule 1: the first write of a pass goes out at once
            self._busy = True
            self._loop.call_soon(self._flush)
            self._transport.write(data)
            return
        if size >= DIRECT_BYTES or self._held_bytes + size >= HELD_MAX_BYTES:  # rule 2
            self._send_held()
            self._transport.write(data)
            return
        self._held.append(bytes(data))
        self._held_bytes += size

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def _send_held(self) -> None:
        if not self._held:
            return
        data = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        self._held, self._held_bytes = [], 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def _flush(self) -> None:
        self._busy = False
        self._send_held()

    def write_eof(self) -> None:
        self._send_held()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._held_bytes

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    # -- everything else is the transport's own -------------------------------------------------
    def close(self) -> None:
        self._send_held()
        self._transport.close()

    def abort(self) -> None:
        self._held, self._held_bytes = [], 0
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()


class CoalescingClientConnection(ClientConnection):
    """A `websockets` client connection whose writes go through `CoalescingTransport`
    (``connect(..., create_connection=CoalescingClientConnection)``), with rule 4's direct send."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        super().connection_made(CoalescingTransport(transport))

    async def send(self, message: Any, *, text: bool | None = None) -> None:
        # Rule 4: the common case (one text message, connection open, nothing fragmented under way,
        # socket writable) straight to the library's sans-I/O protocol and the socket.
        if (
            type(message) is str
            and text is None
            and self.protocol.state is State.OPEN
            and getattr(self, "send_in_progress", True) is None
            and not self.paused
            and not self.transport.is_closing()
        ):
            self.protocol.send_text(message.encode())
            self.send_data()
            if self.paused:  # this write filled the socket's buffer: wait for room, as the library does
                await self.drain()
            return
        await super().send(message, text=text)
