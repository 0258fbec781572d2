"""Two real `cortex-server serve --redis-url` replicas share their per-process state through a real Redis.

The replicas share one data directory (the store) and one redis-server: failed `/oauth/token` attempts
counted on one replica block the same client on the other (a guesser gets no fresh allowance per
replica), and a call made through one replica is in `GET /api/v1/calls` of the other.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.support.mcp_http import mcp_answer
from tests.support.procs import AgentProc, ServerProc

FRAME = 256 * 1024
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.fixture
def replicas(tmp_path: Path, redis_url: str) -> Iterator[tuple[ServerProc, ServerProc]]:
    data = tmp_path / "data"
    args = ["--redis-url", redis_url, "--max-frame-bytes", str(FRAME)]  # a small frame: results upload
    one = ServerProc(data, args=args).start()
    two = ServerProc(data, args=args)
    try:
        two.start()
        yield one, two
    finally:
        two.stop()
        one.stop()


def _bad_token_request(server: ServerProc, client_id: str) -> int:
    with server.http() as http:
        response = http.post(
            "/oauth/token",
            data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": "cnc_wrong"},
        )
    return response.status_code


def test_oauth_failures_on_one_replica_block_on_the_other(replicas: tuple[ServerProc, ServerProc]) -> None:
    one, two = replicas
    one.enroll("n1")
    for _ in range(5):  # CLIENT_BACKOFF: five free failures, all on replica one
        assert _bad_token_request(one, "n1") == 401
    assert _bad_token_request(one, "n1") == 401  # the sixth is counted and blocks the client ...
    assert _bad_token_request(two, "n1") == 429  # ... on every replica
    assert _bad_token_request(two, "someone-else") == 401  # other clients are not slowed


def test_a_call_through_one_replica_is_listed_by_the_other(
    replicas: tuple[ServerProc, ServerProc], tmp_path: Path
) -> None:
    one, two = replicas
    agent = AgentProc(tmp_path / "home", one.url, "n1", one.enroll("n1"), ["--no-browser"]).start()
    try:
        one.wait_status("n1", "connected", timeout=60)
        with one.http() as http:
            call = http.post("/api/v1/nodes/n1/tools/echo/call", json={"arguments": {"text": "across"}})
            assert call.status_code == 200, call.text
        with two.http() as http:
            listed = http.get("/api/v1/calls").json()["calls"]
        # The record is pushed in the background: a bounded wait (10 s) on the other replica's answer.
        deadline = time.monotonic() + 10
        while not any(c["result"] == "across" for c in listed) and time.monotonic() < deadline:
            time.sleep(0.01)
            with two.http() as http:
                listed = http.get("/api/v1/calls").json()["calls"]
        assert [c["node"] for c in listed if c["result"] == "across"] == ["n1"]
        with two.http(two.token("bob", "ws2")) as http:
            assert http.get("/api/v1/calls").json()["calls"] == []  # another workspace sees nothing
    finally:
        agent.stop()


def _mcp(
    http: httpx2.Client, url: str, token: str, body: dict[str, object], session: str | None
) -> httpx2.Response:
    headers = {"Authorization": f"Bearer {token}", **MCP_HEADERS}
    if session is not None:
        headers |= {"mcp-session-id": session, "mcp-protocol-version": "2025-11-25"}
    return http.post(url, json=body, headers=headers)


def test_an_artifact_written_through_one_replica_is_read_through_the_other(
    replicas: tuple[ServerProc, ServerProc], tmp_path: Path
) -> None:
    one, two = replicas
    root = tmp_path / "root"
    root.mkdir()
    text = "0123456789abcdef" * (FRAME // 8)  # twice the frame: the node uploads the result in chunks
    (root / "big.txt").write_text(text)
    args = ["--no-browser", "--allow-root", str(root)]
    agent = AgentProc(tmp_path / "home", one.url, "n1", one.enroll("n1"), args).start()
    token = one.token()
    try:
        one.wait_status("n1", "connected", timeout=60)
        with httpx2.Client(timeout=60) as http:
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
            started = _mcp(http, one.url + "/mcp", token, init, None)
            assert started.status_code == 200, started.text
            session = started.headers["mcp-session-id"]
            _mcp(
                http,
                one.url + "/mcp",
                token,
                {"jsonrpc": "2.0", "method": "notifications/initialized"},
                session,
            )
            call = {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "n1__fs_read", "arguments": {"path": "big.txt", "limit": 4 * FRAME}},
            }
            answer = mcp_answer(_mcp(http, one.url + "/mcp", token, call, session))
            result = answer.get("result")
            assert isinstance(result, dict), answer
            links = [c["uri"] for c in result["content"] if c.get("type") == "resource_link"]
            assert links, result
            path = "/api/v1/artifacts/" + links[-1].rsplit("/api/v1/artifacts/", 1)[1]
            auth = {"Authorization": f"Bearer {token}"}
            whole = http.get(two.url + path, headers=auth)  # the other replica
            assert whole.status_code == 200, whole.text
            assert whole.json()["content"][0]["text"] == text
            other = http.get(two.url + path, headers={"Authorization": f"Bearer {two.token('bob', 'ws2')}"})
            assert other.status_code == 404  # the same authorization as the node, on every replica
    finally:
        agent.stop()
