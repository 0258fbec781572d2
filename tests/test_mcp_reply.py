"""Tier (b): `server/mcp_reply.py`, the JSON-body answer for `resources/read`, around small ASGI apps.

The app stands in for the `mcp` session manager's framing only (what it writes on the wire); the real
manager behind `/mcp` is exercised in tests/test_mcp_resources.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from server.mcp_reply import serve_with_json_reply

READ = {"jsonrpc": "2.0", "id": 7, "method": "resources/read", "params": {"uri": "cortex://artifacts/x"}}
RESPONSE = {
    "jsonrpc": "2.0",
    "id": 7,
    "result": {"contents": [{"uri": "cortex://artifacts/x", "blob": "QQ=="}]},
}


def _sse_app(events: list[bytes], seen: list[bytes], status: int = 200) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        seen.append(body)
        headers = [(b"content-type", b"text/event-stream"), (b"mcp-session-id", b"abc")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        for event in events:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


async def _call(
    app: Any, body: bytes, chunks: int = 1, max_body: int = 1 << 20, declare: bool = True
) -> list[Message]:
    sent: list[Message] = []
    step = max(1, len(body) // chunks)
    parts = [body[i : i + step] for i in range(0, len(body), step)] or [b""]
    incoming: list[Message] = [
        {"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)
    ]

    async def receive() -> Message:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    headers = [(b"content-length", str(len(body)).encode())] if declare else []
    scope = {"type": "http", "method": "POST", "headers": headers}
    await serve_with_json_reply(app, scope, receive, send, max_body=max_body)
    return sent


def _body(sent: list[Message]) -> bytes:
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def _headers(sent: list[Message]) -> dict[bytes, bytes]:
    return dict(sent[0]["headers"])


@pytest.mark.parametrize("newline", [b"\r\n", b"\n"])
async def test_an_sse_answer_becomes_its_one_response(newline: bytes) -> None:
    seen: list[bytes] = []
    data = json.dumps(RESPONSE).encode()
    events = [
        b"id: 1" + newline + b"data:" + newline + newline,  # a priming event
        b": ping" + newline + newline,
        b'data: {"jsonrpc":"2.0","method":"notifications/message","params":{}}' + newline + newline,
        b"event: message" + newline + b"data: " + data[:10],  # the response split over two writes
        data[10:] + newline + newline,
    ]
    body = json.dumps(READ).encode()
    sent = await _call(_sse_app(events, seen), body, chunks=3)
    assert seen == [body]  # the app got the whole body, replayed
    assert json.loads(_body(sent)) == RESPONSE
    headers = _headers(sent)
    assert headers[b"content-type"] == b"application/json" and headers[b"mcp-session-id"] == b"abc"
    assert int(headers[b"content-length"]) == len(_body(sent))


async def test_other_answers_and_methods_pass_through() -> None:
    events = [b"data: " + json.dumps(RESPONSE).encode() + b"\r\n\r\n"]
    seen: list[bytes] = []
    for request in (
        {**READ, "method": "tools/call"},  # another method: left as SSE
        {**READ, "id": 8},  # no event answers this id: the stream as it was
        [READ],  # a batch is not touched
        {k: v for k, v in READ.items() if k != "id"},  # a notification
    ):
        sent = await _call(_sse_app(events, seen), json.dumps(request).encode())
        assert _headers(sent)[b"content-type"] == b"text/event-stream"
        assert _body(sent) == events[0]


@pytest.mark.parametrize("declare", [True, False])
async def test_a_body_over_the_limit_is_not_held(declare: bool) -> None:
    seen: list[bytes] = []
    events = [b"data: " + json.dumps(RESPONSE).encode() + b"\r\n\r\n"]
    body = json.dumps({**READ, "params": {"uri": "x" * 5000}}).encode()
    sent = await _call(_sse_app(events, seen), body, chunks=10, max_body=1000, declare=declare)
    assert seen == [body]  # handed on whole, chunk by chunk, with no JSON reply
    assert _headers(sent)[b"content-type"] == b"text/event-stream"
