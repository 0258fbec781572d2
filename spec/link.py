"""Links: the one read loop every Cortex endpoint runs, the `websockets` adapter and an in-memory pair.

Layering: an I/O library's connection → a `Link` (this module, or `server.ws_link` for Starlette) →
`spec.session.RpcSession` → `spec.peer.Peer`. `pump` is the loop (receive → core → send → dispatch)
that replaces the hand-written read loops of the tunnel, the client RPC, the agent and the SDK; each
side wires `RpcSession(link.send, ...)` and runs `pump(link, session)`.

This module imports no I/O library (the layering test checks it): `WebsocketsLink` is written against
the asyncio connection API of `websockets` (`recv`, `send`, `close`, `close_code`, `close_reason`) and
is handed the library's clean-close exception class by its caller.

Rules of a link:
1. `receive()` returns one frame (text as `str`, binary as `bytes`) or None once the link is closed;
   frames that arrived before the close are delivered first. A link that broke may instead raise its
   library's error (the `websockets` adapter lets `ConnectionClosedError` through, as `async for` does).
2. `send(text)` sends one frame; on a closed link it raises.
3. `close(code, reason)` closes both directions; afterwards both ends report `close_code` and
   `close_reason` (the code is None while the link is open).
4. The in-memory pair keeps the frame-size rule of a WebSocket: a frame larger than the receiver's
   `max_frame_bytes` (UTF-8 bytes for text) is not delivered and closes the link with 1009, as
   `websockets` and uvicorn do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from spec.messages import IncomingRequest
from spec.session import RpcSession

__all__ = ["Frame", "Link", "LinkClosed", "MemoryLink", "WebsocketsLink", "memory_link_pair", "pump"]

Frame = str | bytes
MESSAGE_TOO_BIG = 1009


class LinkClosed(ConnectionError):
    """Sending on a link that is closed (rule 2)."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"link closed ({code} {reason})".rstrip())
        self.code = code
        self.reason = reason


class Link(Protocol):
    """One open connection carrying JSON-RPC frames; see the module's rules."""

    @property
    def close_code(self) -> int | None: ...

    @property
    def close_reason(self) -> str: ...

    def send(self, text: str) -> Awaitable[None]: ...

    async def receive(self) -> Frame | None: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


async def pump(link: Link, session: RpcSession, *, on_frame: Callable[[], None] | None = None) -> None:
    """Feed every received frame to `session` until the link closes (rule 1); `on_frame` runs first
    for each frame. The caller closes the session with the reason it knows.

    The reading is done by reader tasks, one at a time, while the calling task waits for the end. A
    reader that receives a request while none is running and no other message waits to be taken (a
    batched link's `more_waiting`), hands it over (`RpcSession.feed`'s `hand_over`, session rule 6):
    it starts the next reader and serves that request itself, in the same loop pass, as a lone call
    (`CallContext.alone`). A call one after another, the common case of a script, skips the pass a
    task of its own would wait for. Otherwise each request gets its task, so the messages of one
    frame are all read in one pass and their calls run side by side (the agent then commits their
    audit records as one batch). The calling task never serves a request: cancelling one cannot end the
    pump. Cancelling the pump cancels the reader; a reader's error (the library's, rule 1 of a link)
    is raised here."""
    reading = _Reading(link, session, on_frame)
    reading.reader = asyncio.get_running_loop().create_task(reading.read())
    try:
        await reading.ended
    finally:
        if reading.reader is not None:
            reading.reader.cancel()


class _Reading:
    """The state `pump`'s reader tasks share: the current reader and the end of the link."""

    def __init__(self, link: Link, session: RpcSession, on_frame: Callable[[], None] | None) -> None:
        self.link = link
        self.session = session
        self.on_frame = on_frame
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.reader: asyncio.Task[None] | None = None
        self.more_waiting: Callable[[], bool] | None = getattr(link, "more_waiting", None)

    async def read(self) -> None:
        request = await self._until_request()
        if request is not None:  # the next reader runs already; this task is the request's handler now
            await self.session.serve_here(request)

    async def _until_request(self) -> IncomingRequest | None:
        receive, feed, on_frame, ended = self.link.receive, self.session.feed, self.on_frame, self.ended
        more_waiting = self.more_waiting
        try:
            while (frame := await receive()) is not None:
                if on_frame is not None:
                    on_frame()
                request = await feed(frame, hand_over=more_waiting is None or not more_waiting())
                if request is not None:
                    self.reader = asyncio.get_running_loop().create_task(self.read())
                    return request
        except Exception as exc:  # a cancellation (the pump cancels its reader) goes through
            if not ended.done():
                ended.set_exception(exc)
            return None
        if not ended.done():
            ended.set_result(None)
        return None


class WebsocketsLink:
    """A `websockets` asyncio connection (client or server side) as a `Link`."""

    def __init__(self, connection: Any, clean_close: type[BaseException]) -> None:
        self.connection = connection
        self._clean_close = clean_close
        # The connection's own coroutine: no wrapper frame per sent message (the agent's hot path).
        self.send: Callable[[str], Awaitable[None]] = connection.send

    @property
    def close_code(self) -> int | None:
        code = self.connection.close_code
        return int(code) if code is not None else None

    @property
    def close_reason(self) -> str:
        return str(self.connection.close_reason or "")

    async def receive(self) -> Frame | None:
        try:
            frame: Frame = await self.connection.recv()
        except self._clean_close:
            return None
        return frame

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.connection.close(code, reason)


def _frame_bytes(frame: Frame) -> int:
    if isinstance(frame, bytes):
        return len(frame)
    return len(frame) if frame.isascii() else len(frame.encode("utf-8"))


class MemoryLink:
    """One end of an in-memory link (`memory_link_pair`); frames pass through an asyncio queue."""

    def __init__(self, name: str, max_frame_bytes: int) -> None:
        self.name = name
        self.max_frame_bytes = max_frame_bytes
        self._inbox: asyncio.Queue[Frame | None] = asyncio.Queue()
        self._other: MemoryLink = self
        self._close_code: int | None = None
        self._close_reason = ""
        self._closed = asyncio.Event()

    @property
    def close_code(self) -> int | None:
        return self._close_code

    @property
    def close_reason(self) -> str:
        return self._close_reason

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def send(self, text: Frame) -> None:
        if self._close_code is not None:
            raise LinkClosed(self._close_code, self._close_reason)
        if _frame_bytes(text) > self._other.max_frame_bytes:
            self._close_both(MESSAGE_TOO_BIG, "message too big")  # rule 4: the receiver fails the link
            return
        self._other._inbox.put_nowait(text)

    async def receive(self) -> Frame | None:
        frame = await self._inbox.get()
        if frame is None:
            self._inbox.put_nowait(None)  # every later receive sees the close too
        return frame

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self._close_both(code, reason)

    def _close_both(self, code: int, reason: str) -> None:
        for end in (self, self._other):
            if end._close_code is None:
                end._close_code, end._close_reason = code, reason
                end._inbox.put_nowait(None)
                end._closed.set()


def memory_link_pair(
    max_frame_bytes: int = 16 * 1024 * 1024, *, names: tuple[str, str] = ("a", "b")
) -> tuple[MemoryLink, MemoryLink]:
    """Two connected ends: what one sends, the other receives (needs a running event loop)."""
    a, b = MemoryLink(names[0], max_frame_bytes), MemoryLink(names[1], max_frame_bytes)
    a._other, b._other = b, a
    return a, b
