"""`server/mcp_json_answer.py`: a plain `tools/call` is answered in one JSON body, a streaming one stays SSE.

Tier (b) for the choice itself (`fits_json_answer` on hand-made bodies), tier (c) for the framing on the
wire: the official client against `/mcp` of a real server with a real agent node, every HTTP answer's
content type recorded through httpx's response hook.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx2
import mcp_types as types
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp_types.version import LATEST_HANDSHAKE_VERSION

from server.mcp_json_answer import fits_json_answer
from tests.support.mcp_http import mcp_answer
from tests.support.pids import descendants_with, wait_gone
from tests.support.procs import AgentProc, ServerProc

BOTH = b"application/json, text/event-stream"


def _scope(accept: bytes | None = BOTH, session: bytes | None = b"abc") -> dict[str, Any]:
    headers = [(b"content-type", b"application/json")]
    if accept is not None:
        headers.append((b"accept", accept))
    if session is not None:
        headers.append((b"mcp-session-id", session))
    return {"type": "http", "method": "POST", "headers": headers}


def _call(**params: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": params}).encode()


def test_only_a_plain_call_of_a_session_fits() -> None:
    assert fits_json_answer(_scope(), _call(name="n__echo", arguments={"text": "x"}))
    assert fits_json_answer(_scope(b"*/*"), _call(name="n__echo"))
    assert fits_json_answer(_scope(), _call(name="n__echo", _meta={"other": 1}))
    # A progress token, in either spelling the SDK reads, and however the JSON escapes it: SSE.
    assert not fits_json_answer(_scope(), _call(name="n__echo", _meta={"progressToken": 1}))
    assert not fits_json_answer(_scope(), _call(name="n__echo", _meta={"progress_token": "t"}))
    escaped = _call(name="n__echo", _meta={"PROGRESS": 1}).replace(b'"PROGRESS"', b'"progr\\u0065ssToken"')
    assert json.loads(escaped)["params"]["_meta"] == {"progressToken": 1}
    assert not fits_json_answer(_scope(), escaped)
    assert not fits_json_answer(_scope(), _call(name="n__echo", _meta=["progressToken"]))
    # Not a request of an established session, or an Accept the SSE framing refuses (406 stays 406).
    assert not fits_json_answer(_scope(session=None), _call(name="n__echo"))
    assert not fits_json_answer(_scope(accept=b"application/json"), _call(name="n__echo"))
    assert not fits_json_answer(_scope(accept=None), _call(name="n__echo"))
    # Not one tools/call request with an id.
    plain = {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "n__echo"}}
    assert not fits_json_answer(_scope(), json.dumps(plain).encode())  # a notification
    assert not fits_json_answer(_scope(), json.dumps({**plain, "id": True}).encode())
    assert not fits_json_answer(_scope(), json.dumps([{**plain, "id": 1}]).encode())
    assert not fits_json_answer(_scope(), json.dumps({**plain, "id": 1, "method": "tools/list"}).encode())
    assert not fits_json_answer(_scope(), json.dumps({**plain, "id": 1, "params": "x"}).encode())
    assert not fits_json_answer(_scope(), b'{"method": "tools/call", "id": 1')


@contextlib.asynccontextmanager
async def _client(server: ServerProc, seen: list[tuple[str, str]]) -> AsyncIterator[ClientSession]:
    """The official client; `seen` gets (JSON-RPC method, content type) of every POST answer."""

    async def record(response: httpx2.Response) -> None:
        if response.request.method == "POST":
            method = json.loads(response.request.content).get("method", "")
            seen.append((method, response.headers.get("content-type", "")))

    async with (
        httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {server.token()}"},
            timeout=httpx2.Timeout(60.0),
            event_hooks={"response": [record]},
        ) as http,
        streamable_http_client(f"{server.url}/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def _text(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


def _framing(seen: list[tuple[str, str]], method: str) -> set[str]:
    return {kind.split(";")[0] for m, kind in seen if m == method}


async def test_plain_calls_answer_json_while_a_progress_call_streams(
    server_proc: ServerProc, start_node: Callable[..., AgentProc]
) -> None:
    start_node("laptop")
    seen: list[tuple[str, str]] = []
    ticks: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        ticks.append(message or "")

    command = "for i in 1 2 3 4; do echo tick-$i; sleep 0.3; done"
    async with _client(server_proc, seen) as session:
        streaming = asyncio.create_task(
            session.call_tool("laptop__shell_exec", {"command": command}, progress_callback=on_progress)
        )
        # Plain calls of the same session, in flight beside it: each framing is per request.
        for _round in range(5):
            results = await asyncio.gather(
                *(session.call_tool("laptop__echo", {"text": f"e{i}"}) for i in range(8))
            )
            assert [_text(r) for r in results] == [f"e{i}" for i in range(8)]
        bad = await session.call_tool("laptop__echo", {"text": 5})
        assert bad.is_error and "text" in _text(bad)
        async with asyncio.timeout(30):
            result = await streaming
        assert not result.is_error
        await session.list_tools()
    joined = "".join(ticks)
    assert all(f"tick-{i}" in joined for i in range(1, 5)), ticks
    assert _framing(seen, "initialize") == {"text/event-stream"}
    assert _framing(seen, "tools/list") == {"text/event-stream"}
    # The progress call streamed (its answer is the only SSE one), every other call was one JSON body.
    calls = [kind.split(";")[0] for m, kind in seen if m == "tools/call"]
    assert calls.count("text/event-stream") == 1
    assert calls.count("application/json") == len(calls) - 1 == 41


async def test_cancelling_a_json_answered_call_kills_it_on_the_node(
    server_proc: ServerProc, start_node: Callable[..., AgentProc]
) -> None:
    agent = start_node("laptop")
    seen: list[tuple[str, str]] = []
    async with _client(server_proc, seen) as session:
        call = asyncio.create_task(session.call_tool("laptop__shell_exec", {"command": "sleep 613"}))
        started: list[int] = []
        async with asyncio.timeout(15):
            while not started:  # no progress on this call: look for the process on the node
                started = await asyncio.to_thread(descendants_with, agent.pid, "sleep 613")
                await asyncio.sleep(0.05)
        call.cancel()  # the official client sends notifications/cancelled itself
        with contextlib.suppress(asyncio.CancelledError):
            await call
        assert await asyncio.to_thread(wait_gone, started, 15.0)
        assert _text(await session.call_tool("laptop__echo", {"text": "still here"})) == "still here"
    assert _framing(seen, "tools/call") == {"application/json"}


def test_an_accept_without_sse_is_still_refused(
    server_proc: ServerProc, start_node: Callable[..., AgentProc]
) -> None:
    start_node("laptop")
    headers = {"Authorization": f"Bearer {server_proc.token()}", "Accept": BOTH.decode()}
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": LATEST_HANDSHAKE_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"},
        },
    }
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "laptop__echo"}}
    with httpx2.Client(base_url=server_proc.url, timeout=30) as http:
        opened = http.post("/mcp", json=init, headers=headers)
        assert opened.status_code == 200 and "result" in mcp_answer(opened)
        session = {
            **headers,
            "Mcp-Session-Id": opened.headers["mcp-session-id"],
            "MCP-Protocol-Version": LATEST_HANDSHAKE_VERSION,
        }
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert http.post("/mcp", json=initialized, headers=session).status_code == 202
        call["params"]["arguments"] = {"text": "raw"}  # type: ignore[index]
        answered = http.post("/mcp", json=call, headers=session)
        assert answered.headers["content-type"].startswith("application/json")
        assert mcp_answer(answered)["result"]["content"][0]["text"] == "raw"
        refused = http.post("/mcp", json=call, headers={**session, "Accept": "application/json"})
        assert refused.status_code == 406
