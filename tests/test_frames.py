"""`spec.frames`: the messages of one loop iteration share a frame, in order, within the limit.

Tier (a): the writer writes into a sink that records each frame (the place of the socket); the frames it
produces are split back as the other end splits them. The links over real sockets are in
tests/test_replica_link_frames.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spec.frames import (
    CLOSE_FLUSH_S,
    QUIET_ITERATIONS,
    YIELD_EVERY,
    BatchedLink,
    FrameParts,
    FrameWriter,
    feed_frame,
    split,
)
from spec.link import memory_link_pair
from spec.peer import dumps


class Sink:
    """Records written frames; `hold` makes the next writes wait until `release` (a slow socket)."""

    def __init__(self) -> None:
        self.frames: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: BaseException | None = None
        self.written = asyncio.Event()

    async def write(self, frame: str) -> None:
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        self.frames.append(frame)
        self.written.set()

    def messages(self) -> list[str]:
        return [str(m) for frame in self.frames for m in split(frame)]


@contextlib.asynccontextmanager
async def _writing(sink: Sink, max_frame_bytes: int, **options: Any) -> AsyncIterator[FrameWriter]:
    """A writer into `sink`, closed at the end of the block."""
    writer = FrameWriter(sink.write, max_frame_bytes, **options)
    try:
        yield writer
    finally:
        await writer.close()


def _message(i: int, text: str = "x") -> str:
    return dumps({"jsonrpc": "2.0", "id": i, "method": "node/request", "params": {"text": text}})


async def _settle(writer: FrameWriter, sink: Sink, count: int) -> None:
    async with asyncio.timeout(5):
        while len(sink.messages()) < count:
            sink.written.clear()
            await sink.written.wait()


async def test_messages_of_one_iteration_share_a_frame() -> None:
    sink = Sink()
    async with _writing(sink, 1 << 20) as writer:
        sent = [_message(i) for i in range(50)]
        await asyncio.gather(*(writer.send(text) for text in sent))
        await _settle(writer, sink, 50)
        assert sink.messages() == sent  # all of them, in order
        assert len(sink.frames) <= 2  # the first at once, the others together (one message each: 50)
        assert writer.messages == 50 and writer.frames == len(sink.frames)


async def test_a_lone_message_is_written_before_send_returns() -> None:
    sink = Sink()
    async with _writing(sink, 1 << 20) as writer:
        await writer.send(_message(1))
        assert sink.frames == [_message(1)]  # no wait for a later iteration: a lone call pays nothing
        for _ in range(QUIET_ITERATIONS):
            await asyncio.sleep(0)  # the link is quiet again
        await writer.send(_message(2))
        assert sink.frames == [_message(1), _message(2)]


async def test_a_busy_link_writes_about_every_other_iteration() -> None:
    sink = Sink()
    async with _writing(sink, 1 << 20) as writer:
        sent = []
        sends = []
        for i in range(20):  # 20 iterations one after another, 3 messages each (calls in flight)
            batch = [_message(3 * i + k) for k in range(3)]
            sent += batch
            sends += [asyncio.ensure_future(writer.send(text)) for text in batch]
            await asyncio.sleep(0)
        async with asyncio.timeout(5):
            await asyncio.gather(*sends)
        await _settle(writer, sink, 60)
        assert sink.messages() == sent
        assert len(sink.frames) <= 23  # one write per iteration; one at once and one batched: 40


async def test_order_is_kept_behind_a_slow_write() -> None:
    sink = Sink()
    async with _writing(sink, 1 << 20) as writer:
        sink.gate.clear()  # the socket is full: the first write waits
        first = asyncio.ensure_future(writer.send(_message(0)))
        for _ in range(3):
            await asyncio.sleep(0)  # that write is under way and its loop iteration is over
        later = [_message(i) for i in range(1, 20)]
        async with asyncio.timeout(5):
            for i, text in enumerate(later):
                await writer.send(text)  # queued behind it (never written past it): returns at once
                if i % 5 == 0:
                    await asyncio.sleep(0)  # new iterations while the first write still waits
        assert sink.frames == []
        sink.gate.set()
        await first
        await _settle(writer, sink, 20)
        assert sink.messages() == [_message(0), *later]


async def test_frames_stay_under_the_frame_limit() -> None:
    sink = Sink()
    limit = 4096
    async with _writing(sink, limit) as writer:
        sent = [_message(i, "y" * 300) for i in range(40)]
        await asyncio.gather(*(writer.send(text) for text in sent))
        await _settle(writer, sink, 40)
        assert sink.messages() == sent
        assert all(len(frame.encode()) <= limit for frame in sink.frames)
        assert 2 < len(sink.frames) < 40


async def test_a_message_with_a_raw_newline_still_splits_whole() -> None:
    sink = Sink()
    async with _writing(sink, 1 << 20) as writer:
        pretty = json.dumps({"jsonrpc": "2.0", "id": 7, "result": {"text": "a\nb"}}, indent=2)
        assert "\n" in pretty
        await asyncio.gather(writer.send(_message(1)), writer.send(pretty), writer.send(_message(2)))
        await _settle(writer, sink, 3)
        got = sink.messages()
        assert len(got) == 3
        assert json.loads(got[1]) == json.loads(pretty)
        assert got[0] == _message(1) and got[2] == _message(2)


async def test_senders_wait_while_a_stalled_peer_holds_too_much() -> None:
    sink = Sink()
    async with _writing(sink, 1 << 20, high_water=2000) as writer:
        sink.gate.clear()
        first = asyncio.ensure_future(writer.send(_message(0)))  # written at once, then stuck
        await asyncio.sleep(0)
        blocked = asyncio.ensure_future(writer.send(_message(1, "z" * 3000)))  # over the high water
        await asyncio.sleep(0.05)
        assert not blocked.done()  # held back: the queue does not grow without bound
        sink.gate.set()
        async with asyncio.timeout(5):
            await first
            await blocked
        await _settle(writer, sink, 2)


async def test_after_a_failed_write_sends_raise_and_the_owner_hears() -> None:
    sink = Sink()
    failures: list[BaseException] = []
    async with _writing(sink, 1 << 20, on_error=failures.append) as writer:
        sink.fail = ConnectionResetError("gone")
        with pytest.raises(ConnectionResetError):
            await writer.send(_message(1))
        assert len(failures) == 1
        with pytest.raises(ConnectionResetError):
            await writer.send(_message(2))


async def test_a_closed_writer_refuses_to_send() -> None:
    writer = FrameWriter(Sink().write, 1 << 20)
    await writer.close()
    with pytest.raises(ConnectionError):
        await writer.send(_message(1))


def test_split_gives_back_the_messages() -> None:
    assert split("a") == ["a"]
    assert split("a\nb\n") == ["a", "b", ""]
    assert split(b"a\nb") == [b"a", b"b"]


async def test_a_batched_link_gives_one_message_at_a_time_in_order() -> None:
    near, far = memory_link_pair()
    link = BatchedLink(near)
    await far.send("a\nb\nc")
    await far.send("d")
    async with asyncio.timeout(5):
        assert [await link.receive() for _ in range(4)] == ["a", "b", "c", "d"]
        await far.close()
        assert await link.receive() is None


async def test_a_batched_link_joins_what_one_iteration_sends() -> None:
    near, far = memory_link_pair()
    link = BatchedLink(near)
    sent = [_message(i) for i in range(20)]
    await asyncio.gather(*(link.send(text) for text in sent))
    got: list[str] = []
    async with asyncio.timeout(5):
        while len(got) < 20:
            frame = await far.receive()
            assert isinstance(frame, str)
            got += frame.split("\n")
    assert got == sent
    assert link.writer.frames == 2  # the first at once, the rest of the iteration in one frame
    await link.close()


async def test_closing_a_batched_link_writes_what_is_queued_first() -> None:
    near, far = memory_link_pair()
    link = BatchedLink(near)
    await link.send(_message(1))  # at once
    await link.send(_message(2))  # queued behind it, for the writer's next iteration
    await link.close(1000, "bye")
    frames = []
    while (frame := await far.receive()) is not None:
        frames.append(frame)
    assert frames == [_message(1), _message(2)]
    assert far.close_code == 1000


@given(
    st.lists(
        st.text(alphabet=st.characters(blacklist_characters="\n", blacklist_categories=("Cs",)), max_size=8),
        min_size=1,
        max_size=12,
    )
)
def test_frame_parts_are_what_split_gives(messages: list[str]) -> None:
    frame = "\n".join(messages)
    for value in (frame, frame.encode("utf-8")):
        parts = FrameParts(value)
        taken = []
        while (part := parts.next()) is not None:
            taken.append(part)
        assert taken == split(value)


class _LoopTurns:
    """Counts the turns another task gets while the block runs (each turn is one loop pass)."""

    def __init__(self) -> None:
        self.turns = 0
        self._stop = asyncio.Event()
        self._ticker: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while not self._stop.is_set():
            self.turns += 1
            await asyncio.sleep(0)

    async def __aenter__(self) -> _LoopTurns:
        self._ticker = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._ticker is not None
        await self._ticker


async def test_a_frame_of_many_messages_lets_the_loop_run_between_them() -> None:
    # Rule 7: 10,000 empty messages in one 10 kB frame; another task must get turns while they are read.
    near, far = memory_link_pair()
    link = BatchedLink(near)
    async with _LoopTurns() as loop_turns:
        await far.send("\n" * 9_999)
        async with asyncio.timeout(10):
            for _ in range(10_000):
                assert await link.receive() == ""
    assert loop_turns.turns >= 10_000 // YIELD_EVERY - 1


async def test_feed_frame_lets_the_loop_run_between_messages() -> None:
    fed: list[str | bytes] = []

    async def feed(text: str | bytes) -> None:
        fed.append(text)

    async with _LoopTurns() as loop_turns:
        await feed_frame("a\n" * 1_000 + "b", feed)
    assert fed == ["a"] * 1_000 + ["b"]
    assert loop_turns.turns >= 1_000 // YIELD_EVERY - 1


class _StalledLink:
    """A link whose peer stopped reading: a send never completes (the place of a full socket)."""

    close_code: int | None = None
    close_reason = ""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.never = asyncio.Event()

    async def send(self, text: str) -> None:
        self.sent.append(text)
        await self.never.wait()

    async def receive(self) -> None:
        await self.never.wait()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.close_code, self.close_reason = code, reason


async def test_closing_a_batched_link_whose_peer_stopped_reading_does_not_wait_for_it() -> None:
    inner = _StalledLink()
    link = BatchedLink(inner)  # type: ignore[arg-type]
    first = asyncio.ensure_future(link.send(_message(1)))  # at once, and held up by the peer
    await asyncio.sleep(0)
    await link.send(_message(2))  # queued behind it
    async with asyncio.timeout(CLOSE_FLUSH_S / 2):  # well before the flush bound: no wait at all
        await link.close(4408, "heartbeat missed")
    assert inner.close_code == 4408 and inner.sent == [_message(1)]
    first.cancel()
