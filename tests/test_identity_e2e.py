"""Tier (c) for identity: a real server process, real agents, real websockets, on 127.0.0.1 only.

Covers refusals at the tunnel and RPC handshakes (no WebSocket opens), the OAuth endpoint's errors,
revocation from a separate process (close 4403, measured), in-band renewal and the 4401 close of an
unrenewed connection, workspace boundaries on REST and client RPC, the caller identity in the node's
audit log, `cortex-agent login` and secret hygiene (argv, logs), and optional mTLS end to end.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect

from sdk import AsyncClient
from server.auth import TokenAuthority
from server.store import ServerStore
from spec import errors
from tests.support.procs import REPO, AgentProc, ServerProc

SUBPROTOCOL = "cortex.v1"
JWT_PATTERN = re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}")


# -- helpers ---------------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORTEX_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _authority(data_dir: Path, **kwargs: Any) -> TokenAuthority:
    """A TokenAuthority with the data dir's own key: what the server would mint, minted here."""
    with ServerStore(data_dir) as store:
        key = store.load_or_create_signing_key()
    return TokenAuthority(key, **kwargs)


def _ws_base(server: ServerProc) -> str:
    return server.url.replace("https://", "wss://").replace("http://", "ws://")


def _oauth(server: ServerProc, data: dict[str, str]) -> httpx2.Response:
    with httpx2.Client(base_url=server.url, timeout=10) as http:
        return http.post("/oauth/token", data=data)


async def _refused_status(url: str, token: str | None, ssl_context: ssl.SSLContext | None = None) -> int:
    """Open a WebSocket that must be refused at the handshake; return the HTTP status it got."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    with pytest.raises(websockets.InvalidStatus) as info:
        async with asyncio.timeout(10):
            ws = await connect(url, additional_headers=headers, subprotocols=[SUBPROTOCOL], ssl=ssl_context)  # type: ignore[list-item]
            await ws.close()  # only reached if a socket opened: the test fails on the raises
    return int(info.value.response.status_code)


async def _raw_node(server: ServerProc, token: str) -> ClientConnection:
    """A hand-driven node: answer initialize and tools/list so the server registers it."""
    ws = await connect(
        _ws_base(server) + "/api/v1/nodes/connect",
        additional_headers={"Authorization": f"Bearer {token}"},
        subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
        compression=None,
    )
    async with asyncio.timeout(10):
        for _ in range(3):
            message = json.loads(await ws.recv())
            method, ident = message.get("method"), message.get("id")
            if method == "initialize":
                result: dict[str, Any] = {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {"tools": {"listChanged": False}},
                    "serverInfo": {"name": "raw", "version": "0"},
                }
                await ws.send(json.dumps({"jsonrpc": "2.0", "id": ident, "result": result}))
            elif method == "tools/list":
                await ws.send(json.dumps({"jsonrpc": "2.0", "id": ident, "result": {"tools": []}}))
                return ws
    raise AssertionError("the server never asked for tools/list")


async def _rpc_call(ws: ClientConnection, ident: int, method: str, params: dict[str, Any]) -> dict[str, Any]:
    await ws.send(json.dumps({"jsonrpc": "2.0", "id": ident, "method": method, "params": params}))
    async with asyncio.timeout(15):
        while True:
            message: dict[str, Any] = json.loads(await ws.recv())
            if message.get("id") == ident:
                return message


async def _echo(server: ServerProc, node: str, text: str, ssl_context: ssl.SSLContext | None = None) -> str:
    async with AsyncClient(server.url, token=server.token(), ssl_context=ssl_context) as client:
        async with asyncio.timeout(15):
            return (await client.call(node, "echo", {"text": text})).text


# -- handshake refusals ----------------------------------------------------------------------------


async def test_tunnel_refuses_bad_tokens_and_keeps_serving(
    server_proc: ServerProc, start_node: Callable[..., AgentProc]
) -> None:
    start_node("steady")
    tunnel = _ws_base(server_proc) + "/api/v1/nodes/connect"
    server_proc.enroll("shadow")
    authority = _authority(server_proc.data_dir)
    stale = _authority(server_proc.data_dir, clock=lambda: time.time() - 1000)
    expired, _ = stale.mint_node_token("shadow", "ws1")
    assert await _refused_status(tunnel, None) == 401
    assert await _refused_status(tunnel, "garbage") == 401
    assert await _refused_status(tunnel, "a.b.c.d.e") == 401
    assert await _refused_status(tunnel, expired) == 401
    # A genuine, current user token in the wrong place: 403.
    assert await _refused_status(tunnel, server_proc.token()) == 403
    # Node A's credential only ever yields tokens for A; a token for an unenrolled name is refused.
    ghost, _ = authority.mint_node_token("ghost", "ws1")
    assert await _refused_status(tunnel, ghost) == 403
    # Revoked: a token minted before the revocation is dead at once.
    early, _ = authority.mint_node_token("shadow", "ws1")
    revoke = await asyncio.create_subprocess_exec(
        *[
            sys.executable,
            "-m",
            "server.cli",
            "revoke-node",
            "shadow",
            "--data-dir",
            str(server_proc.data_dir),
        ],
        env=_env(),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    async with asyncio.timeout(30):
        assert await revoke.wait() == 0
    # 403 from the store lookup, or 401 (`revoked`) once the feed has told the token check.
    assert await _refused_status(tunnel, early) in (401, 403)
    # The refusals are logged by reason, never with the token.
    log = "".join(server_proc.output)
    for secret in (expired, early, ghost):
        assert secret not in log
    assert await _echo(server_proc, "steady", "still serving") == "still serving"


async def test_node_token_is_useless_on_the_api(server_proc: ServerProc) -> None:
    server_proc.enroll("probe")
    node_token, _ = _authority(server_proc.data_dir).mint_node_token("probe", "ws1")
    with server_proc.http(node_token) as http:
        response = http.get("/api/v1/nodes")
        assert response.status_code == 403 and response.json()["error"] == "forbidden"
        assert http.get("/api/v1/nodes/probe").status_code == 403
    with server_proc.http("garbage") as http:
        assert http.get("/api/v1/nodes").status_code == 401
    rpc = _ws_base(server_proc) + "/api/v1/rpc"
    assert await _refused_status(rpc, node_token) == 403
    assert await _refused_status(rpc, "garbage") == 401
    assert await _refused_status(rpc, None) == 401


def test_oauth_token_endpoint_errors(server_proc: ServerProc) -> None:
    credential = server_proc.enroll("oauthnode")
    good = _oauth(
        server_proc,
        {"grant_type": "client_credentials", "client_id": "oauthnode", "client_secret": credential},
    )
    assert good.status_code == 200
    body = good.json()
    assert (
        body["token_type"] == "Bearer" and body["expires_in"] == 300 and body["access_token"].count(".") == 2
    )
    assert good.headers["cache-control"] == "no-store"
    for data in (
        {"grant_type": "client_credentials", "client_id": "oauthnode", "client_secret": credential + "x"},
        {"grant_type": "client_credentials", "client_id": "nobody", "client_secret": credential},
        {"grant_type": "client_credentials", "client_id": "oauthnode"},
    ):
        bad = _oauth(server_proc, data)
        assert bad.status_code == 401 and bad.json()["error"] == "invalid_client"
    wrong_grant = _oauth(
        server_proc, {"grant_type": "password", "client_id": "oauthnode", "client_secret": credential}
    )
    assert wrong_grant.status_code == 400 and wrong_grant.json()["error"] == "unsupported_grant_type"
    assert credential not in "".join(server_proc.output)


# -- revocation ------------------------------------------------------------------------------------


def test_revoke_from_another_process_closes_the_live_node(
    server_proc: ServerProc, start_node: Callable[..., AgentProc]
) -> None:
    agent = start_node("victim")
    start_node("bystander")
    with server_proc.events() as stream:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "server.cli",
                "revoke-node",
                "victim",
                "--data-dir",
                str(server_proc.data_dir),
            ],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        exited = time.monotonic()
        assert done.returncode == 0, done.stderr
        closed_at = None
        for event, data in stream.items(deadline=exited + 10):
            if event == "node.disconnected" and data["name"] == "victim":
                closed_at = time.monotonic()
                break
    assert closed_at is not None, "no node.disconnected for the revoked node"
    latency = closed_at - exited
    print(f"\nrevoke-to-close latency: {latency * 1000:.0f} ms")
    assert latency < 2.0
    # The agent saw close code 4403, and its credential no longer buys tokens.
    assert agent.wait_output("code 4403", 10), "".join(agent.output[-20:])
    refused = _oauth(
        server_proc,
        {"grant_type": "client_credentials", "client_id": "victim", "client_secret": agent.credential},
    )
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"
    with server_proc.http() as http:
        assert http.get("/api/v1/nodes/victim").status_code == 404
        call = http.post("/api/v1/nodes/bystander/tools/echo/call", json={"arguments": {"text": "ok"}})
        assert call.status_code == 200 and call.json()["content"][0]["text"] == "ok"


# -- token lifetime on a live link ---------------------------------------------------------------------


@pytest.fixture
def short_ttl_server(tmp_path: Path) -> Iterator[ServerProc]:
    server = ServerProc(
        tmp_path / "server", args=["--heartbeat-interval", "1", "--node-token-ttl", "3"]
    ).start()
    try:
        yield server
    finally:
        server.stop()


def test_in_band_renewal_keeps_a_node_connected(short_ttl_server: ServerProc, tmp_path: Path) -> None:
    server = short_ttl_server
    credential = server.enroll("renewer")
    agent = AgentProc(tmp_path / "renewer-home", server.url, "renewer", credential, ["--no-browser"])
    try:
        with server.events() as stream:
            agent.start()
            connected_at = None
            drops: list[str] = []
            calls = 0
            with server.http(server.token()) as http:
                for event, data in stream.items(deadline=time.monotonic() + 30):
                    if data.get("name") != "renewer":
                        continue
                    if event == "node.connected":
                        assert connected_at is None, "the node reconnected"
                        connected_at = time.monotonic()
                    elif event == "node.disconnected":
                        drops.append(event)
                        break
                    if connected_at is not None:
                        # Heartbeat updates arrive every second: call through the link on each.
                        result = http.post(
                            "/api/v1/nodes/renewer/tools/echo/call", json={"arguments": {"text": str(calls)}}
                        )
                        assert result.status_code == 200, result.text
                        calls += 1
                        if time.monotonic() - connected_at > 10.5:  # > 3 token lifetimes of 3 s
                            break
        assert connected_at is not None and not drops, "".join(agent.output[-40:])
        assert time.monotonic() - connected_at > 10
        assert calls >= 5
        renewals = sum("access token renewed" in line for line in agent.output)
        assert renewals >= 3, "".join(agent.output[-30:])
        assert not any("4401" in line for line in agent.output)
    finally:
        agent.stop()


async def test_unrenewed_connection_is_closed_4401(short_ttl_server: ServerProc) -> None:
    server = short_ttl_server
    server.enroll("lazy")
    # Minted 4 s ago for 2 s: expired 2 s ago, still inside the 5 s leeway, so the handshake accepts it
    # and the server must close the link when the leeway runs out (in about 3 s) unless it is renewed.
    token, ttl = _authority(server.data_dir, clock=lambda: time.time() - 4).mint_node_token(
        "lazy", "ws1", ttl=2
    )
    assert ttl == 2
    started = time.monotonic()
    ws = await _raw_node(server, token)
    async with asyncio.timeout(20):
        with pytest.raises(websockets.ConnectionClosed) as info:
            while True:
                message = json.loads(await ws.recv())
                if message.get("method") == "ping":  # keep the heartbeat happy: only the token lapses
                    await ws.send(json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": {}}))
    assert info.value.rcvd is not None and info.value.rcvd.code == 4401
    assert 1.5 < time.monotonic() - started < 6


async def test_refresh_with_another_nodes_token_is_refused(short_ttl_server: ServerProc) -> None:
    server = short_ttl_server
    server.enroll("alpha")
    server.enroll("beta")
    authority = _authority(server.data_dir)
    token, _ = authority.mint_node_token("alpha", "ws1", ttl=60)
    ws = await _raw_node(server, token)
    try:
        other, _ = authority.mint_node_token("beta", "ws1", ttl=60)
        reply = await _rpc_call(ws, 9001, "auth/refresh", {"access_token": other})
        assert reply["error"]["code"] == errors.INVALID_PARAMS
        user = server.token()
        reply = await _rpc_call(ws, 9002, "auth/refresh", {"access_token": user})
        assert reply["error"]["code"] == errors.UNAUTHORIZED
        fresh, _ = authority.mint_node_token("alpha", "ws1", ttl=60)
        reply = await _rpc_call(ws, 9003, "auth/refresh", {"access_token": fresh})
        assert reply["result"]["expires_at"] > time.time() + 30
    finally:
        await ws.close()


# -- workspaces ------------------------------------------------------------------------------------


async def test_workspace_boundaries_on_every_surface(
    server_proc: ServerProc, start_node: Callable[..., AgentProc]
) -> None:
    start_node("one", workspace="ws1")
    two = start_node("two", workspace="ws2")
    member2 = server_proc.token("carol", "ws2")
    with server_proc.http(member2) as http:
        assert [n["name"] for n in http.get("/api/v1/nodes").json()["nodes"]] == ["two"]
        for node in ("one", "ghost"):  # another workspace's node looks exactly like a missing one
            for path in (
                f"/api/v1/nodes/{node}",
                f"/api/v1/nodes/{node}/tools",
                f"/api/v1/nodes/{node}/audit",
            ):
                response = http.get(path)
                assert response.status_code == 404, path
                assert response.json()["error"] == "node_not_found"
            call = http.post(f"/api/v1/nodes/{node}/tools/echo/call", json={"arguments": {"text": "x"}})
            assert call.status_code == 404 and call.json()["error"] == "node_not_found"
        ok = http.post("/api/v1/nodes/two/tools/echo/call", json={"arguments": {"text": "from carol"}})
        assert ok.status_code == 200 and ok.json()["content"][0]["text"] == "from carol"
        assert http.get("/api/v1/nodes/two/audit").status_code == 200
    with server_proc.http() as http:  # admin of ws1 sees every workspace
        names = {n["name"] for n in http.get("/api/v1/nodes").json()["nodes"]}
        assert {"one", "two"} <= names
        assert http.get("/api/v1/nodes/two").json()["workspace"] == "ws2"

    async with connect(
        _ws_base(server_proc) + "/api/v1/rpc",
        additional_headers={"Authorization": f"Bearer {member2}"},
        subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
    ) as ws:
        listed = await _rpc_call(ws, 1, "nodes/list", {})
        assert [n["name"] for n in listed["result"]["nodes"]] == ["two"]
        ident = 10
        for node in ("one", "ghost"):
            for method, params in (
                ("tools/list", {"node": node}),
                ("tools/call", {"node": node, "name": "echo", "arguments": {"text": "x"}}),
                ("audit/read", {"node": node, "after_seq": 0, "limit": 5}),
            ):
                ident += 1
                reply = await _rpc_call(ws, ident, method, params)
                assert reply["error"]["code"] == errors.NODE_NOT_FOUND, (method, node, reply)
        reply = await _rpc_call(
            ws, 99, "tools/call", {"node": "two", "name": "echo", "arguments": {"text": "rpc"}}
        )
        assert reply["result"]["content"][0]["text"] == "rpc"

    # The caller identity reached the node and is in its audit log.
    audit_file = two.home / "audit.log"
    if not audit_file.exists():
        pytest.skip("the node wrote no audit.log (desktop_agent.audit not active)")
    records = [json.loads(line) for line in audit_file.read_text().splitlines() if line.strip()]
    requested = [r for r in records if r.get("event") == "tool.requested" and r.get("tool") == "echo"]
    assert {"sub": "carol", "ws": "ws2"} in [r.get("caller") for r in requested]


# -- login and secret hygiene ----------------------------------------------------------------------


def test_login_from_stdin_and_no_secret_leaks(server_proc: ServerProc, tmp_path: Path) -> None:
    credential = server_proc.enroll("quiet")
    home = tmp_path / "quiet-home"
    login = subprocess.run(
        [
            sys.executable,
            "-m",
            "desktop_agent.cli",
            "login",
            "--server",
            server_proc.url,
            "--name",
            "quiet",
            "--home",
            str(home),
        ],
        input=credential + "\n",
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert login.returncode == 0, login.stderr
    assert credential not in login.stdout + login.stderr
    stored = home / "credentials.json"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert json.loads(stored.read_text()) == {
        "server": server_proc.url,
        "name": "quiet",
        "credential": credential,
    }

    # Run from the stored credential only: nothing secret in the environment or argv.
    agent = AgentProc(home, server_proc.url, "quiet", "", ["--no-browser"])
    try:
        with server_proc.events() as stream:
            agent.start()
            seen = any(
                e == "node.connected" and d["name"] == "quiet"
                for e, d in stream.items(deadline=time.monotonic() + 30)
            )
        assert seen, "".join(agent.output[-30:])
        with server_proc.http(server_proc.token()) as http:
            call = http.post("/api/v1/nodes/quiet/tools/echo/call", json={"arguments": {"text": "hush"}})
            assert call.status_code == 200
        cmdline = Path(f"/proc/{agent.pid}/cmdline").read_bytes().decode(errors="replace")
        assert credential not in cmdline and "quiet" in cmdline
        environ = Path(f"/proc/{agent.pid}/environ").read_bytes().decode(errors="replace")
        assert credential not in environ
    finally:
        agent.stop()
    logs = "".join(agent.output) + "".join(server_proc.output)
    assert credential not in logs
    assert credential[4:20] not in logs  # not even a piece of it
    leak = JWT_PATTERN.search(logs)
    assert leak is None, logs[max(0, leak.start() - 300) : leak.start() + 20]


# -- mTLS ------------------------------------------------------------------------------------------


def _certs(out: Path, *commands: list[str]) -> None:
    for args in commands:
        done = subprocess.run(
            [sys.executable, "-m", "server.cli", "certs", *args, "--out", str(out)],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr


def _client_context(pki: Path, name: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if name is not None:
        context.load_cert_chain(str(pki / f"{name}.crt"), str(pki / f"{name}.key"))
    return context


async def _connected_over_tls(server: ServerProc, name: str, context: ssl.SSLContext) -> bool:
    """Read the server's SSE stream over mTLS until *name* is connected (bounded)."""
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    async with (
        asyncio.timeout(30),
        httpx2.AsyncClient(base_url=server.url, verify=context, timeout=None) as http,
        http.stream("GET", "/api/v1/events", headers=headers) as response,
    ):
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                data = json.loads(line[5:])
                if data.get("name") == name and data.get("status") == "connected":
                    return True
    return False


async def test_mtls_end_to_end(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    _certs(pki, ["init"], ["client", "tlsnode"], ["client", "operator"])
    assert stat.S_IMODE((pki / "ca.key").stat().st_mode) == 0o600
    server = ServerProc(
        tmp_path / "server",
        args=[
            "--heartbeat-interval",
            "1",
            "--tls-cert",
            str(pki / "server.crt"),
            "--tls-key",
            str(pki / "server.key"),
            "--client-ca",
            str(pki / "ca.crt"),
        ],
    ).start()
    agent: AgentProc | None = None
    try:
        assert server.url.startswith("https://")
        credential = server.enroll("tlsnode")
        agent = AgentProc(
            tmp_path / "tls-home",
            server.url,
            "tlsnode",
            credential,
            [
                "--no-browser",
                "--ca",
                str(pki / "ca.crt"),
                "--client-cert",
                str(pki / "tlsnode.crt"),
                "--client-key",
                str(pki / "tlsnode.key"),
            ],
        ).start()
        operator = _client_context(pki, "operator")
        assert await _connected_over_tls(server, "tlsnode", operator), "".join(agent.output[-30:])
        assert await _echo(server, "tlsnode", "over mtls", ssl_context=operator) == "over mtls"

        # No client certificate: refused at the TLS level, for HTTP and for WebSockets alike.
        bare = _client_context(pki, None)
        with pytest.raises(httpx2.TransportError):
            async with httpx2.AsyncClient(base_url=server.url, verify=bare, timeout=10) as http:
                await http.get("/healthz")
        with pytest.raises((OSError, websockets.ConnectionClosed, websockets.InvalidMessage)) as info:
            async with asyncio.timeout(10):
                ws = await connect(
                    _ws_base(server) + "/api/v1/rpc",
                    additional_headers={"Authorization": f"Bearer {server.admin_token}"},
                    subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
                    ssl=bare,
                )
                await ws.recv()
        assert not isinstance(info.value, websockets.InvalidStatus)
        # Plain HTTP to the TLS port gets nowhere either.
        with pytest.raises(httpx2.TransportError):
            async with httpx2.AsyncClient(base_url=server.url.replace("https", "http"), timeout=5) as http:
                await http.get("/healthz")
        assert await _echo(server, "tlsnode", "still up", ssl_context=operator) == "still up"
    finally:
        if agent is not None:
            agent.stop()
        server.stop()
