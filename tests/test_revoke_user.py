"""`cortex-server revoke-user`: a user's tokens die, and the user's live links close, within 2 s.

Real processes: the server runs in one, the revocation is made by the CLI in another, so it can only
reach the server through the store (the user revocation feed). Watched from outside: an RPC socket
closes with 4403, an MCP standalone stream and an MCP call in flight end, and the REST API, RPC, MCP
and the planner refuse the old token, while another user's links and a fresh token keep working.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
from starlette.testclient import TestClient
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from server import admin
from server.app import build_app
from server.config import ServerConfig
from server.store import UserRevocation
from server.user_revocation import UserRevocations
from tests.support.procs import REPO, AgentProc, ServerProc

MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def _revoke_user(server: ServerProc, *args: str) -> float:
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "revoke-user", *args, "--data-dir", str(server.data_dir)],
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return time.monotonic()


async def _rpc(server: ServerProc, token: str) -> ClientConnection:
    return await connect(
        server.url.replace("http", "ws") + "/api/v1/rpc",
        additional_headers={"Authorization": f"Bearer {token}"},
        subprotocols=["cortex.v1"],  # type: ignore[list-item]
    )


async def _rpc_call(ws: ClientConnection, ident: int, method: str, params: dict[str, Any]) -> dict[str, Any]:
    await ws.send(json.dumps({"jsonrpc": "2.0", "id": ident, "method": method, "params": params}))
    async with asyncio.timeout(10):
        while True:
            message = json.loads(await ws.recv())
            if message.get("id") == ident:
                return dict(message)


async def _mcp_session(http: httpx2.AsyncClient, url: str, token: str) -> dict[str, str]:
    auth = {"Authorization": f"Bearer {token}", **MCP_HEADERS}
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    response = await http.post(url, json=init, headers=auth)
    assert response.status_code == 200, response.text
    headers = {
        **auth,
        "mcp-session-id": response.headers["mcp-session-id"],
        "mcp-protocol-version": "2025-11-25",
    }
    done = await http.post(
        url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers
    )
    assert done.status_code == 202
    return headers


async def _stream_until_end(
    http: httpx2.AsyncClient, method: str, url: str, status: int = 200, **kwargs: Any
) -> float:
    """Open a streamed response, read it to its end; the moment it ended (monotonic)."""
    async with http.stream(method, url, **kwargs) as response:
        assert response.status_code == status
        if status == 401:
            assert 'error="invalid_token"' in response.headers["www-authenticate"]
        async for _ in response.aiter_bytes():
            pass
    return time.monotonic()


async def test_revoke_user_closes_live_links_and_refuses_tokens(
    server_proc: ServerProc, start_node: Callable[..., AgentProc]
) -> None:
    start_node("laptop")
    alice, bob = server_proc.token("alice", "ws1"), server_proc.token("bob", "ws1")
    url = server_proc.url + "/mcp"
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(60.0)) as http:
        alice_rpc, bob_rpc = await _rpc(server_proc, alice), await _rpc(server_proc, bob)
        assert "result" in await _rpc_call(alice_rpc, 1, "nodes/list", {})
        session = await _mcp_session(http, url, alice)
        standalone = asyncio.create_task(
            _stream_until_end(http, "GET", url, headers={**session, "Accept": "text/event-stream"})
        )
        sleep_call = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "laptop__shell_exec", "arguments": {"command": "sleep 30"}},
        }
        # A call with no progress token is answered as one JSON body (server/mcp_json_answer.py): revoked
        # before its answer, it is answered 401. One with a progress token streams: its stream is ended.
        in_flight = asyncio.create_task(
            _stream_until_end(http, "POST", url, status=401, json=sleep_call, headers=session)
        )
        streaming_call = {
            **sleep_call,
            "id": 5,
            "params": {**sleep_call["params"], "_meta": {"progressToken": "p5"}},  # type: ignore[dict-item]
        }
        in_flight_sse = asyncio.create_task(
            _stream_until_end(http, "POST", url, json=streaming_call, headers=session)
        )
        rpc_call = asyncio.create_task(
            _rpc_call(
                alice_rpc,
                3,
                "tools/call",
                {"node": "laptop", "name": "shell_exec", "arguments": {"command": "sleep 30"}},
            )
        )
        await asyncio.sleep(0.5)  # let the calls reach the node (nothing below depends on it)
        assert not standalone.done() and not in_flight.done() and not in_flight_sse.done()

        revoked_at = await asyncio.to_thread(_revoke_user, server_proc, "alice")

        async with asyncio.timeout(5):
            with pytest.raises(ConnectionClosed):
                await rpc_call
            rpc_closed = time.monotonic()
            assert alice_rpc.close_code == 4403
            mcp_stream_ended = await standalone
            mcp_call_ended = await in_flight
            mcp_sse_call_ended = await in_flight_sse
        ended = (rpc_closed, mcp_stream_ended, mcp_call_ended, mcp_sse_call_ended)
        latencies = [t - revoked_at for t in ended]
        print(
            "\nrevoke-user to close (rpc, mcp stream, mcp call, mcp streaming call): "
            f"{[f'{x * 1000:.0f} ms' for x in latencies]}"
        )
        assert max(latencies) < 2.0

        # The old token is refused everywhere.
        bearer = {"Authorization": f"Bearer {alice}"}
        assert (await http.get(server_proc.url + "/api/v1/nodes", headers=bearer)).status_code == 401
        assert (await http.post(url, json=sleep_call, headers={**MCP_HEADERS, **bearer})).status_code == 401
        planner = await http.post(
            server_proc.url + "/api/v1/planner/runs", json={"goal": "x"}, headers=bearer
        )
        assert planner.status_code == 401
        with pytest.raises(InvalidStatus) as refused:
            await _rpc(server_proc, alice)
        assert refused.value.response.status_code == 401

        # Bob is untouched, and a token minted after the revocation works.
        assert "result" in await _rpc_call(bob_rpc, 4, "nodes/list", {})
        await bob_rpc.close()
        await asyncio.sleep(max(0.0, 1.05 - (time.time() % 1)))  # iat is whole seconds: the next one
        fresh = server_proc.token("alice", "ws1")
        assert (
            await http.get(server_proc.url + "/api/v1/nodes", headers={"Authorization": f"Bearer {fresh}"})
        ).status_code == 200


def test_workspace_scope_and_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "srv"
    ws1, ws2 = (admin.issue_token(data_dir, "carol", ws, "member", 600) for ws in ("ws1", "ws2"))
    admin.revoke_user(data_dir, "carol", "ws2")
    # A server started after the revocation knows it (it is in the store, not in a process).
    with TestClient(build_app(ServerConfig(data_dir=data_dir))) as client:
        assert client.get("/api/v1/nodes", headers={"Authorization": f"Bearer {ws1}"}).status_code == 200
        assert client.get("/api/v1/nodes", headers={"Authorization": f"Bearer {ws2}"}).status_code == 401


def test_revocation_covers_tokens_up_to_its_time() -> None:
    view = UserRevocations()
    assert not view.covers("dave", "ws1", 100)
    view.apply(UserRevocation(1, "dave", None, 100.5))
    view.apply(UserRevocation(2, "erin", "ws1", 200.0))
    assert view.covers("dave", "ws1", 100) and view.covers("dave", "ws9", 99)
    assert not view.covers("dave", "ws1", 101)  # issued after the revocation
    assert view.covers("erin", "ws1", 200) and not view.covers("erin", "ws2", 150)
    assert not view.covers("frank", "ws1", 1)
    assert view.last_seq == 2 and math.isfinite(view.last_seq)


def test_cli_refuses_bad_names(tmp_path: Path) -> None:
    from server.cli import main

    data_dir = str(tmp_path / "srv")
    assert main(["revoke-user", "bad\x1bname", "--data-dir", data_dir]) == 1
    assert main(["revoke-user", "alice", "--workspace", "Not A Workspace", "--data-dir", data_dir]) == 1
    assert main(["revoke-user", "alice", "--workspace", "ws1", "--data-dir", data_dir]) == 0
    from server.store import ServerStore

    with ServerStore(tmp_path / "srv") as store:
        assert [(r.sub, r.workspace) for r in store.user_revocations_after(0)] == [("alice", "ws1")]
