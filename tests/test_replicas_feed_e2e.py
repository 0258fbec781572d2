"""Three real `cortex-server serve` replicas on one PostgreSQL and one Redis: what the admin commands
change reaches every replica within 1 s (CONTRACT §1 "Scale-out").

Each replica has its own data directory (as on its own machine); they share only the engines. The admin
commands run as separate processes with ``--database-url`` only, as an operator would run them:

- enroll-node → every replica lists the node within 1 s, and a call to it is 409 at once, never 404;
- revoke-node → the node's live link is closed (4403) and every replica answers 404 within 1 s;
- revoke-user → the user's token is refused and the user's live RPC links are closed on every replica;
- an audit rewind acknowledged on one replica shows as ``ok`` on every other;
- a result uploaded as an artifact through one replica is read through the others.

Waits are bounded: each check polls the replica's answer until its deadline (1 s: the contract's bound,
plus the poll itself), and prints the measured delay.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.support.mcp_http import mcp_answer
from tests.support.procs import REPO, AgentProc, ServerProc

BOUND_S = 1.0
FRAME = 256 * 1024


def _cli(*args: str, url: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", *args, "--database-url", url],
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


class Cluster:
    def __init__(self, replicas: list[ServerProc], url: str) -> None:
        self.replicas = replicas
        self.url = url
        self._admin = _cli("issue-token", "root", "--workspace", "ws1", "--role", "admin", url=url)

    def token(self, sub: str, workspace: str = "ws1", role: str = "member") -> str:
        return _cli("issue-token", sub, "--workspace", workspace, "--role", role, url=self.url)

    def http(self, replica: ServerProc, token: str | None = None) -> httpx2.Client:
        auth = {"Authorization": f"Bearer {token or self._admin}"}
        return httpx2.Client(base_url=replica.url, headers=auth, timeout=30)


@pytest.fixture
def cluster(tmp_path: Path, pg_url: str, redis_url: str) -> Iterator[Cluster]:
    args = ["--database-url", pg_url, "--redis-url", redis_url, "--heartbeat-interval", "1"]
    args += ["--max-frame-bytes", str(FRAME)]  # small: a result of a few frames is uploaded as an artifact
    replicas = [ServerProc(tmp_path / f"replica{i}", args=args) for i in range(3)]
    try:
        replicas[0].start()  # the first one migrates the shared database
        for replica in replicas[1:]:
            replica.start()
        yield Cluster(replicas, pg_url)
    finally:
        for replica in replicas:
            replica.stop()


def _within(check: Callable[[], bool], bound: float = BOUND_S) -> float:
    """Seconds until *check* held; fails if it did not within *bound* (plus one poll's time)."""
    started = time.monotonic()
    while True:
        if check():
            return time.monotonic() - started
        assert time.monotonic() - started < bound, f"not within {bound} s"
        time.sleep(0.01)


def _listed(cluster: Cluster, replica: ServerProc, name: str) -> bool:
    with cluster.http(replica) as http:
        return name in {n["name"] for n in http.get("/api/v1/nodes").json()["nodes"]}


def test_an_enrollment_reaches_every_replica(cluster: Cluster) -> None:
    for replica in cluster.replicas:
        assert not _listed(cluster, replica, "late")
    _cli("enroll-node", "late", "--workspace", "ws1", url=cluster.url)
    enrolled = time.monotonic()
    delays = [_within(lambda r=replica: _listed(cluster, r, "late")) for replica in cluster.replicas]
    print(f"\nenrollment listed on 3 replicas after {time.monotonic() - enrolled:.3f} s ({delays})")
    _cli("enroll-node", "late2", "--workspace", "ws1", url=cluster.url)
    for replica in cluster.replicas:  # a call at once: 409 (enrolled, not connected), never 404
        with cluster.http(replica) as http:
            call = http.post("/api/v1/nodes/late2/tools/echo/call", json={"arguments": {"text": "x"}})
        assert call.status_code == 409, call.text


def test_a_revocation_reaches_every_replica(cluster: Cluster, tmp_path: Path) -> None:
    holder = cluster.replicas[0]
    credential = _cli("enroll-node", "n1", "--workspace", "ws1", url=cluster.url)
    agent = AgentProc(tmp_path / "home", holder.url, "n1", credential, ["--no-browser"]).start()
    try:
        with cluster.http(holder) as http:
            _within(lambda: http.get("/api/v1/nodes/n1").json()["status"] == "connected", 60)
        for replica in cluster.replicas:
            _within(lambda r=replica: _listed(cluster, r, "n1"))
        _cli("revoke-node", "n1", url=cluster.url)
        revoked = time.monotonic()

        def gone(replica: ServerProc) -> bool:
            with cluster.http(replica) as http:
                return http.get("/api/v1/nodes/n1").status_code == 404

        for replica in cluster.replicas:
            _within(lambda r=replica: gone(r), BOUND_S - (time.monotonic() - revoked) + 0.2)
        assert agent.wait_output("4403", 5) or agent.wait_output("revoked", 5), "".join(agent.output[-20:])
        print(f"\nrevocation: 404 on 3 replicas after {time.monotonic() - revoked:.3f} s")
    finally:
        agent.stop()


async def test_a_user_revocation_reaches_every_replica(cluster: Cluster) -> None:
    alice = cluster.token("alice")
    bob = cluster.token("bob")
    sockets = []
    for replica in cluster.replicas:
        for token in (alice, bob):
            sockets.append(
                await connect(
                    replica.url.replace("http", "ws") + "/api/v1/rpc",
                    additional_headers={"Authorization": f"Bearer {token}"},
                    subprotocols=["cortex.v1"],  # type: ignore[list-item]
                )
            )
    try:
        await asyncio.to_thread(_cli, "revoke-user", "alice", url=cluster.url)
        revoked = time.monotonic()
        for ws in sockets[0::2]:  # alice's, one per replica: closed
            async with asyncio.timeout(BOUND_S + 1):
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
        print(f"\nuser revocation: links closed on 3 replicas after {time.monotonic() - revoked:.3f} s")
        for replica in cluster.replicas:
            with cluster.http(replica, alice) as http:
                assert http.get("/api/v1/nodes").status_code == 401
            with cluster.http(replica, bob) as http:
                assert http.get("/api/v1/nodes").status_code == 200
        for ws in sockets[1::2]:  # bob's stay open
            await ws.send('{"jsonrpc":"2.0","id":1,"method":"nodes/list","params":{}}')
            async with asyncio.timeout(10):
                assert "result" in await ws.recv()
    finally:
        for ws in sockets:
            await ws.close()


def test_an_acknowledge_on_one_replica_is_seen_on_another(cluster: Cluster) -> None:
    _cli("enroll-node", "n2", "--workspace", "ws1", url=cluster.url)
    import psycopg

    with psycopg.connect(cluster.url, autocommit=True) as conn:  # as a replica that saw a rewind would
        conn.execute(
            "INSERT INTO audit_heads (node, seq, hash, status, reason, updated_at)"
            " VALUES ('n2', 3, 'h3', 'rewound', 'head went back from seq 9 to 3', %s)",
            (time.time(),),
        )

    def status(replica: ServerProc) -> Any:
        with cluster.http(replica) as http:
            response = http.get("/api/v1/nodes/n2")
        return response.json()["audit"]["status"] if response.status_code == 200 else None

    for replica in cluster.replicas:
        _within(lambda r=replica: status(r) == "rewound")
    with cluster.http(cluster.replicas[0]) as http:
        assert http.post("/api/v1/nodes/n2/audit/acknowledge").status_code == 200
    acknowledged = time.monotonic()
    for replica in cluster.replicas[1:]:
        _within(lambda r=replica: status(r) == "ok")
    print(f"\nacknowledge seen on the other replicas after {time.monotonic() - acknowledged:.3f} s")


def test_an_artifact_uploaded_through_one_replica_is_read_through_the_others(
    cluster: Cluster, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    text = "0123456789abcdef" * (FRAME // 8)  # two frames: the node uploads the result in chunks
    (root / "big.txt").write_text(text)
    holder = cluster.replicas[0]
    credential = _cli("enroll-node", "n3", "--workspace", "ws1", url=cluster.url)
    agent = AgentProc(
        tmp_path / "home", holder.url, "n3", credential, ["--no-browser", "--allow-root", str(root)]
    ).start()
    try:
        with cluster.http(holder) as http:
            _within(lambda: http.get("/api/v1/nodes/n3").json()["status"] == "connected", 60)
        token = cluster.token("alice")
        with httpx2.Client(timeout=60) as http:
            session = _mcp_session(http, holder.url + "/mcp", token)
            call = {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "n3__fs_read", "arguments": {"path": "big.txt", "limit": 4 * FRAME}},
            }
            answer = mcp_answer(http.post(holder.url + "/mcp", json=call, headers=session))
            result = answer.get("result")
            assert isinstance(result, dict), answer
            links = [c["uri"] for c in result["content"] if c.get("type") == "resource_link"]
            path = "/api/v1/artifacts/" + links[-1].rsplit("/api/v1/artifacts/", 1)[1]
            for replica in cluster.replicas[1:]:
                whole = http.get(replica.url + path, headers={"Authorization": f"Bearer {token}"})
                assert whole.status_code == 200, whole.text
                assert whole.json()["content"][0]["text"] == text
    finally:
        agent.stop()


MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def _mcp_session(http: httpx2.Client, url: str, token: str) -> dict[str, str]:
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
    started = http.post(url, json=init, headers=auth)
    assert started.status_code == 200, started.text
    headers = {
        **auth,
        "mcp-session-id": started.headers["mcp-session-id"],
        "mcp-protocol-version": "2025-11-25",
    }
    assert (
        http.post(
            url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers
        ).status_code
        == 202
    )
    return headers
