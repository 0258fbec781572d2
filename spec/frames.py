"""Frames that carry several messages: the messages sent in one event-loop iteration go out as one frame.

Where it sits: between a link's `spec.session.RpcSession` and its socket, on the links whose handshake
picked a batched subprotocol: the node tunnel and the client RPC with `spec.protocol.BATCHED_SUBPROTOCOL`
(spec/protocol.md §1.2), a replica link with ``cortex.cluster.v2`` (§15). With 64 calls in flight a link
carries a request and an answer per call; one WebSocket frame each is, at each end, a frame parsed and
built, a library send and (on the server) an ASGI message each way. On a batched link a frame carries
one or more JSON-RPC messages separated by ``"\\n"``; each is handled as if it had come in a frame of
its own.

Rules:
1. Only a link whose handshake picked a batched subprotocol joins messages; any other link stays one
   message per frame (a peer of an older release, or of another implementation, at either end).
2. A message is compact JSON, which never holds a raw newline; a message that does (whitespace between
   tokens) is re-encoded compactly before it is joined, so a split always gives back whole messages.
3. A message on a quiet link (nothing written in the last `QUIET_ITERATIONS` loop iterations) is
   written at once: a lone call waits for nothing. Others are queued and the writer task sends them
   in the next iteration, as few frames as the frame size allows: under load one write per iteration,
   however many calls it carries. Messages go out in the order they were sent: nothing is written at
   once while something is queued or being written. A queued `send` returns at once, or waits while
   more than `high_water` characters are queued (a peer that stopped reading holds back its senders,
   never this process's memory).
4. After a failed write the writer is done: every later `send` raises the error, and `on_error` is told
   (the owner of the link then fails the calls in flight on it).
5. `FrameParts` (one at a time) and `split` (all at once, for tests) are the receiving half: a frame of
   a batched link gives its messages in order; an empty part is handed on as it is (the peer core
   answers it as it answers an empty frame).
6. `BatchedLink` makes a batched link a `spec.link.Link` again: `receive` gives one message at a time
   (the parts of one frame before the next frame), `send` is the writer's, and `close` first writes what
   is queued (for at most `CLOSE_FLUSH_S`; not at all while a write is held up by a peer that stopped
   reading, whose link is going anyway), then closes the link. Joined frames stay within
   `JOIN_BYTES` (a message larger than that goes alone, within the receiver's own limit as before), so
   an end offers or answers a batched subprotocol only when it takes frames of that size
   (`takes_joined_frames`). A client offers what `client_subprotocols` gives and wraps its link with
   `client_link`, which makes it a `BatchedLink` when the server picked the batched one.
7. A joined frame never stalls the process that reads it: its messages are taken one at a time from
   the frame itself (no list of them is built: a frame of 16 MiB of newlines is not 16 million
   strings), and after every `YIELD_EVERY` of them the reader lets the event loop run once, as it does
   between frames. So one link's frame of many messages delays the other links by about as much as
   the same messages in frames of their own would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from spec.peer import dumps
from spec.protocol import BATCHED_SUBPROTOCOL, SUBPROTOCOL

if TYPE_CHECKING:
    from spec.link import Frame, Link

__all__ = [
    "JOIN_BYTES",
    "YIELD_EVERY",
    "BatchedLink",
    "FrameParts",
    "FrameWriter",
    "client_link",
    "client_subprotocols",
    "feed_frame",
    "split",
    "takes_joined_frames",
]

logger = logging.getLogger(__name__)

SEPARATOR = "\n"
JOIN_BYTES = 16 * 1024
"""The largest frame `BatchedLink` joins messages into (rule 6)."""
YIELD_EVERY = 64
"""Messages of one frame handed on between two passes of the event loop (rule 7)."""
CLOSE_FLUSH_S = 0.5
"""How long `BatchedLink.close` waits for what is queued to be written (rule 6)."""
DEFAULT_HIGH_WATER = 4 * 1024 * 1024
QUIET_ITERATIONS = 2
"""Loop iterations without a write after which a link is quiet again (rule 3)."""


def takes_joined_frames(max_frame_bytes: int | None) -> bool:
    """Whether an end whose frame limit is `max_frame_bytes` (None: no limit) may speak a batched
    subprotocol: the other end joins messages into frames of up to `JOIN_BYTES` (rule 6)."""
    return max_frame_bytes is None or max_frame_bytes >= JOIN_BYTES


def client_subprotocols(max_frame_bytes: int | None) -> list[str]:
    """What a client of the node tunnel or the client RPC offers: the batched subprotocol first, when
    its frame limit takes joined frames (rule 6), then `SUBPROTOCOL`."""
    return [BATCHED_SUBPROTOCOL, SUBPROTOCOL] if takes_joined_frames(max_frame_bytes) else [SUBPROTOCOL]


def client_link(link: Link, picked: str | None, *, name: str) -> Link:
    """`link` as the client uses it: a `BatchedLink` when the server picked the batched subprotocol."""
    return BatchedLink(link, name=name) if picked == BATCHED_SUBPROTOCOL else link


def split(frame: str | bytes) -> list[str | bytes]:
    """The messages of one frame of a batched link (rule 5)."""
    if isinstance(frame, bytes):
        return list(frame.split(b"\n"))
    return list(frame.split(SEPARATOR))


class FrameParts:
    """The messages of one frame of a batched link, one at a time, without a list of them (rule 7)."""

    __slots__ = ("_frame", "_pos", "_separator")

    def __init__(self, frame: Frame) -> None:
        self._frame = frame
        self._pos = 0
        self._separator: Any = b"\n" if isinstance(frame, bytes) else SEPARATOR

    @property
    def more(self) -> bool:
        """Messages are left to take."""
        return self._pos >= 0

    def next(self) -> Frame | None:
        """The next message, or None after the last."""
        pos, frame = self._pos, self._frame
        if pos < 0:
            return None
        end = frame.find(self._separator, pos)
        if end < 0:
            self._pos = -1
            return frame if pos == 0 else frame[pos:]
        self._pos = end + 1
        return frame[pos:end]


async def feed_frame(frame: Frame, feed: Callable[[Frame], Awaitable[object]]) -> None:
    """Hand every message of a batched link's `frame` to `feed`, letting the loop run (rule 7)."""
    parts = FrameParts(frame)
    count = 0
    while (text := parts.next()) is not None:
        await feed(text)
        count += 1
        if count % YIELD_EVERY == 0:
            await asyncio.sleep(0)


def _compact(text: str) -> str:
    """`text` without raw newlines (rule 2); a text that is no JSON goes as one JSON string."""
    try:
        return dumps(json.loads(text))
    except ValueError:
        return json.dumps(text)


class FrameWriter:
    """Joins the messages of one link into frames and writes them from one task (the module's rules)."""

    def __init__(
        self,
        write: Callable[[str], Awaitable[None]],
        max_frame_bytes: int,
        *,
        name: str = "frames",
        high_water: int = DEFAULT_HIGH_WATER,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._write = write
        self._on_error = on_error
        # Characters per frame: a character is at most 4 bytes in UTF-8, so a frame stays under the limit
        # without encoding anything to measure it.
        self._frame_chars = max(1, max_frame_bytes // 4)
        self._high_water = high_water
        self._name = name
        self._queue: list[str] = []
        self._queued = 0  # characters in _queue
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._idle = asyncio.Event()  # nothing queued, nothing being written
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._busy = False  # a write is under way
        self._recent = 0  # loop iterations to go before a message may be written at once again
        self._error: BaseException | None = None
        self.frames = 0
        """Frames written so far (for tests and the bench)."""
        self.messages = 0
        """Messages written so far."""

    async def send(self, text: str) -> None:
        if self._error is not None:
            raise self._error
        if SEPARATOR in text:
            text = _compact(text)
        if not self._queue and not self._busy and not self._recent:
            await self._write_now(text)
            return
        self._queue.append(text)
        self._queued += len(text)
        self._idle.clear()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self._name)
        self._wake.set()
        while self._queued > self._high_water and self._error is None:
            self._room.clear()
            await self._room.wait()
        if self._error is not None:
            raise self._error

    async def _write_now(self, text: str) -> None:
        """A message on a quiet link goes out at once (rule 3): a lone call waits for no one."""
        self._wrote()
        self._busy = True
        try:
            await self._write(text)
            self.frames += 1
            self.messages += 1
        except Exception as exc:
            self._failed(exc)
            raise
        finally:
            self._busy = False
            if self._queue:
                self._wake.set()
            else:
                self._idle.set()

    def _wrote(self) -> None:
        if not self._recent:
            loop = asyncio.get_running_loop()
            loop.call_soon(self._tick, loop)  # the loop travels along: each lookup is a getpid on 3.11
        self._recent = QUIET_ITERATIONS

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._recent -= 1
        if self._recent > 0:
            loop.call_soon(self._tick, loop)

    def _failed(self, exc: BaseException) -> None:
        logger.debug("%s: write failed: %r", self._name, exc)
        if self._error is None:
            self._error = exc
            self._queue.clear()
            self._queued = 0
            self._room.set()
            self._idle.set()
            if self._on_error is not None:
                self._on_error(exc)

    def _frames(self, batch: list[str]) -> list[str]:
        frames: list[str] = []
        start = 0
        size = 0
        for i, text in enumerate(batch):
            if i > start and size + len(text) + 1 > self._frame_chars:
                frames.append(SEPARATOR.join(batch[start:i]))
                start, size = i, 0
            size += len(text) + 1
        frames.append(SEPARATOR.join(batch[start:]))  # one message: join gives it back as it is
        return frames

    async def _run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if not self._queue or self._busy:
                    continue  # a write at once is under way: it wakes us when it is done
                batch, self._queue, self._queued = self._queue, [], 0
                self._room.set()
                self._busy = True
                self._wrote()
                try:
                    for frame in self._frames(batch):
                        await self._write(frame)
                        self.frames += 1
                finally:
                    self._busy = False
                self.messages += len(batch)
                if not self._queue:
                    self._idle.set()
        except asyncio.CancelledError:
            self._error = self._error or ConnectionError("the link is closed")
            self._room.set()
            self._idle.set()
            raise
        except Exception as exc:
            self._failed(exc)

    @property
    def writing(self) -> bool:
        """A write is under way (held up, if it lasts, by a peer that does not read)."""
        return self._busy

    async def flush(self, timeout: float) -> None:
        """Wait (at most `timeout` seconds) until everything queued has been written or has failed."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()

    async def close(self) -> None:
        """Stop writing (what is still queued is dropped: the link is going away)."""
        if self._error is None:
            self._error = ConnectionError("the link is closed")
        self._room.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


class BatchedLink:
    """A link whose handshake picked a batched subprotocol, as a plain `spec.link.Link` (rule 6)."""

    def __init__(self, link: Link, *, name: str = "frames", frame_bytes: int = JOIN_BYTES) -> None:
        self.link = link
        self.writer = FrameWriter(link.send, frame_bytes, name=name)
        self.send: Callable[[str], Awaitable[None]] = self.writer.send
        self._parts: FrameParts | None = None  # the rest of the last frame
        self._taken = 0  # messages taken from it so far

    @property
    def close_code(self) -> int | None:
        return self.link.close_code

    @property
    def close_reason(self) -> str:
        return self.link.close_reason

    def more_waiting(self) -> bool:
        """Messages of the last frame are still to be taken: `receive` gives the next without waiting."""
        parts = self._parts
        return parts is not None and parts.more

    async def receive(self) -> Frame | None:
        parts = self._parts
        if parts is not None:
            text = parts.next()
            if text is not None:
                self._taken += 1
                if self._taken % YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # rule 7: the other links' turn
                return text
            self._parts = None
        frame = await self.link.receive()
        if frame is None:
            return None
        if (b"\n" not in frame) if isinstance(frame, bytes) else (SEPARATOR not in frame):
            return frame
        self._parts = parts = FrameParts(frame)
        self._taken = 1
        return parts.next()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if not self.writer.writing:  # rule 6: what is queued goes first, unless the peer stopped reading
            await self.writer.flush(CLOSE_FLUSH_S)
        await self.writer.close()
        await self.link.close(code, reason)
