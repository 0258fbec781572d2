"""Property-based fuzzing (hypothesis) of the tunnel and client-RPC framing against a real server.

Thousands of malformed frames — random text and bytes, random JSON, JSON-RPC look-alikes with wrong
types, ids and methods, real methods with their own keys holding values of any JSON type, nesting far
past the limit — go down a hostile node's tunnel and a client's `/api/v1/rpc` socket. The properties:
both hostile links stay up (each still answers a ping), no frame draws an unexpected internal error
(-32603 "internal error", or a traceback in the server's log), and a well-behaved node beside them
keeps answering echo calls all along (each bounded by the client's 5 s timeout; latency targets belong to
bench/hostile_bench.py, not to a timed test).

The event loop runs in its own thread so the sockets' readers keep draining while hypothesis
generates; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect

from tests.support.procs import ServerProc, raw_node_socket
from tests.support.rawnode import RawNode

T = TypeVar("T")

EXAMPLES = 1500  # 1-4 frames each, on both sockets: several thousand frames, ~15 s on this machine

_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16,
)
_ids = _scalars | st.lists(st.integers(), max_size=2) | st.dictionaries(st.text(max_size=3), _scalars)
_methods = st.sampled_from(
    [
        "ping",
        "tools/call",
        "tools/list",
        "nodes/list",
        "audit/read",
        "auth/refresh",
        "initialize",
        "notifications/cancelled",
        "notifications/progress",
        "notifications/tools/list_changed",
        "notifications/message",
        "",
    ]
) | st.text(max_size=12)
_rpc_like = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.just("2.0") | _json,
        "id": _ids,
        "method": _methods | _json,
        "params": _json,
        "result": _json,
        "error": _json | st.fixed_dictionaries({"code": _scalars, "message": _scalars}),
    },
).map(json.dumps)
_deep = st.integers(60, 5000).map(lambda n: "[" * n + "]" * n) | st.integers(60, 3000).map(
    lambda n: '{"jsonrpc":"2.0","method":"ping","id":1,"params":' + '{"a":' * n + "1" + "}" * (n + 1)
)
# Right method and keys, values of any JSON type: what a typed fuzz of the client RPC found bugs with
# (a node name that is a list or an object). Both directions: the node-side methods take these keys too.
_names = st.sampled_from(["steady", "fuzzer", "nope", "echo"]) | _json
_typed_params = st.fixed_dictionaries(
    {},
    optional={
        "node": _names,
        "name": _names,
        "arguments": _json,
        "timeout_s": _json,
        "after_seq": _json,
        "limit": _json,
        "id": _json,
        "offset": _json,
        "data": _json,
        "final": _json,
        "size": _json,
        "access_token": _json,
    },
)
_typed = st.builds(
    lambda id_, method, params: json.dumps({"jsonrpc": "2.0", "id": id_, "method": method, "params": params}),
    st.integers(1, 10**6),
    st.sampled_from(
        ["tools/list", "tools/call", "audit/read", "nodes/list", "artifacts/write", "auth/refresh"]
    ),
    _typed_params | st.lists(_names | _json, max_size=4),
)
_frames = st.one_of(
    _rpc_like,
    _typed,
    _json.map(json.dumps),
    st.text(max_size=200),
    st.binary(max_size=200),
    _deep,
    _rpc_like.map(lambda text: text[: len(text) // 2]),  # cut in the middle
)


class _Loop:
    """An event loop in a thread; `run` executes a coroutine there and waits (bounded)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class _Links:
    def __init__(self, server: ServerProc) -> None:
        self.server = server
        self.hostile: RawNode | None = None
        self.good: RawNode | None = None
        self.client: ClientConnection | None = None
        self.client_replies: list[Any] = []
        self._drain: asyncio.Task[None] | None = None
        self.checked = asyncio.Event()  # set when the client's "fuzz-check" ping is answered
        self.http: httpx2.AsyncClient | None = None

    async def open(self) -> None:
        # No keepalive pings: websockets draws their payload from the global `random`, which
        # hypothesis watches while it generates (our loop thread runs meanwhile).
        steady = await raw_node_socket(self.server, "steady", ping_interval=None)
        self.good = await RawNode(steady).__aenter__()
        self.hostile = await RawNode(
            await raw_node_socket(self.server, "fuzzer", ping_interval=None)
        ).__aenter__()
        headers = {"Authorization": f"Bearer {self.server.admin_token}"}
        self.client = await connect(
            self.server.url.replace("http", "ws") + "/api/v1/rpc",
            additional_headers=headers,
            subprotocols=["cortex.v1"],  # type: ignore[list-item]
            ping_interval=None,
        )
        self._drain = asyncio.create_task(self._read_client())
        self.http = httpx2.AsyncClient(base_url=self.server.url, headers=headers, timeout=5)
        # Both nodes through their handshake: the server's event stream says so (it starts with the
        # current state of every node, so an event that came before the stream is not missed).
        for name in ("steady", "fuzzer"):
            await asyncio.to_thread(self.server.wait_status, name, "connected", 15)

    async def _read_client(self) -> None:
        assert self.client is not None
        async for frame in self.client:
            reply = json.loads(frame)
            self.client_replies.append(reply)
            if isinstance(reply, dict) and reply.get("id") == "fuzz-check":
                self.checked.set()

    async def send(self, frames: list[str | bytes], to_node: bool) -> None:
        assert self.hostile is not None and self.client is not None
        for frame in frames:
            await (self.hostile.ws if to_node else self.client).send(frame)

    async def echo_ok(self) -> float:
        assert self.http is not None
        started = time.perf_counter()
        response = await self.http.post(
            "/api/v1/nodes/steady/tools/echo/call", json={"arguments": {"text": "x"}}
        )
        assert response.status_code == 200 and response.json()["content"][0]["text"] == "x"
        return time.perf_counter() - started

    async def links_up(self) -> None:
        assert self.hostile is not None and self.client is not None
        async with asyncio.timeout(10):
            assert (await self.hostile.request("ping", "fuzz-check"))["result"] == {}
            await self.client.send('{"jsonrpc":"2.0","method":"ping","id":"fuzz-check"}')
            await self.checked.wait()

    async def close(self) -> None:
        for node in (self.hostile, self.good):
            if node is not None:
                await node.__aexit__(None, None, None)
        if self.client is not None:
            await self.client.close()
        if self._drain is not None:
            self._drain.cancel()
        if self.http is not None:
            await self.http.aclose()


@pytest.fixture(scope="module")
def links(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[_Loop, _Links]]:
    server = ServerProc(tmp_path_factory.mktemp("fuzz") / "server", args=["--log-level", "warning"]).start()
    loop = _Loop()
    links = _Links(server)
    try:
        loop.run(links.open())
        yield loop, links
    finally:
        loop.run(links.close())
        loop.close()
        server.stop()


def test_malformed_frames_never_take_a_link_or_the_server_down(links: tuple[_Loop, _Links]) -> None:
    loop, state = links
    sent = [0]

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(frames=st.lists(_frames, min_size=1, max_size=4), to_node=st.booleans())
    def fuzz(frames: list[str | bytes], to_node: bool) -> None:
        loop.run(state.send(frames, to_node))
        sent[0] += 1
        if sent[0] % 250 == 0:  # the well-behaved node is served all along (each call bounded: 5 s)
            loop.run(state.echo_ok())

    fuzz()
    loop.run(state.links_up())
    loop.run(state.echo_ok())
    internal = [r for r in state.client_replies if isinstance(r, dict) and "Traceback" in json.dumps(r)]
    assert internal == []
    errors = [r.get("error") for r in state.client_replies if isinstance(r, dict)]
    # The catch-all answer of an unexpected exception; a node that answers badly is -32603 by name.
    unexpected = {"code": -32603, "message": "internal error"}
    assert [e for e in errors if isinstance(e, dict) and e == unexpected] == []
    assert "Traceback" not in "".join(state.server.output)
