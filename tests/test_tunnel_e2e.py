"""Tier (c): a real server process, real agent processes, the SDK and the CLI on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
import websockets

from sdk import AsyncClient, AuthError, Client, InvalidArguments, NodeNotFound
from spec import errors
from tests.support.procs import REPO, AgentProc, ServerProc, raw_node_socket


def _cli(server: ServerProc, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORTEX_")}
    env["PYTHONPATH"] = str(REPO)
    env["CORTEX_TOKEN"] = token or server.admin_token
    env["CORTEX_SERVER_HOME"] = str(server.data_dir / "no-demo")
    return subprocess.run(
        [sys.executable, "-m", "sdk.cli", "--server", server.url, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_echo_through_sdk_and_cli(server_proc: ServerProc, start_node: Callable[..., AgentProc]) -> None:
    start_node("laptop")
    with Client(server_proc.url, token=server_proc.token()) as client:
        assert client.call("laptop", "echo", {"text": "hi there"}).text == "hi there"
        names = [n["name"] for n in client.nodes()]
        assert "laptop" in names
        info = client.call("laptop", "system_info")
        assert info.structured is not None and info.structured["os"] == "Linux"
        assert "Debian" in info.structured["os_release"] or info.structured["os_release"]
    done = _cli(server_proc, "call", "laptop", "echo", '{"text":"hi"}')
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "hi"


def test_cli_exit_codes(server_proc: ServerProc, start_node: Callable[..., AgentProc]) -> None:
    start_node("laptop")
    assert _cli(server_proc, "call", "ghost", "echo", '{"text":"x"}').returncode == 4
    assert _cli(server_proc, "call", "laptop", "echo", "not json").returncode == 2
    assert _cli(server_proc, "nodes", token="garbage").returncode == 3
    assert _cli(server_proc, "frobnicate").returncode == 2


def test_rest_surface(server_proc: ServerProc, start_node: Callable[..., AgentProc]) -> None:
    start_node("laptop")
    with server_proc.http(server_proc.token()) as http:
        node = http.get("/api/v1/nodes/laptop").json()
        assert node["status"] == "connected" and "echo" in node["tools"]
        assert node["info"]["agent_version"]
        tools = http.get("/api/v1/nodes/laptop/tools").json()["tools"]
        assert {t["name"] for t in tools} >= {"echo", "system_info"}
        result = http.post("/api/v1/nodes/laptop/tools/echo/call", json={"arguments": {"text": "yo"}})
        assert result.status_code == 200 and result.json()["content"][0]["text"] == "yo"
        assert http.get("/api/v1/nodes/ghost").status_code == 404
        assert http.post("/api/v1/nodes/laptop/tools/nope/call", json={"arguments": {}}).status_code == 404
        bad = http.post("/api/v1/nodes/laptop/tools/echo/call", json={"arguments": {"text": 5}})
        assert bad.status_code == 422 and bad.json()["error"] == "invalid_arguments"
        assert http.get("/healthz").json()["status"] == "ok"
    with server_proc.http("not-a-token") as http:
        assert http.get("/api/v1/nodes").status_code == 401


def test_sdk_errors(server_proc: ServerProc, start_node: Callable[..., AgentProc]) -> None:
    start_node("laptop")
    with Client(server_proc.url, token=server_proc.token()) as client:
        with pytest.raises(NodeNotFound):
            client.call("ghost", "echo", {"text": "x"})
        with pytest.raises(InvalidArguments):
            client.call("laptop", "echo", {})
    with pytest.raises(AuthError):
        Client(server_proc.url, token="nope")


def test_agent_reconnects_after_server_restart(
    server_proc: ServerProc, start_node: Callable[..., AgentProc]
) -> None:
    start_node("laptop")
    server_proc.kill()
    server_proc.start()
    server_proc.wait_status("laptop", "connected", timeout=40)
    with Client(server_proc.url, token=server_proc.token()) as client:
        assert client.call("laptop", "echo", {"text": "back"}).text == "back"


def test_newer_connection_replaces_older(
    server_proc: ServerProc, start_node: Callable[..., AgentProc], tmp_path
) -> None:
    first = start_node("laptop")
    assert first.proc is not None
    second = AgentProc(tmp_path / "second", server_proc.url, "laptop", first.credential, ["--no-browser"])
    with server_proc.events() as stream:
        second.start()
        seen = [
            e
            for e, d in stream.items(deadline=time.monotonic() + 20)
            if d["name"] == "laptop" and e == "node.connected"
        ][:1]
    try:
        assert seen
        with Client(server_proc.url, token=server_proc.token()) as client:
            assert client.call("laptop", "echo", {"text": "x"}).text == "x"
    finally:
        second.stop()
        first.stop()


async def test_bad_frames_from_a_node(server_proc: ServerProc) -> None:
    ws = await raw_node_socket(server_proc, "rawnode")
    async with asyncio.timeout(20):
        first = json.loads(await ws.recv())
        assert first["method"] == "initialize"
        await ws.send("{not json")
        assert json.loads(await ws.recv())["error"]["code"] == errors.PARSE_ERROR
        await ws.send('{"jsonrpc": "2.0", "id": 1}')
        assert json.loads(await ws.recv())["error"]["code"] == errors.INVALID_REQUEST
        await ws.send('{"jsonrpc": "2.0", "method": "no/such", "id": 2}')
        assert json.loads(await ws.recv())["error"]["code"] == errors.METHOD_NOT_FOUND
        await ws.send('{"jsonrpc": "2.0", "method": "ping", "id": 3}')
        assert json.loads(await ws.recv()) == {"jsonrpc": "2.0", "result": {}, "id": 3}
    await ws.close()


async def test_oversized_frame_closes_only_that_connection(
    server_proc: ServerProc, start_node: Callable[..., AgentProc]
) -> None:
    start_node("steady")
    ws = await raw_node_socket(server_proc, "bignode")
    async with asyncio.timeout(30):
        await ws.recv()
        with pytest.raises(websockets.ConnectionClosed) as info:
            await ws.send("x" * (17 * 1024 * 1024))
            while True:
                await ws.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009
        async with AsyncClient(server_proc.url, token=server_proc.token()) as client:
            assert (await client.call("steady", "echo", {"text": "still here"})).text == "still here"


async def test_sdk_and_node_both_call_at_once(
    server_proc: ServerProc, start_node: Callable[..., AgentProc]
) -> None:
    start_node("laptop")
    async with AsyncClient(server_proc.url, token=server_proc.token()) as client:
        async with asyncio.timeout(30):
            results = await asyncio.gather(
                *(client.call("laptop", "echo", {"text": str(i)}) for i in range(50))
            )
    assert [r.text for r in results] == [str(i) for i in range(50)]
