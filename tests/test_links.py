"""Unit tier: the in-memory link pair keeps a WebSocket's frame-size and close rules; `pump` drives
two real sessions over it; `spec.link` imports no I/O library."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from spec import errors
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
