"""Approval end to end: a real `cortex-server serve`, real `cortex-agent run` nodes, the real CLI.

The owner answers with `cortex-agent approvals|approve|deny` (child processes on the node's home); the
caller is the SDK over the server's RPC socket. Proves: approve runs the tool, deny and timeout never
start it (the file its command would create stays absent), a cancel withdraws, other calls run while one
waits, the server only shows what waits and no endpoint or RPC method answers.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest

from sdk import AsyncClient, CallCancelled, CortexError
from spec.errors import METHOD_NOT_FOUND
from tests.support.procs import REPO, AgentProc, ServerProc, _env

SECRET = "sk-proj-abcdefghijklmnop1234567890"


def agent_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "desktop_agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=_env(),
    )


def approval_node(
    start_node: Callable[..., AgentProc],
    tmp_path: Path,
    name: str,
    timeout_s: float,
    args: list[str] | None = None,
) -> AgentProc:
    home = tmp_path / f"{name}-home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "agent.toml").write_text(f'[approval]\nrequire = ["shell_exec"]\ntimeout_s = {timeout_s}\n')
    return start_node(name, args=args)


class Waiter:
    """on_progress for a call: fires when the node says it waits for approval."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.waiting = asyncio.Event()

    def __call__(self, progress: dict[str, Any]) -> None:
        message = progress.get("message") or ""
        self.messages.append(message)
        if message.startswith("waiting for approval on "):
            self.waiting.set()


async def server_approvals(server: ServerProc, node: str, count: int, token: str | None = None) -> list[Any]:
    """GET /api/v1/nodes/{node}/approvals until it lists `count` calls (bounded: the node tells it async)."""
    listed: list[Any] = []
    async with httpx2.AsyncClient(
        base_url=server.url, headers={"Authorization": f"Bearer {token or server.token()}"}, timeout=10
    ) as http:
        for _ in range(100):
            response = await http.get(f"/api/v1/nodes/{node}/approvals")
            assert response.status_code == 200, response.text
            listed = response.json()["approvals"]
            if len(listed) == count:
                return listed
            await asyncio.sleep(0.1)
    raise AssertionError(f"server lists {listed}, expected {count} waiting")


def cli_list(home: Path) -> list[dict[str, Any]]:
    done = agent_cli("approvals", "--home", str(home), "--json")
    assert done.returncode == 0, done.stderr
    approvals: list[dict[str, Any]] = json.loads(done.stdout)["approvals"]
    return approvals


async def test_cli_approve_and_deny_with_a_real_agent(
    server_proc: ServerProc, start_node: Callable[..., AgentProc], tmp_path: Path
) -> None:
    agent = approval_node(start_node, tmp_path, "laptop", 60, ["--max-concurrency", "1"])
    root = tmp_path / "laptop-root"
    denied_marker, approved_marker = root / "denied", root / "approved"
    async with AsyncClient(server_proc.url, token=server_proc.token()) as client:
        # 1. Deny: the tool never starts.
        waiter = Waiter()
        args = {"command": f"touch {denied_marker}", "env": {"OPENAI_KEY": SECRET}}
        call = client.start("laptop", "shell_exec", args, timeout=60, on_progress=waiter)
        async with asyncio.timeout(20):
            await waiter.waiting.wait()
        assert waiter.messages[0] == "waiting for approval on laptop"
        # While it waits, the only concurrency slot is free for other calls.
        async with asyncio.timeout(20):
            assert (await client.call("laptop", "echo", {"text": "meanwhile"})).text == "meanwhile"
        (shown,) = await asyncio.to_thread(cli_list, agent.home)
        assert shown["tool"] == "shell_exec" and shown["caller"] == {"sub": "alice", "ws": "ws1"}
        assert SECRET not in json.dumps(shown)
        human = agent_cli("approvals", "--home", str(agent.home))
        assert human.returncode == 0 and shown["id"] in human.stdout and "shell_exec" in human.stdout
        (seen,) = await server_approvals(server_proc, "laptop", 1)
        assert seen["id"] == shown["id"] and SECRET not in json.dumps(seen)
        done = await asyncio.to_thread(agent_cli, "deny", shown["id"], "--home", str(agent.home))
        assert done.returncode == 0, done.stderr
        async with asyncio.timeout(20):
            result = await call
        assert result.is_error and "denied" in result.text
        assert not denied_marker.exists()
        assert await server_approvals(server_proc, "laptop", 0) == []

        # 2. Approve: it runs.
        waiter = Waiter()
        call = client.start(
            "laptop", "shell_exec", {"command": f"touch {approved_marker}"}, timeout=60, on_progress=waiter
        )
        async with asyncio.timeout(20):
            await waiter.waiting.wait()
        (shown,) = await asyncio.to_thread(cli_list, agent.home)
        done = await asyncio.to_thread(agent_cli, "approve", shown["id"], "--home", str(agent.home))
        assert done.returncode == 0, done.stderr
        async with asyncio.timeout(20):
            result = await call
        assert not result.is_error and approved_marker.exists()

        # 3. A cancel from the caller withdraws the request.
        waiter = Waiter()
        call = client.start("laptop", "shell_exec", {"command": f"touch {root / 'gone'}"}, on_progress=waiter)
        async with asyncio.timeout(20):
            await waiter.waiting.wait()
        await call.cancel()
        with pytest.raises(CallCancelled):
            await call
        await server_approvals(server_proc, "laptop", 0)
        assert await asyncio.to_thread(cli_list, agent.home) == []
    assert not (root / "gone").exists()
    records = [json.loads(x) for x in (agent.home / "audit.log").read_text().splitlines()]
    reasons = [r.get("reason") for r in records if r["event"] == "tool.denied"]
    assert reasons == ["denied", "withdrawn"]
    (approved,) = [r for r in records if r["event"] == "tool.approved"]
    assert approved["via"] == "cli" and approved["scope"] == "once" and approved["approver"]

    # Clear errors: an unknown id, a home with no agent.
    unknown = agent_cli("approve", "deadbeef", "--home", str(agent.home))
    assert unknown.returncode == 1 and "deadbeef" in unknown.stderr
    nobody = agent_cli("approvals", "--home", str(tmp_path / "no-agent-here"))
    assert nobody.returncode == 1 and "no agent is running" in nobody.stderr


async def test_no_answer_in_time_is_a_denial_end_to_end(
    server_proc: ServerProc, start_node: Callable[..., AgentProc], tmp_path: Path
) -> None:
    approval_node(start_node, tmp_path, "quick", 1)
    marker = tmp_path / "quick-root" / "late"
    async with AsyncClient(server_proc.url, token=server_proc.token()) as client, asyncio.timeout(30):
        result = await client.call("quick", "shell_exec", {"command": f"touch {marker}"}, timeout=30)
    assert result.is_error and "nobody answered" in result.text
    assert not marker.exists()


async def test_nothing_remote_can_answer(
    server_proc: ServerProc, start_node: Callable[..., AgentProc], tmp_path: Path
) -> None:
    approval_node(start_node, tmp_path, "laptop", 60)
    async with AsyncClient(server_proc.url, token=server_proc.token()) as client:
        waiter = Waiter()
        call = client.start("laptop", "shell_exec", {"command": "true"}, on_progress=waiter)
        async with asyncio.timeout(20):
            await waiter.waiting.wait()
        (waiting,) = await server_approvals(server_proc, "laptop", 1)
        # Another workspace does not even learn the node exists.
        other = server_proc.token("eve", "ws2")
        async with httpx2.AsyncClient(base_url=server_proc.url, timeout=10) as http:
            for token in (other, server_proc.token(), server_proc.admin_token):
                headers = {"Authorization": f"Bearer {token}"}
                url = "/api/v1/nodes/laptop/approvals"
                for method in ("POST", "PUT", "PATCH", "DELETE"):
                    response = await http.request(method, url, headers=headers, json={"id": waiting["id"]})
                    assert response.status_code == 405, (method, response.text)
                for suffix in (f"/{waiting['id']}", f"/{waiting['id']}/approve"):
                    response = await http.post(url + suffix, headers=headers, json={})
                    assert response.status_code in (404, 405)
            response = await http.get(
                "/api/v1/nodes/laptop/approvals", headers={"Authorization": f"Bearer {other}"}
            )
            assert response.status_code == 404 and response.json()["error"] == "node_not_found"
            response = await http.get("/api/v1/nodes/laptop/approvals")
            assert response.status_code == 401
        # The RPC has no method to answer either.
        for method in ("approvals/approve", "approvals/answer", "tool/approve"):
            with pytest.raises(CortexError) as info:
                await client._request(method, {"node": "laptop", "id": waiting["id"]})
            assert info.value.code == METHOD_NOT_FOUND
        assert not call.done()
        await call.cancel()
        with pytest.raises(CallCancelled):
            await call


async def test_mcp_sees_only_the_waiting_message(
    server_proc: ServerProc, start_node: Callable[..., AgentProc], tmp_path: Path
) -> None:
    from tests.test_mcp import mcp_client

    agent = approval_node(start_node, tmp_path, "laptop", 60)
    marker = tmp_path / "laptop-root" / "mcp"
    waiting = asyncio.Event()

    async def on_progress(_progress: float, _total: float | None, message: str | None) -> None:
        if message == "waiting for approval on laptop":
            waiting.set()

    async with mcp_client(server_proc, server_proc.token()) as session:
        names = [t.name for t in (await session.list_tools()).tools]
        assert "laptop__shell_exec" in names and not [n for n in names if "approv" in n]
        call = asyncio.create_task(
            session.call_tool(
                "laptop__shell_exec", {"command": f"touch {marker}"}, progress_callback=on_progress
            )
        )
        async with asyncio.timeout(20):
            await waiting.wait()
        (shown,) = await asyncio.to_thread(cli_list, agent.home)
        done = await asyncio.to_thread(agent_cli, "deny", shown["id"], "--home", str(agent.home))
        assert done.returncode == 0, done.stderr
        async with asyncio.timeout(20):
            result = await call
    assert result.is_error and "denied" in result.content[0].text  # type: ignore[union-attr]
    assert not marker.exists()
