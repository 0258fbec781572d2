"""Several `cortex-server serve` replicas sharing one Redis act as one server (issue 15, CONTRACT §1).

Real processes only: a redis-server child (tests.support.engines), replicas sharing one data dir (the
store; PostgreSQL comes with `--database-url`), real `cortex-agent run` nodes. Each test is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2
import pytest

from sdk import AsyncClient, CallCancelled, NodeDisconnected
from tests.support.pids import pids_with, wait_gone
from tests.support.procs import AgentProc, ServerProc

LEASE = "1.5"
FRAME = 1024 * 1024
REPLICA_ARGS = ["--heartbeat-interval", "1", "--replica-lease", LEASE, "--max-frame-bytes", str(FRAME)]


@pytest.fixture
def replicas(tmp_path: Path, redis_url: str, pg_url: str) -> Iterator[list[ServerProc]]:
    """Three replicas, each with a data dir of its own, sharing one PostgreSQL and one Redis."""

    def replica(i: int, args: list[str], env: dict[str, str] | None = None) -> ServerProc:
        return ServerProc(tmp_path / f"replica{i}", args=args, env=env, database_url=pg_url)

    servers = [replica(i, [*REPLICA_ARGS, "--redis-url", redis_url]) for i in range(2)]
    servers.append(replica(2, REPLICA_ARGS, {"CORTEX_REDIS_URL": redis_url}))  # the env form
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def node_on(replicas: list[ServerProc], tmp_path: Path) -> Iterator[Callable[..., AgentProc]]:
    """node_on(server, name, workspace="ws1", home_tag="") -> an AgentProc connected through `server`."""
    agents: list[AgentProc] = []
    credentials: dict[str, str] = {}

    def start(server: ServerProc, name: str, workspace: str = "ws1", home_tag: str = "") -> AgentProc:
        if name not in credentials:
            credentials[name] = server.enroll(name, workspace)
        root = tmp_path / f"{name}{home_tag}-root"
        root.mkdir(exist_ok=True)
        (root / f"marker{home_tag or '-first'}").write_text("x")
        agent = AgentProc(
            tmp_path / f"{name}{home_tag}-home",
            server.url,
            name,
            credentials[name],
            ["--allow-root", str(root), "--no-browser"],
        )
        agents.append(agent)
        with server.events() as stream:
            agent.start()
            for event, data in stream.items(deadline=time.monotonic() + 30):
                if event == "node.connected" and data["name"] == name:
                    break
            else:
                raise TimeoutError(f"node {name} did not connect:\n{''.join(agent.output[-30:])}")
        return agent

    try:
        yield start
    finally:
        for agent in agents:
            agent.stop()


def _replica_token(server: ServerProc) -> str:
    """A genuine replica token, signed with the cluster's key from the shared store."""
    from server import admin
    from server.auth import TokenAuthority
    from server.store import Store

    async def mint(store: Store) -> str:
        return TokenAuthority(await store.load_or_create_signing_key()).mint_replica_token("rtest")

    return admin.with_store(server.data_dir, server.database_url, mint)


def _wait_listed(server: ServerProc, name: str, status: str, timeout: float = 10.0) -> dict[str, object]:
    """Poll the listing (bounded): the mirror of another replica is fed asynchronously."""
    deadline = time.monotonic() + timeout
    while True:
        with server.http() as http:
            nodes = http.get("/api/v1/nodes").json()["nodes"]
        found = [n for n in nodes if n["name"] == name]
        assert len(found) <= 1, f"node {name} listed {len(found)} times"
        if found and found[0]["status"] == status:
            return found[0]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} not {status} on {server.url}: {found}")
        time.sleep(0.05)


def test_listed_and_callable_from_every_replica(
    replicas: list[ServerProc], node_on: Callable[..., AgentProc]
) -> None:
    a, _, c = replicas
    node_on(a, "laptop")
    for server in replicas:
        listed = _wait_listed(server, "laptop", "connected")
        assert "echo" in listed["tools"]  # type: ignore[operator]
        with server.http(server.token()) as http:
            response = http.post("/api/v1/nodes/laptop/tools/echo/call", json={"arguments": {"text": "hi"}})
            assert response.status_code == 200, response.text
            assert response.json()["content"][0]["text"] == "hi"
            # Same codes as on one process: schema failure 422, unknown tool 404.
            bad = http.post("/api/v1/nodes/laptop/tools/echo/call", json={"arguments": {"text": 5}})
            assert bad.status_code == 422
            unknown = http.post("/api/v1/nodes/laptop/tools/nope/call", json={"arguments": {}})
            assert unknown.status_code == 404
    # The heartbeat's RTT, measured by the holder, is seen on the others.
    deadline = time.monotonic() + 10
    while c.node("laptop")["rtt_ms"] is None:
        assert time.monotonic() < deadline, "no rtt_ms from the holder reached replica c"
        time.sleep(0.1)


def test_workspace_isolation_across_replicas(
    replicas: list[ServerProc], node_on: Callable[..., AgentProc]
) -> None:
    a, b, _ = replicas
    node_on(a, "secret-box", workspace="ws2")
    _wait_listed(b, "secret-box", "connected")  # the admin sees it
    with b.http(b.token("mallory", "ws1")) as http:
        assert http.get("/api/v1/nodes/secret-box").status_code == 404
        call = http.post("/api/v1/nodes/secret-box/tools/echo/call", json={"arguments": {"text": "x"}})
        assert call.status_code == 404
        assert all(n["name"] != "secret-box" for n in http.get("/api/v1/nodes").json()["nodes"])
    with b.http(b.token("bob", "ws2")) as http:
        call = http.post("/api/v1/nodes/secret-box/tools/echo/call", json={"arguments": {"text": "x"}})
        assert call.status_code == 200


async def test_progress_and_cancel_cross_replicas(
    replicas: list[ServerProc], node_on: Callable[..., AgentProc]
) -> None:
    a, b, _ = replicas
    node_on(a, "laptop")
    await asyncio.to_thread(_wait_listed, b, "laptop", "connected")
    seen: list[str] = []
    async with AsyncClient(b.url, token=b.token()) as client:
        result = await client.call(
            "laptop",
            "shell_exec",
            {"command": "for i in $(seq 1 30); do echo line$i; sleep 0.01; done"},
            on_progress=lambda p: seen.append(p.get("message") or ""),
        )
        assert not result.is_error
        lines = [line for chunk in seen for line in chunk.splitlines() if line.startswith("line")]
        assert lines == [f"line{i}" for i in range(1, 31)]  # all of it, in order, across two replicas

        marker = f"701.{uuid.uuid4().int % 10**6}"
        running = asyncio.Event()
        call = client.start(
            "laptop",
            "shell_exec",
            {"command": f"echo started; sleep {marker}"},
            on_progress=lambda _p: running.set(),
        )
        async with asyncio.timeout(10):
            await running.wait()
        await call.cancel()
        with pytest.raises(CallCancelled):
            async with asyncio.timeout(10):
                await call
        # The cancel crossed to the holder and down to the node: the command's process is gone.
        assert await asyncio.to_thread(wait_gone, pids_with(marker), 5.0), "the sleep is still running"


async def test_events_reach_every_replica(
    replicas: list[ServerProc], node_on: Callable[..., AgentProc]
) -> None:
    a, b, c = replicas
    got: dict[str, list[str]] = {b.url: [], c.url: []}

    def watch(server: ServerProc, ready: asyncio.Event, loop: asyncio.AbstractEventLoop) -> None:
        with server.events() as stream:
            loop.call_soon_threadsafe(ready.set)
            for event, data in stream.items(deadline=time.monotonic() + 25):
                if data.get("name") == "roamer":
                    got[server.url].append(event)
                    if event == "node.disconnected":
                        return

    loop = asyncio.get_running_loop()
    readies = [asyncio.Event(), asyncio.Event()]
    watchers = [asyncio.to_thread(watch, s, r, loop) for s, r in zip((b, c), readies, strict=True)]
    tasks = [asyncio.ensure_future(w) for w in watchers]
    async with asyncio.timeout(10):
        for ready in readies:
            await ready.wait()
    agent = await asyncio.to_thread(node_on, a, "roamer")
    await asyncio.to_thread(_wait_listed, c, "roamer", "connected")
    agent.stop()
    async with asyncio.timeout(25):
        await asyncio.gather(*tasks)
    for events in got.values():
        # The node's audit head travels by the database's change feed, its connection by Redis: a
        # `node.updated` for the head may come first (the replica then lists the node as it knew it).
        assert set(events[: events.index("node.connected")]) <= {"node.updated"}, events
        assert events[-1] == "node.disconnected", events


async def test_replica_killed_mid_call(replicas: list[ServerProc], node_on: Callable[..., AgentProc]) -> None:
    a, b, _ = replicas
    node_on(a, "laptop")
    await asyncio.to_thread(_wait_listed, b, "laptop", "connected")
    marker = f"702.{uuid.uuid4().int % 10**6}"
    async with AsyncClient(b.url, token=b.token()) as client:
        running = asyncio.Event()
        call = client.start(
            "laptop",
            "shell_exec",
            {"command": f"echo started; sleep {marker}"},
            on_progress=lambda _p: running.set(),
        )
        async with asyncio.timeout(10):
            await running.wait()
        started = time.monotonic()
        a.kill()
        with pytest.raises(NodeDisconnected):
            async with asyncio.timeout(10):
                await call
        assert time.monotonic() - started < 5
    # The dead replica's node turns disconnected on the others within a few lease intervals.
    await asyncio.to_thread(_wait_listed, b, "laptop", "disconnected", 4 * float(LEASE) + 2)
    for pid in pids_with(marker):
        os.kill(pid, 9)


def test_node_moves_between_replicas(replicas: list[ServerProc], node_on: Callable[..., AgentProc]) -> None:
    a, b, c = replicas
    first = node_on(a, "laptop")
    _wait_listed(c, "laptop", "connected")
    # A second connection of the same node, to another replica: the newest wins everywhere.
    node_on(b, "laptop", home_tag="-second")
    assert first.wait_output("4409", 10) or first.wait_output("replaced", 1), "".join(first.output[-20:])
    for server in replicas:
        _wait_listed(server, "laptop", "connected")
        with server.http(server.token()) as http:
            root_listing = http.post(
                "/api/v1/nodes/laptop/tools/fs_list/call", json={"arguments": {"path": "."}}
            )
            assert root_listing.status_code == 200, root_listing.text
            assert "marker-second" in root_listing.text, f"{server.url} called the replaced node"


def test_replica_link_refuses_other_tokens(replicas: list[ServerProc]) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    a = replicas[0]
    for token in (a.token(), a.admin_token, "garbage"):
        with pytest.raises(InvalidStatus) as refused:
            connect(
                a.url.replace("http", "ws") + "/api/v1/cluster/link",
                additional_headers={"Authorization": f"Bearer {token}"},
                subprotocols=["cortex.cluster.v1"],  # type: ignore[list-item]
                open_timeout=10,
            )
        assert refused.value.response.status_code in (401, 403)
    # A genuine replica token, but the link is meant for another replica (a new process on a dead one's
    # port must not take its calls): refused.
    token = _replica_token(a)
    with pytest.raises(InvalidStatus) as refused:
        connect(
            a.url.replace("http", "ws") + "/api/v1/cluster/link",
            additional_headers={"Authorization": f"Bearer {token}", "X-Cortex-Replica": "r000000000000"},
            subprotocols=["cortex.cluster.v1"],  # type: ignore[list-item]
            open_timeout=10,
        )
    assert refused.value.response.status_code == 421


def test_replica_link_absent_without_redis(server_proc: ServerProc) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with pytest.raises(InvalidStatus) as refused:
        connect(
            server_proc.url.replace("http", "ws") + "/api/v1/cluster/link",
            additional_headers={"Authorization": "Bearer x"},
            subprotocols=["cortex.cluster.v1"],  # type: ignore[list-item]
            open_timeout=10,
        )
    assert refused.value.response.status_code == 404


async def test_timeout_across_replicas_is_504_and_stops_the_command(
    replicas: list[ServerProc], node_on: Callable[..., AgentProc]
) -> None:
    a, b, _ = replicas
    node_on(a, "laptop")
    await asyncio.to_thread(_wait_listed, b, "laptop", "connected")
    marker = f"704.{uuid.uuid4().int % 10**6}"
    async with httpx2.AsyncClient(base_url=b.url, headers={"Authorization": f"Bearer {b.token()}"}) as http:
        started = time.monotonic()
        response = await http.post(
            "/api/v1/nodes/laptop/tools/shell_exec/call",
            json={"arguments": {"command": f"sleep {marker}"}, "timeout_s": 1},
            timeout=30,
        )
        assert response.status_code == 504, response.text
        assert time.monotonic() - started < 10
    assert await asyncio.to_thread(wait_gone, pids_with(marker), 5.0), "the timed-out command still runs"


async def test_frozen_replica_calls_fail_by_lease_then_it_rejoins(
    replicas: list[ServerProc], node_on: Callable[..., AgentProc]
) -> None:
    """A replica that stops answering but keeps its sockets open (SIGSTOP: a hung process, a partition)
    is dead once its lease lapses: calls held by it fail within 5 s; resumed, it claims its nodes again."""
    import signal

    a, b, _ = replicas
    node_on(a, "laptop")
    await asyncio.to_thread(_wait_listed, b, "laptop", "connected")
    marker = f"703.{uuid.uuid4().int % 10**6}"
    async with AsyncClient(b.url, token=b.token()) as client:
        running = asyncio.Event()
        call = client.start(
            "laptop",
            "shell_exec",
            {"command": f"echo started; sleep {marker}"},
            on_progress=lambda _p: running.set(),
        )
        async with asyncio.timeout(10):
            await running.wait()
        started = time.monotonic()
        os.kill(a.pid, signal.SIGSTOP)
        try:
            with pytest.raises(NodeDisconnected):
                async with asyncio.timeout(10):
                    await call
            assert time.monotonic() - started < 5
            await asyncio.to_thread(_wait_listed, b, "laptop", "disconnected", 2.0)
        finally:
            os.kill(a.pid, signal.SIGCONT)
    # Resumed, it finds its lease lapsed and claims its (still open) links again.
    await asyncio.to_thread(_wait_listed, b, "laptop", "connected", 15.0)
    with b.http(b.token()) as http:
        response = http.post("/api/v1/nodes/laptop/tools/echo/call", json={"arguments": {"text": "back"}})
        assert response.status_code == 200, response.text
    for pid in pids_with(marker):
        os.kill(pid, 9)


async def test_replica_link_relays_only_tool_traffic(
    replicas: list[ServerProc], node_on: Callable[..., AgentProc]
) -> None:
    """A genuine replica token still cannot make a holder send a node anything but calls and reads."""
    import json

    from websockets.asyncio.client import connect

    a = replicas[0]
    node_on(a, "laptop")
    token = _replica_token(a)
    async with connect(
        a.url.replace("http", "ws") + "/api/v1/cluster/link",
        additional_headers={"Authorization": f"Bearer {token}"},
        subprotocols=["cortex.cluster.v1"],  # type: ignore[list-item]
    ) as ws:

        async def ask(id_: int, params: object) -> dict[str, object]:
            await ws.send(
                json.dumps({"jsonrpc": "2.0", "id": id_, "method": "node/request", "params": params})
            )
            async with asyncio.timeout(10):
                answer: dict[str, object] = json.loads(await ws.recv())
            return answer

        bad_method = await ask(1, {"node": "laptop", "method": "initialize", "params": {}})
        assert bad_method["error"]["code"] == -32602  # type: ignore[index]
        elsewhere = await ask(2, {"node": "nobody-here", "method": "tools/call", "params": {}})
        assert elsewhere["error"]["code"] == -32004  # type: ignore[index]
        assert elsewhere["error"]["data"]["reason"] == "not_connected"  # type: ignore[index]
        garbage = await ask(3, ["not", "an", "object"])
        assert "error" in garbage
        # A method or node of another JSON type is refused the same way, not an internal error.
        for id_, params in enumerate(
            (
                {"node": "laptop", "method": ["tools/call"], "params": {}},
                {"node": "laptop", "method": {"a": 1}, "params": {}},
                {"node": ["laptop"], "method": "tools/call", "params": {}},
            ),
            start=10,
        ):
            refused = await ask(id_, params)
            assert refused["error"]["code"] == -32602, refused  # type: ignore[index]
        ok = await ask(
            4,
            {
                "node": "laptop",
                "method": "tools/call",
                "params": {
                    "name": "echo",
                    "arguments": {"text": "relayed"},
                    "_meta": {"cortex/caller": {"sub": "x", "ws": "ws1"}},
                },
            },
        )
        assert ok["result"]["content"][0]["text"] == "relayed"  # type: ignore[index]
    assert "Traceback" not in "".join(a.output)


async def test_mcp_on_another_replica_lists_calls_and_hears_list_changed(
    replicas: list[ServerProc], node_on: Callable[..., AgentProc]
) -> None:
    import mcp_types as types

    from tests.test_mcp import _text, mcp_client

    a, b, _ = replicas
    changed = asyncio.Event()

    async def on_message(message: object) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async with mcp_client(b, b.token(), on_message) as session:
        assert not any(t.name.startswith("desk__") for t in (await session.list_tools()).tools)
        agent = await asyncio.to_thread(node_on, a, "desk")
        async with asyncio.timeout(15):
            await changed.wait()
        assert "desk__echo" in {t.name for t in (await session.list_tools()).tools}
        assert _text(await session.call_tool("desk__echo", {"text": "via b"})) == "via b"
        changed.clear()
        await asyncio.to_thread(agent.stop)
        async with asyncio.timeout(15):
            await changed.wait()
        assert "desk__echo" not in {t.name for t in (await session.list_tools()).tools}


def test_revoked_node_is_unknown_on_every_replica(
    replicas: list[ServerProc], node_on: Callable[..., AgentProc]
) -> None:
    from server import admin

    a, _, _ = replicas
    agent = node_on(a, "laptop")
    for server in replicas:
        _wait_listed(server, "laptop", "connected")
    assert admin.revoke_node(a.data_dir, "laptop", a.database_url)
    assert agent.wait_output("4403", 10) or agent.wait_output("revoked", 1), "".join(agent.output[-20:])
    deadline = time.monotonic() + 5
    for server in replicas:
        with server.http(server.token()) as http:
            while (status := http.get("/api/v1/nodes/laptop").status_code) != 404:
                assert time.monotonic() < deadline, f"{server.url} still knows the revoked node ({status})"
                time.sleep(0.05)
            call = http.post("/api/v1/nodes/laptop/tools/echo/call", json={"arguments": {"text": "x"}})
            assert call.status_code == 404


def test_replica_started_later_lists_what_others_hold(
    replicas: list[ServerProc], node_on: Callable[..., AgentProc], redis_url: str
) -> None:
    a = replicas[0]
    node_on(a, "laptop")
    _wait_listed(replicas[1], "laptop", "connected")
    late = ServerProc(
        a.data_dir.parent / "late",
        args=[*REPLICA_ARGS, "--redis-url", redis_url],
        database_url=a.database_url,
    ).start()
    try:
        listed = _wait_listed(
            late, "laptop", "connected", timeout=2.0
        )  # from Redis at start, no event needed
        assert "echo" in listed["tools"]  # type: ignore[operator]
        with late.http(late.token()) as http:
            response = http.post("/api/v1/nodes/laptop/tools/echo/call", json={"arguments": {"text": "late"}})
            assert response.status_code == 200 and response.json()["content"][0]["text"] == "late"
    finally:
        late.stop()
    # It left cleanly: nobody lost the node.
    _wait_listed(replicas[1], "laptop", "connected")


def test_redis_restart_loses_nothing_for_good(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis dies and comes back empty (no persistence): the replicas announce and claim again, and a
    node held by one is listed and callable on the other again, with its tools."""
    import shutil

    from tests.support import engines

    executable = shutil.which("redis-server")
    if executable is None:
        pytest.skip("redis-server absent")
    redis = engines.RedisServer(executable).start()
    port = redis.port
    data = tmp_path / "server"
    servers = [ServerProc(data, args=[*REPLICA_ARGS, "--redis-url", redis.url]) for _ in range(2)]
    agent: AgentProc | None = None
    try:
        for server in servers:
            server.start()
        a, b = servers
        credential = a.enroll("laptop")
        root = tmp_path / "root"
        root.mkdir()
        agent = AgentProc(
            tmp_path / "home", a.url, "laptop", credential, ["--allow-root", str(root), "--no-browser"]
        )
        agent.start()
        _wait_listed(b, "laptop", "connected", 30)
        redis.kill()
        monkeypatch.setattr(engines, "free_port", lambda: port)  # the same address, empty
        redis.start()
        # A replica that knows only what is in the new Redis: it sees the node (with its tools) once the
        # holder noticed its lease was gone and claimed its links again.
        late = ServerProc(data, args=[*REPLICA_ARGS, "--redis-url", redis.url])
        servers.append(late.start())
        deadline = time.monotonic() + 20
        while True:
            with late.http(late.token()) as http:
                response = http.post(
                    "/api/v1/nodes/laptop/tools/echo/call", json={"arguments": {"text": "again"}}
                )
            if response.status_code == 200:
                break
            assert time.monotonic() < deadline, response.text
            time.sleep(0.2)
        assert response.json()["content"][0]["text"] == "again"
        for server in (b, late):
            assert "echo" in _wait_listed(server, "laptop", "connected")["tools"]  # type: ignore[operator]
    finally:
        if agent is not None:
            agent.stop()
        for server in servers:
            server.stop()
        redis.close()


async def test_caller_replica_killed_cancels_the_call_on_the_node(
    replicas: list[ServerProc], node_on: Callable[..., AgentProc]
) -> None:
    """Nobody is left to receive the result: the holder cancels the call on the node (its command stops)."""
    a, b, _ = replicas
    node_on(a, "laptop")
    await asyncio.to_thread(_wait_listed, b, "laptop", "connected")
    marker = f"705.{uuid.uuid4().int % 10**6}"
    client = AsyncClient(b.url, token=b.token())
    await client.__aenter__()
    try:
        running = asyncio.Event()
        call = client.start(
            "laptop",
            "shell_exec",
            {"command": f"echo started; sleep {marker}"},
            on_progress=lambda _p: running.set(),
        )
        async with asyncio.timeout(10):
            await running.wait()
        assert pids_with(marker), "the command did not start"
        b.kill()
        assert await asyncio.to_thread(wait_gone, pids_with(marker), 5.0), (
            "the call outlived its caller's replica"
        )
        del call  # its connection is gone with replica b
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await client.__aexit__(None, None, None)
        for pid in pids_with(marker):
            os.kill(pid, 9)


def test_newer_connection_made_while_a_replica_was_frozen_wins(
    replicas: list[ServerProc], node_on: Callable[..., AgentProc]
) -> None:
    """The node connects elsewhere while its old replica is frozen; resumed, the old replica must not
    take the node back with its stale link (it closes that one 4409 instead)."""
    import signal

    a, b, c = replicas
    first = node_on(a, "laptop")
    _wait_listed(c, "laptop", "connected")
    os.kill(a.pid, signal.SIGSTOP)
    try:
        _wait_listed(c, "laptop", "disconnected", 4 * float(LEASE) + 2)
        node_on(b, "laptop", home_tag="-second")
    finally:
        os.kill(a.pid, signal.SIGCONT)
    assert first.wait_output("4409", 15) or first.wait_output("replaced", 1), "".join(first.output[-20:])
    for server in replicas:
        _wait_listed(server, "laptop", "connected")
        with server.http(server.token()) as http:
            listing = http.post("/api/v1/nodes/laptop/tools/fs_list/call", json={"arguments": {"path": "."}})
            assert listing.status_code == 200, listing.text
            assert "marker-second" in listing.text, f"{server.url} calls the stale connection"


async def test_request_over_the_frame_limit_once_wrapped_spares_the_shared_link(
    replicas: list[ServerProc], node_on: Callable[..., AgentProc]
) -> None:
    """A body just under the frame limit passes the caller's replica but would be over it once wrapped
    for the replica link: that caller gets 422, and the calls sharing the link go on."""
    a, b, _ = replicas
    node_on(a, "laptop")
    await asyncio.to_thread(_wait_listed, b, "laptop", "connected")
    async with AsyncClient(b.url, token=b.token()) as client:
        running = asyncio.Event()
        slow = client.start(
            "laptop",
            "shell_exec",
            {"command": "echo started; sleep 2; echo done"},
            on_progress=lambda _p: running.set(),
        )
        async with asyncio.timeout(10):
            await running.wait()
        text = "x" * (FRAME - 100)
        async with httpx2.AsyncClient(
            base_url=b.url, headers={"Authorization": f"Bearer {b.token()}"}
        ) as http:
            big = await http.post(
                "/api/v1/nodes/laptop/tools/echo/call", json={"arguments": {"text": text}}, timeout=30
            )
        assert big.status_code == 422, big.text[:300]
        async with asyncio.timeout(15):
            result = await slow
        assert not result.is_error and "done" in result.text
