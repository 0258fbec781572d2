"""End to end on PostgreSQL: ``cortex-server enroll-node --database-url`` then ``serve --database-url``
(two replicas of one shared state), a real node connecting, and revocation through the shared database.

Without ``--redis-url`` each replica holds only its own links; what they share here is the state in
PostgreSQL: enrollments, the signing key (one JWKS), revocations, user tokens.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2

from tests.support.procs import REPO, AgentProc, ServerProc


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CORTEX_")}
    base["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )


def _with_password(url: str, password: str) -> str:
    # The test cluster trusts loopback, so any password connects: enough to see that none is ever shown.
    return url.replace("postgresql://cortex@", f"postgresql://cortex:{password}@")


def test_enroll_then_serve_on_postgres_with_two_replicas(pg_url: str, tmp_path: Path) -> None:
    secret = "pw-never-shown-7f3a"
    url = _with_password(pg_url, secret)
    enrolled = _cli(
        "enroll-node",
        "laptop",
        "--workspace",
        "ws1",
        "--database-url",
        url,
        "--data-dir",
        str(tmp_path / "a"),
    )
    assert enrolled.returncode == 0, enrolled.stderr
    credential = enrolled.stdout.strip()
    assert credential.startswith("cnc_")
    # The environment variable is the same option (CONTRACT §1).
    other = _cli(
        "enroll-node",
        "spare",
        "--workspace",
        "ws1",
        "--data-dir",
        str(tmp_path / "a"),
        env={"CORTEX_DATABASE_URL": url},
    )
    assert other.returncode == 0, other.stderr
    assert not (tmp_path / "a" / "cortex.db").exists()  # nothing went to SQLite

    servers = [
        ServerProc(tmp_path / name, database_url=url, args=["--heartbeat-interval", "1"])
        for name in ("a", "b")
    ]
    starters = [threading.Thread(target=s.start) for s in servers]  # replicas starting at the same moment
    for t in starters:
        t.start()
    for t in starters:
        t.join(60)
    agent: AgentProc | None = None
    try:
        a, b = servers
        assert a.port and b.port
        jwks = [httpx2.get(s.url + "/.well-known/jwks.json", timeout=30).json() for s in servers]
        assert jwks[0] == jwks[1] and len(jwks[0]["keys"]) == 1  # one key, made once, served by both

        token = a.token("root", "ws1", "admin")  # signed with the shared key: good on both replicas
        agent = AgentProc(tmp_path / "laptop-home", a.url, "laptop", credential, ["--no-browser"])
        root = tmp_path / "laptop-root"
        root.mkdir()
        agent.args += ["--allow-root", str(root)]
        with a.events() as stream:
            agent.start()
            for event, data in stream.items(deadline=time.monotonic() + 60):
                if event == "node.connected" and data["name"] == "laptop":
                    break
            else:
                raise AssertionError("node did not connect:\n" + "".join(agent.output[-30:]))
        with a.http(token) as http:
            call = http.post("/api/v1/nodes/laptop/tools/echo/call", json={"arguments": {"text": "pg"}})
            assert call.status_code == 200 and call.json()["content"][0]["text"] == "pg"
        with b.http(token) as http:  # the other replica knows the node from the shared state
            listed = http.get("/api/v1/nodes").json()["nodes"]
            assert {n["name"] for n in listed} >= {"laptop", "spare"}

        with a.events() as stream:
            revoked = _cli("revoke-node", "laptop", "--database-url", url, "--data-dir", str(tmp_path / "c"))
            assert revoked.returncode == 0, revoked.stderr
            for event, data in stream.items(deadline=time.monotonic() + 20):
                if event == "node.disconnected" and data["name"] == "laptop":
                    break
            else:
                raise AssertionError("the revoked node was not disconnected")
        assert agent.wait_output("code 4403", 20), "".join(agent.output[-20:])
        deadline = time.monotonic() + 20  # every replica follows the shared revocations table
        for server in servers:
            with server.http(token) as http:
                while http.get("/api/v1/nodes/laptop").status_code != 404:
                    assert time.monotonic() < deadline, f"{server.url} still lists the revoked node"
                    time.sleep(0.1)
        refused = httpx2.post(
            b.url + "/oauth/token",
            data={"grant_type": "client_credentials", "client_id": "laptop", "client_secret": credential},
            timeout=30,
        )
        assert refused.status_code == 401
    finally:
        if agent is not None:
            agent.stop()
        for server in servers:
            server.stop()
    for server in servers:
        assert secret not in "".join(server.output)


def test_a_bad_database_url_is_a_clear_error_on_every_command(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path / "d")]
    commands = [
        ["serve", "--port", "0", *data],
        ["enroll-node", "x", "--workspace", "w", *data],
        ["issue-token", "x", "--workspace", "w", *data],
        ["revoke-node", "x", *data],
        ["revoke-user", "x", *data],
        ["certs", "init", "--out", str(tmp_path / "pki")],
    ]
    for command in commands:
        done = _cli(*command, "--database-url", "mysql://root:hunter2@db/cortex")
        assert done.returncode == 1, (command, done.stdout, done.stderr)
        assert "postgresql://" in done.stderr and "hunter2" not in done.stderr + done.stdout
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "pki").exists()


def test_an_unreachable_database_fails_the_command_without_the_password(tmp_path: Path) -> None:
    from tests.support.procs import free_port

    url = f"postgresql://cortex:hunter2@127.0.0.1:{free_port()}/cortex?connect_timeout=1"
    for command in (["enroll-node", "x", "--workspace", "w"], ["serve", "--port", "0"]):
        done = _cli(*command, "--data-dir", str(tmp_path), "--database-url", url)
        assert done.returncode == 1, (command, done.stderr)
        assert "did not answer" in done.stderr and "hunter2" not in done.stderr + done.stdout
        assert "Traceback" not in done.stderr
