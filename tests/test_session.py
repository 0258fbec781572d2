"""Tier (a): two peer cores / sessions wired text-to-text, no sockets."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from spec import errors
from spec.peer import Peer
from spec.session import CallContext, RpcSession, make_methods


def _pair(
    a_handlers: dict[str, Any], b_handlers: dict[str, Any], notes: list[Any] | None = None
) -> tuple[RpcSession, RpcSession]:
    a: RpcSession
    b: RpcSession

    async def to_b(text: str) -> None:
        asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(b.feed(text)))

    async def to_a(text: str) -> None:
        asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(a.feed(text)))

    def on_note(method: str, params: dict[str, Any]) -> None:
        if notes is not None:
            notes.append((method, params))

    a = RpcSession(to_b, make_methods(a_handlers), name="a")
    b = RpcSession(to_a, make_methods(b_handlers), name="b", on_notification=on_note)
    return a, b


async def test_both_sides_call_each_other_at_once() -> None:
    async def hello(ctx: CallContext, who: str) -> str:
        return f"hello {who} from {ctx.session.name}"

    a, b = _pair({"hello": hello}, {"hello": hello})
    async with asyncio.timeout(5):
        r1, r2 = await asyncio.gather(a.request("hello", {"who": "x"}), b.request("hello", {"who": "y"}))
    assert r1 == "hello x from b"
    assert r2 == "hello y from a"


async def test_handler_calls_back_across_the_link_without_deadlock() -> None:
    async def outer(ctx: CallContext) -> int:
        inner = await ctx.session.request("inner")
        return int(inner) + 1

    async def inner(ctx: CallContext) -> int:
        return 41

    a, _ = _pair({"inner": inner}, {"outer": outer})
    async with asyncio.timeout(5):
        assert await a.request("outer") == 42


async def test_errors_cross_the_wire_with_their_codes() -> None:
    async def boom(ctx: CallContext) -> None:
        raise RuntimeError("secret detail")

    async def refuse(ctx: CallContext) -> None:
        raise errors.RpcError(errors.NODE_NOT_FOUND, "no such node")

    a, _ = _pair({}, {"boom": boom, "refuse": refuse})
    async with asyncio.timeout(5):
        with pytest.raises(errors.RpcError) as info:
            await a.request("boom")
        assert info.value.code == errors.INTERNAL_ERROR
        assert "secret" not in info.value.message
        with pytest.raises(errors.RpcError) as info:
            await a.request("refuse")
        assert info.value.code == errors.NODE_NOT_FOUND
        with pytest.raises(errors.RpcError) as info:
            await a.request("nope")
        assert info.value.code == errors.METHOD_NOT_FOUND
        with pytest.raises(errors.RpcError) as info:
            await a.request("refuse", {"unexpected": 1})
        assert info.value.code == errors.INVALID_PARAMS


async def test_progress_in_order_and_cancel_stops_the_handler() -> None:
    started = asyncio.Event()
    stopped = asyncio.Event()

    async def slow(ctx: CallContext) -> None:
        for i in range(3):
            await ctx.progress(i, 3, f"step {i}")
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    a, _ = _pair({}, {"slow": slow})
    seen: list[float] = []
    task = asyncio.create_task(a.request("slow", on_progress=lambda p: seen.append(p["progress"])))
    async with asyncio.timeout(5):
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await stopped.wait()
    assert seen == [0, 1, 2]


async def test_close_fails_pending_requests() -> None:
    async def hang(ctx: CallContext) -> None:
        await asyncio.Event().wait()

    a, _ = _pair({}, {"hang": hang})
    task = asyncio.create_task(a.request("hang"))
    await asyncio.sleep(0)
    a.close(errors.RpcError(errors.NODE_DISCONNECTED, "gone", {"retryable": False}))
    async with asyncio.timeout(5):
        with pytest.raises(errors.RpcError) as info:
            await task
    assert info.value.code == errors.NODE_DISCONNECTED


async def test_notifications_get_no_response() -> None:
    notes: list[Any] = []
    sent: list[str] = []

    async def capture(text: str) -> None:
        sent.append(text)

    b = RpcSession(capture, {}, on_notification=lambda m, p: notes.append((m, p)))
    await b.feed(json.dumps({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}))
    assert notes == [("notifications/tools/list_changed", {})]
    assert sent == []


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("this is not json", errors.PARSE_ERROR),
        ('{"jsonrpc": "2.0", "method": 5, "id": 1}', errors.INVALID_REQUEST),
        ('{"method": "ping", "id": 1}', errors.INVALID_REQUEST),
        ('[{"jsonrpc": "2.0", "method": "ping", "id": 1}]', errors.INVALID_REQUEST),
        ('"just a string"', errors.INVALID_REQUEST),
        ('{"jsonrpc": "2.0", "method": "nope", "id": 7}', errors.METHOD_NOT_FOUND),
    ],
)
async def test_malformed_frames_get_error_answers(frame: str, code: int) -> None:
    sent: list[str] = []
    answered = asyncio.Event()

    async def capture(text: str) -> None:
        sent.append(text)
        answered.set()

    session = RpcSession(capture, {})
    await session.feed(frame)
    async with asyncio.timeout(5):
        await answered.wait()
    assert json.loads(sent[0])["error"]["code"] == code


def test_peer_ignores_a_response_to_an_unknown_id() -> None:
    peer = Peer()
    events = peer.receive('{"jsonrpc": "2.0", "result": 1, "id": 99}')
    assert type(events[0]).__name__ == "ProtocolViolation"
