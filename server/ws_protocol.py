"""The uvicorn WebSocket protocol the server runs: websockets-sansio with read flow control by a queue.

Where it sits: below Starlette, the transport of every WebSocket (`server.tunnel`, `server.rpc`);
`server.cli` hands it to uvicorn as ``ws=``. uvicorn 0.54's websockets-sansio protocol pauses reading
the socket after *every* received message until the app has taken it, and resumes once its queue is
empty: on a link carrying one small request after another that is an epoll unregister and register
(two system calls and their event-loop bookkeeping) per message, about a sixth of the server's time on
a sequential echo. This subclass keeps the same back-pressure, only later:

1. A received message smaller than `SMALL_MESSAGE` bytes is queued without pausing while fewer than
   `QUEUE_HIGH` messages wait for the app; at `QUEUE_HIGH` waiting, reading pauses as before.
2. A larger message pauses reading at once, exactly as uvicorn does (memory stays bounded by one large
   message plus `QUEUE_HIGH` small ones).
3. Reading resumes when the app has drained the queue (uvicorn's own rule, unchanged).
4. Small frames written in one event-loop pass leave in one write (`spec.coalesce`).

It relies on uvicorn internals (``read_paused``, ``queue``, ``frames``), which is why pyproject pins
uvicorn to 0.54.x; if they are missing it behaves exactly like its base class.
"""

from __future__ import annotations

from asyncio import BaseTransport, Transport

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from spec.coalesce import CoalescingTransport

__all__ = ["QUEUE_HIGH", "SMALL_MESSAGE", "QueuedReadWebSocketProtocol"]

QUEUE_HIGH = 8
SMALL_MESSAGE = 64 * 1024


class QueuedReadWebSocketProtocol(WebSocketsSansIOProtocol):
    """websockets-sansio that pauses reading only when several messages wait (see the module's rules),
    writing through `spec.coalesce.CoalescingTransport` (rule 4)."""

    def connection_made(self, transport: BaseTransport) -> None:
        assert isinstance(transport, Transport)
        super().connection_made(CoalescingTransport(transport))

    def send_receive_event_to_app(self) -> None:
        queue = getattr(self, "queue", None)
        frames = getattr(self, "frames", None)
        if (
            queue is None
            or frames is None
            or getattr(self, "read_paused", True)
            or queue.qsize() + 1 >= QUEUE_HIGH
            or sum(len(frame) for frame in frames) >= SMALL_MESSAGE
        ):
            super().send_receive_event_to_app()
            return
        # The base class pauses reading unless it believes reading is already paused: let it believe so
        # for this one small message, then tell the truth again.
        self.read_paused = True
        try:
            super().send_receive_event_to_app()
        finally:
            self.read_paused = False
