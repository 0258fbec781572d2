"""`cortex.v1.batched` on the node tunnel and the client RPC (spec/protocol.md §1.2, `spec.frames`).

Against a real server process: a client offering ``cortex.v1.batched, cortex.v1`` gets the batched
link, and each message of a joined frame is answered as if it had come alone (hostile parts included:
a JSON array, an empty part, text that is no JSON), with the link staying up; a client offering only
``cortex.v1`` keeps one message per frame (a joined frame is one frame that is no JSON); the server's
requests to a node on a batched tunnel share frames at 64 in flight; the real agent and the SDK speak
it end to end.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from sdk import AsyncClient
from spec.frames import BatchedLink
from tests.support.procs import AgentProc, ServerProc, raw_node_socket
from tests.support.rawnode import RawNode

V1 = "cortex.v1"
BATCHED = "cortex.v1.batched"


async def _rpc_socket(server: ServerProc, subprotocols: list[str]) -> ClientConnection:
    return await connect(
        server.url.replace("http", "ws") + "/api/v1/rpc",
        additional_headers={"Authorization": f"Bearer {server.token()}"},
        subprotocols=subprotocols,  # type: ignore[arg-type]
    )


async def _messages(ws: ClientConnection, count: int) -> tuple[list[dict[str, Any]], int]:
    """`count` messages read from `ws` (split as a batched link splits), and how many frames held them."""
    got: list[dict[str, Any]] = []
    frames = 0
    async with asyncio.timeout(10):
        while len(got) < count:
            frame = await ws.recv()
            assert isinstance(frame, str)
            frames += 1
            parts = frame.split("\n") if ws.subprotocol == BATCHED else [frame]
            got += [json.loads(part) for part in parts]
    return got, frames


def _ping(id_: int) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": id_, "method": "ping"}, separators=(",", ":"))


async def test_each_message_of_a_joined_frame_is_answered_alone(server_proc: ServerProc) -> None:
    async with await _rpc_socket(server_proc, [BATCHED, V1]) as ws:
        assert ws.subprotocol == BATCHED
        parts = [_ping(1), "[" + _ping(2) + "]", "", "not json", _ping(3)]
        await ws.send("\n".join(parts))
        answers, _frames = await _messages(ws, 5)
        by_id = {a["id"]: a for a in answers if a["id"] is not None}
        assert by_id[1]["result"] == {} and by_id[3]["result"] == {}
        errors = sorted(a["error"]["code"] for a in answers if a["id"] is None)
        assert errors == [-32700, -32700, -32600]  # the empty part and the text; the array
        await ws.send(_ping(4))  # the link is still up
        (answer,), _ = await _messages(ws, 1)
        assert answer == {"jsonrpc": "2.0", "id": 4, "result": {}}


async def test_a_v1_link_keeps_one_message_a_frame(server_proc: ServerProc) -> None:
    async with await _rpc_socket(server_proc, [V1]) as ws:
        assert ws.subprotocol == V1
        await ws.send(_ping(1) + "\n" + _ping(2))  # not two messages on a plain link: one bad frame
        (answer,), _ = await _messages(ws, 1)
        assert answer["id"] is None and answer["error"]["code"] == -32700
        for i in range(10, 20):
            await ws.send(_ping(i))
        answers, frames = await _messages(ws, 10)
        assert frames == 10 and sorted(a["id"] for a in answers) == list(range(10, 20))


async def test_a_batched_frame_counts_each_request_against_the_links_limit(server_proc: ServerProc) -> None:
    # MAX_CLIENT_REQUESTS (1024) calls in flight on one link; more in the same frame are refused -32012,
    # each on its own, exactly as they would be one frame each.
    async with RawNode(await raw_node_socket(server_proc, "slowpoke")) as node:
        await asyncio.to_thread(server_proc.wait_status, "slowpoke", "connected")
        async with await _rpc_socket(server_proc, [BATCHED, V1]) as ws:
            held = asyncio.Event()
            node.hold = held  # the node answers nothing until released
            calls = [
                json.dumps(
                    {
                        "jsonrpc": "2.0",
                        "id": i,
                        "method": "tools/call",
                        "params": {"node": "slowpoke", "name": "echo", "arguments": {"text": "x"}},
                    }
                )
                for i in range(1, 1024 + 6)
            ]
            await ws.send("\n".join(calls))
            refused, _ = await _messages(ws, 5)
            assert sorted(a["id"] for a in refused) == list(range(1025, 1030))
            assert {a["error"]["code"] for a in refused} == {-32012}
            held.set()
            answered, _ = await _messages(ws, 1024)
            assert all("result" in a for a in answered)


async def test_the_server_joins_its_requests_to_a_batched_node(server_proc: ServerProc) -> None:
    ws = await raw_node_socket(server_proc, "joined", subprotocols=(BATCHED, V1))
    assert ws.subprotocol == BATCHED
    async with RawNode(ws) as node:
        await asyncio.to_thread(server_proc.wait_status, "joined", "connected")
        async with AsyncClient(server_proc.url, token=server_proc.token()) as client:
            results = await asyncio.gather(
                *(client.call("joined", "echo", {"text": f"t{i}"}) for i in range(64))
            )
        assert [r.text for r in results] == [f"t{i}" for i in range(64)]
        assert node.frames < node.messages  # at 64 in flight the server's requests shared frames


async def test_the_agent_and_the_sdk_speak_batched_end_to_end(
    server_proc: ServerProc, start_node: Callable[..., AgentProc]
) -> None:
    start_node("laptop")
    async with AsyncClient(server_proc.url, token=server_proc.token()) as client:
        link = client._ws
        assert isinstance(link, BatchedLink)
        results = await asyncio.gather(*(client.call("laptop", "echo", {"text": f"e{i}"}) for i in range(64)))
        assert [r.text for r in results] == [f"e{i}" for i in range(64)]
        assert link.writer.frames < link.writer.messages  # the SDK's calls shared frames


async def test_a_frame_of_many_empty_messages_is_answered_and_others_keep_being_served(
    server_proc: ServerProc,
) -> None:
    async with (
        await _rpc_socket(server_proc, [BATCHED, V1]) as hostile,
        await _rpc_socket(server_proc, [V1]) as other,
    ):
        await hostile.send("\n" * 19_999)  # 20,000 empty messages in one frame
        await other.send(_ping(1))
        (answer,), _ = await _messages(other, 1)  # served meanwhile (spec.frames rule 7)
        assert answer["result"] == {}
        answers, _frames = await _messages(hostile, 20_000)
        assert {a["error"]["code"] for a in answers} == {-32700}
        await hostile.send(_ping(2))
        (answer,), _ = await _messages(hostile, 1)
        assert answer == {"jsonrpc": "2.0", "id": 2, "result": {}}


async def test_an_end_whose_frame_limit_is_under_a_joined_frame_stays_one_message_a_frame(
    tmp_path: Path,
) -> None:
    # A server taking frames of at most 8 KiB never answers cortex.v1.batched (the other end would join
    # up to 16 KiB), and an SDK client with such a limit does not offer it.
    server = ServerProc(tmp_path / "small", args=["--max-frame-bytes", "8192"]).start()
    try:
        async with await _rpc_socket(server, [BATCHED, V1]) as ws:
            assert ws.subprotocol == V1
    finally:
        server.stop()
    assert AsyncClient("http://127.0.0.1:1", max_frame_bytes=8192)._subprotocols == [V1]
    assert AsyncClient("http://127.0.0.1:1")._subprotocols == [BATCHED, V1]
