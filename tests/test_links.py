"""Unit tier: the in-memory link pair keeps a WebSocket's frame-size and close rules; `pump` drives
two real sessions over it; `spec.link` imports no I/O library."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from spec import errors
from spec.frames import SEPARATOR, BatchedLink
from spec.link import MESSAGE_TOO_BIG, LinkClosed, memory_link_pair, pump
from spec.session import CallContext, RpcSession, make_methods
from tests.support.procs import REPO

pytestmark = pytest.mark.unit

BOUND = 5.0


async def test_frames_arrive_in_order_then_the_close() -> None:
    a, b = memory_link_pair()
    for text in ("one", "two", "drei ü"):
        await a.send(text)
    await a.close(4409, "replaced")
    async with asyncio.timeout(BOUND):
        got = [await b.receive() for _ in range(3)]
        assert got == ["one", "two", "drei ü"]
        assert await b.receive() is None
        assert await b.receive() is None  # stays closed
        assert await a.receive() is None
    assert (a.close_code, a.close_reason, b.close_code, b.close_reason) == (
        4409,
        "replaced",
        4409,
        "replaced",
    )
    for end in (a, b):
        with pytest.raises(LinkClosed):
            await end.send("late")


async def test_a_frame_over_the_receivers_limit_closes_the_link_with_1009() -> None:
    a, b = memory_link_pair(max_frame_bytes=8)
    await a.send("12345678")  # exactly the limit passes
    await a.send("ééééé")  # 10 UTF-8 bytes: over it
    async with asyncio.timeout(BOUND):
        assert await b.receive() == "12345678"
        assert await b.receive() is None
    assert a.close_code == b.close_code == MESSAGE_TOO_BIG


async def test_two_sessions_over_a_pair_with_pump() -> None:
    a_end, b_end = memory_link_pair()

    async def add(ctx: CallContext, x: int, y: int) -> int:
        await ctx.progress(1, 1, "adding")
        return x + y

    caller = RpcSession(a_end.send, {}, name="caller")
    callee = RpcSession(b_end.send, make_methods({"add": add}), name="callee")
    pumps = [asyncio.create_task(pump(a_end, caller)), asyncio.create_task(pump(b_end, callee))]
    seen: list[str] = []
    async with asyncio.timeout(BOUND):
        assert (
            await caller.request("add", {"x": 2, "y": 3}, on_progress=lambda p: seen.append(p["message"]))
            == 5
        )
        await b_end.send(json.dumps({"jsonrpc": "2.0", "id": 9, "method": "nope"}))  # answered, not fatal
        pending = asyncio.create_task(caller.request("add", {"x": 1}))  # -32602 from jsonrpcserver
        with pytest.raises(errors.RpcError) as info:
            await pending
        assert info.value.code == errors.INVALID_PARAMS
        await a_end.close()
        await asyncio.gather(*pumps)  # both loops end at the close
    assert seen == ["adding"]


def test_spec_link_imports_no_io_library() -> None:
    code = "import json, sys; import spec.link; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True, timeout=60
    )
    loaded = {name.split(".")[0] for name in json.loads(done.stdout)}
    assert loaded & {"websockets", "starlette", "uvicorn", "httpx2", "httpx", "aiohttp", "anyio"} == set()


async def test_a_cancelled_request_frees_its_slot() -> None:
    # The incoming table is the core's; the session must tell it when a handler task ends without an
    # answer (cancelled), or a client could fill `max_incoming` with requests it then cancels.
    a_end, b_end = memory_link_pair()
    started, stopped = asyncio.Event(), asyncio.Event()

    async def work(ctx: CallContext, n: int) -> int:
        if n == 1:
            started.set()
            try:
                await asyncio.Event().wait()
            finally:
                stopped.set()
        return n

    callee = RpcSession(b_end.send, make_methods({"work": work}), name="callee", max_incoming=1)
    pumps = [asyncio.create_task(pump(b_end, callee))]
    cancel = {
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": {"requestId": 1, "reason": "x"},
    }
    async with asyncio.timeout(BOUND):
        await a_end.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "work", "params": {"n": 1}}))
        await started.wait()
        await a_end.send(json.dumps(cancel))
        await stopped.wait()
        await asyncio.sleep(0)  # one loop turn: the ended task's done callbacks run
        await a_end.send(json.dumps({"jsonrpc": "2.0", "id": 2, "method": "work", "params": {"n": 2}}))
        answer = json.loads(str(await a_end.receive()))
        await a_end.close()
        await asyncio.gather(*pumps)
    assert answer == {"jsonrpc": "2.0", "result": 2, "id": 2}  # no answer to 1: it was cancelled


async def test_a_lone_request_starts_in_the_loop_pass_that_reads_it() -> None:
    # pump's hand-over (spec.session rule 6): a request read while none runs is served by the reader
    # in the pass that read it; beside a running request, it gets a task of its own (one pass later).
    # The passes are counted by a task started as the request is sent: the reader was woken first,
    # so it runs before the counter in the next pass (callbacks run in the order they were scheduled).
    a_end, b_end = memory_link_pair()
    turns = 0
    started: dict[int, int] = {}
    release, began = asyncio.Event(), {1: asyncio.Event(), 2: asyncio.Event()}

    async def work(ctx: CallContext, n: int) -> int:
        started[n] = turns
        began[n].set()
        if n == 1:
            await release.wait()
        return n

    async def count() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    async def send_and_count(n: int) -> None:
        nonlocal turns
        await a_end.send(json.dumps({"jsonrpc": "2.0", "id": n, "method": "work", "params": {"n": n}}))
        turns = 0
        counter = asyncio.create_task(count())
        await began[n].wait()
        counter.cancel()

    callee = RpcSession(b_end.send, make_methods({"work": work}), name="callee")
    pumped = asyncio.create_task(pump(b_end, callee))
    async with asyncio.timeout(BOUND):
        await asyncio.sleep(0)
        await send_and_count(1)  # nothing runs: handed over
        await send_and_count(2)  # 1 still runs: a task of its own
        release.set()
        answers = sorted([json.loads(str(await a_end.receive()))["result"] for _ in range(2)])
        await a_end.close()
        await pumped
    assert answers == [1, 2]
    assert started == {1: 0, 2: 1}


async def test_a_handed_over_request_that_times_out_or_is_cancelled_leaves_the_link_serving() -> None:
    # The reader that serves a request is that request's handler: its cancellation (by the caller,
    # or by an asyncio.timeout inside the handler) must end that request only, never the reading.
    a_end, b_end = memory_link_pair()
    started = asyncio.Event()

    async def work(ctx: CallContext, mode: str) -> str:
        if mode == "timeout":
            async with asyncio.timeout(0.01):
                await asyncio.Event().wait()
        if mode == "wait":
            started.set()
            await asyncio.Event().wait()
        return mode

    def request(n: int, mode: str) -> str:
        return json.dumps({"jsonrpc": "2.0", "id": n, "method": "work", "params": {"mode": mode}})

    callee = RpcSession(b_end.send, make_methods({"work": work}), name="callee")
    pumped = asyncio.create_task(pump(b_end, callee))
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 2}}
    async with asyncio.timeout(BOUND):
        await a_end.send(request(1, "timeout"))
        timed_out = json.loads(str(await a_end.receive()))
        await a_end.send(request(2, "wait"))
        await started.wait()
        await a_end.send(json.dumps(cancel))
        await a_end.send(request(3, "ok"))
        last = json.loads(str(await a_end.receive()))
        assert not pumped.done()
        await a_end.close()
        await pumped
    assert timed_out["id"] == 1 and "error" in timed_out
    assert last == {"jsonrpc": "2.0", "result": "ok", "id": 3}  # no answer to 2: it was cancelled


async def test_cancelling_the_pump_stops_its_reader() -> None:
    a_end, b_end = memory_link_pair()
    callee = RpcSession(b_end.send, make_methods({}), name="callee")
    pumped = asyncio.create_task(pump(b_end, callee))
    await asyncio.sleep(0)
    pumped.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pumped
    await asyncio.sleep(0)
    readers = [t for t in asyncio.all_tasks() if "_Reading" in repr(t.get_coro())]
    assert readers == []
    await a_end.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
    await asyncio.sleep(0)
    assert b_end._inbox.qsize() == 1  # nobody reads any more


async def test_an_error_of_the_links_receive_is_raised_by_pump() -> None:
    class BrokenLink(type(memory_link_pair()[0])):  # type: ignore[misc]
        async def receive(self) -> str | bytes | None:
            raise ConnectionResetError("the library's error for a broken link")

    link = BrokenLink("broken", 1024)
    with pytest.raises(ConnectionResetError):
        async with asyncio.timeout(BOUND):
            await pump(link, RpcSession(link.send, make_methods({}), name="callee"))


async def test_requests_read_together_are_not_alone_and_a_lone_one_is() -> None:
    """A batched link's frame of several requests: none is handed over, each gets its task, and
    `CallContext.alone` is False for all of them (the agent then batches their audit records);
    a frame of one request, with nothing running, is handed over as alone."""
    a_end, b_end = memory_link_pair()
    link = BatchedLink(b_end)
    seen: dict[int, bool] = {}
    done = asyncio.Event()

    async def work(ctx: CallContext, n: int) -> int:
        seen[n] = ctx.alone
        if len(seen) == 4:
            done.set()
        return n

    callee = RpcSession(link.send, make_methods({"work": work}), name="callee")
    pumped = asyncio.create_task(pump(link, callee))

    def request(n: int) -> str:
        return json.dumps({"jsonrpc": "2.0", "id": n, "method": "work", "params": {"n": n}})

    async with asyncio.timeout(BOUND):
        await a_end.send(SEPARATOR.join(request(n) for n in (1, 2, 3)))
        while len(seen) < 3:  # the answers come back one by one (or joined): read until all three
            await a_end.receive()
        await a_end.send(request(4))
        await done.wait()
        assert seen == {1: False, 2: False, 3: False, 4: True}
        await a_end.close()
        await pumped
