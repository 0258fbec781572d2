"""Approval on the node, in process: a real ToolEngine (real audit log, real shell, real control socket).

The owner answers through the real Unix control socket (`desktop_agent.approval_socket.control_request`,
what `cortex-agent approve|deny` send). Waiting is on the room's own change events, bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from desktop_agent.approval import PendingApproval, local_user
from desktop_agent.approval_socket import SOCKET_FILE, control_request
from desktop_agent.audit import verify
from desktop_agent.engine import ToolEngine

ALICE = {"sub": "alice", "ws": "w1"}
BOB = {"sub": "bob", "ws": "w1"}


class Home:
    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "root"
        self.home = tmp / "home"
        self.root.mkdir()
        self.home.mkdir()

    def toml(self, approval: str = "", extra: str = "") -> None:
        text = (
            f'allowed_roots = ["{self.root}"]\n{extra}\n[browser]\nenabled = false\n[approval]\n{approval}\n'
        )
        (self.home / "agent.toml").write_text(text)

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in (self.home / "audit.log").read_text().splitlines()]

    def events(self, request_id: Any) -> list[str]:
        return [r["event"] for r in self.records() if r.get("request_id") == request_id]


@pytest.fixture
def h(tmp_path: Path) -> Home:
    home = Home(tmp_path)
    home.toml('require = ["shell_exec", "echo"]\ntimeout_s = 30')
    return home


@pytest.fixture
async def engine(h: Home) -> AsyncIterator[ToolEngine]:
    eng = ToolEngine(h.home, watch_poll_ms=100)
    eng.approvals.node_name = "laptop"
    await eng.start()
    try:
        yield eng
    finally:
        await eng.aclose()


async def waiting(engine: ToolEngine, count: int = 1, timeout: float = 10) -> list[PendingApproval]:
    """Block until `count` calls wait (the room's change event), bounded."""
    changed = asyncio.Event()
    engine.approvals.on_change(lambda _w: changed.set())
    async with asyncio.timeout(timeout):
        while len(engine.approvals.pending()) < count:
            changed.clear()
            await changed.wait()
    return engine.approvals.pending()


async def owner(h: Home, request: dict[str, Any]) -> dict[str, Any]:
    return await asyncio.to_thread(control_request, h.home, request)


def shell(marker: Path, **extra: Any) -> dict[str, Any]:
    return {"command": f"touch {marker}", **extra}


async def test_approve_once_runs_the_tool_after_the_audited_answer(engine: ToolEngine, h: Home) -> None:
    marker = h.root / "made"
    seen: list[str | None] = []

    async def progress(_v: float, _t: float | None, message: str | None) -> None:
        seen.append(message)

    call = asyncio.create_task(
        engine.call("shell_exec", shell(marker), request_id=1, caller=ALICE, progress=progress)
    )
    (pending,) = await waiting(engine)
    assert not marker.exists() and not call.done()
    assert seen == ["waiting for approval on laptop"]
    listed = await owner(h, {"op": "list"})
    assert listed["ok"] and [a["id"] for a in listed["approvals"]] == [pending.id]
    assert listed["approvals"][0]["tool"] == "shell_exec"
    assert listed["approvals"][0]["caller"] == ALICE
    assert await owner(h, {"op": "approve", "id": pending.id}) == {"ok": True}
    async with asyncio.timeout(20):
        result = await call
    assert not result["isError"] and marker.exists()
    assert h.events(1) == ["tool.approval_requested", "tool.approved", "tool.requested", "tool.finished"]
    asked, approved = (r for r in h.records() if r.get("request_id") == 1 and "approval_id" in r)
    assert asked["approval_id"] == approved["approval_id"] == pending.id
    assert approved["approver"] == local_user() and approved["scope"] == "once"
    assert approved["until"] is None and approved["via"] == "cli"
    assert engine.approvals.pending() == []
    assert verify(h.home / "audit.log").ok


async def test_deny_returns_an_error_and_the_tool_never_starts(engine: ToolEngine, h: Home) -> None:
    marker = h.root / "never"
    call = asyncio.create_task(engine.call("shell_exec", shell(marker), request_id=2, caller=ALICE))
    (pending,) = await waiting(engine)
    assert await owner(h, {"op": "deny", "id": pending.id}) == {"ok": True}
    async with asyncio.timeout(10):
        result = await call
    assert result["isError"] and "denied" in result["content"][0]["text"]
    assert not marker.exists()
    assert h.events(2) == ["tool.approval_requested", "tool.denied"]
    denied = h.records()[-1]
    assert denied["reason"] == "denied" and denied["approver"] == local_user()
    # The id is spent: a second answer is refused.
    again = await owner(h, {"op": "approve", "id": pending.id})
    assert again["ok"] is False and again["error"] == "unknown_id"


async def test_no_answer_in_time_is_a_denial(h: Home) -> None:
    h.toml('require = ["shell_exec"]\ntimeout_s = 0.3')
    eng = ToolEngine(h.home)
    await eng.start()
    marker = h.root / "late"
    try:
        async with asyncio.timeout(10):
            result = await eng.call("shell_exec", shell(marker), request_id=3, caller=ALICE)
    finally:
        await eng.aclose()
    assert result["isError"] and "nobody answered" in result["content"][0]["text"]
    assert not marker.exists()
    assert h.events(3) == ["tool.approval_requested", "tool.denied"]
    assert h.records()[-1]["reason"] == "timeout"


async def test_a_cancel_withdraws_the_request(engine: ToolEngine, h: Home) -> None:
    marker = h.root / "withdrawn"
    call = asyncio.create_task(engine.call("shell_exec", shell(marker), request_id=4, caller=ALICE))
    await waiting(engine)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert engine.approvals.pending() == []
    assert h.events(4) == ["tool.approval_requested", "tool.denied"]
    assert h.records()[-1]["reason"] == "withdrawn"
    assert (await owner(h, {"op": "list"}))["approvals"] == []
    assert not marker.exists()


async def test_a_waiting_call_holds_no_concurrency_slot(h: Home) -> None:
    h.toml('require = ["shell_exec"]\ntimeout_s = 30', extra="max_concurrency = 1")
    eng = ToolEngine(h.home)
    await eng.start()
    try:
        calls = [
            asyncio.create_task(eng.call("shell_exec", shell(h.root / f"m{i}"), request_id=i, caller=ALICE))
            for i in range(3)
        ]
        await waiting(eng, 3)
        async with asyncio.timeout(10):  # with the only slot held by a waiter this would queue forever
            result = await eng.call("echo", {"text": "still here"}, request_id=9, caller=ALICE)
        assert result["content"][0]["text"] == "still here"
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
    finally:
        await eng.aclose()


async def test_allow_this_caller_for_minutes(engine: ToolEngine, h: Home) -> None:
    first = asyncio.create_task(engine.call("echo", {"text": "1"}, request_id=10, caller=ALICE))
    (pending,) = await waiting(engine)
    assert await owner(h, {"op": "approve", "id": pending.id, "minutes": 5}) == {"ok": True}
    async with asyncio.timeout(10):
        assert (await first)["content"][0]["text"] == "1"
        # Alice's next echo runs at once; audited as approved by the allowance.
        assert (await engine.call("echo", {"text": "2"}, request_id=11, caller=ALICE))["isError"] is False
    approved = [r for r in h.records() if r["event"] == "tool.approved"]
    assert [r["via"] for r in approved] == ["cli", "allowance"]
    assert approved[0]["scope"] == approved[1]["scope"] == "caller"
    assert approved[0]["until"] == approved[1]["until"] is not None
    assert h.events(11) == ["tool.approved", "tool.requested", "tool.finished"]
    # Not for another caller, nor for another tool of the same caller.
    bob = asyncio.create_task(engine.call("echo", {"text": "3"}, request_id=12, caller=BOB))
    (waiter,) = await waiting(engine)
    assert waiter.caller == BOB
    bob.cancel()
    await asyncio.gather(bob, return_exceptions=True)


async def test_approval_is_applied_live(h: Home) -> None:
    h.toml("")
    eng = ToolEngine(h.home, watch_poll_ms=50)
    await eng.start()
    try:
        assert (await eng.call("echo", {"text": "free"}, request_id=20, caller=ALICE))["isError"] is False
        reloaded = asyncio.Event()
        eng.on_tools_changed(reloaded.set)  # the same edit drops fs_grep, so the reload is observable
        names = [t["name"] for t in eng.list_tools() if t["name"] != "fs_grep"]
        h.toml('require = ["echo"]', extra=f"[tools]\nenabled = {json.dumps(names)}")
        async with asyncio.timeout(10):
            await reloaded.wait()
        assert "echo" in eng.policy.approval_required
        call = asyncio.create_task(eng.call("echo", {"text": "asks"}, request_id=21, caller=ALICE))
        await waiting(eng)
        assert eng.policy.approval_timeout_s == 120  # the default
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)
    finally:
        await eng.aclose()


async def test_shown_arguments_are_redacted(engine: ToolEngine, h: Home) -> None:
    secret = "hunter2hunter2"
    args = {"command": "echo " + "x" * 1000, "env": {"API_TOKEN": secret}}
    call = asyncio.create_task(engine.call("shell_exec", args, request_id=30, caller=ALICE))
    await waiting(engine)
    listed = json.dumps((await owner(h, {"op": "list"}))["approvals"])
    assert secret not in listed and "[REDACTED]" in listed
    assert len(listed) < 1000
    call.cancel()
    await asyncio.gather(call, return_exceptions=True)


# -- the control socket ---------------------------------------------------------------------------------
async def test_control_socket_is_owner_only_and_survives_garbage(engine: ToolEngine, h: Home) -> None:
    path = h.home / SOCKET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    def talk() -> bytes:  # in a thread: the agent's loop is this test's loop
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(path))
            # The nested line raised RecursionError out of json.loads, which closed the connection.
            nested = b"[" * 3000 + b"\n"
            s.sendall(
                b"not json\n[1]\n" + json.dumps({"op": "approve", "id": 7}).encode() + b"\n"
                + nested + b'{"op":"list"}\n'
            )  # fmt: skip
            replies = b""
            while replies.count(b"\n") < 5:
                chunk = s.recv(4096)
                assert chunk, replies
                replies += chunk
            return replies

    replies = await asyncio.to_thread(talk)
    lines = [json.loads(x) for x in replies.splitlines()]
    assert [x.get("error") for x in lines[:4]] == ["bad_request"] * 4
    assert lines[4] == {"ok": True, "approvals": []}
    unknown = await owner(h, {"op": "deny", "id": "nope"})
    assert unknown["error"] == "unknown_id"


@pytest.mark.skipif(
    os.getuid() != 0 or shutil.which("setpriv") is None, reason="needs root to be another uid"
)
async def test_another_uid_gets_no_answer(engine: ToolEngine, h: Home) -> None:
    call = asyncio.create_task(engine.call("echo", {"text": "x"}, request_id=40, caller=ALICE))
    (pending,) = await waiting(engine)
    path = h.home / SOCKET_FILE
    os.chmod(path, 0o666)  # past the file mode: the peer-credential check alone must refuse
    os.chmod(h.home, 0o755)
    code = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1])\n"
        "try:\n"
        '    s.sendall((\'{"op":"approve","id":"%s"}\\n\' % sys.argv[2]).encode())\n'
        "    print(repr(s.recv(4096)))\n"
        "except (BrokenPipeError, ConnectionResetError):\n"
        "    print(repr(b''))\n"
    )
    command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code]
    home_fd = os.open(h.home, os.O_RDONLY | os.O_DIRECTORY)  # the tmp dirs above are not searchable by 65534
    try:
        done = await asyncio.to_thread(
            subprocess.run,
            [*command, f"/proc/self/fd/{home_fd}/{SOCKET_FILE}", pending.id],
            capture_output=True,
            text=True,
            timeout=30,
            cwd="/",
            pass_fds=(home_fd,),
        )
    finally:
        os.close(home_fd)
    assert done.stdout.strip() == "b''", done.stderr  # closed without a reply
    assert engine.approvals.pending() and not call.done()
    call.cancel()
    await asyncio.gather(call, return_exceptions=True)


async def test_no_tool_can_rewrite_the_approval_policy(engine: ToolEngine, h: Home) -> None:
    policy = f'allowed_roots = ["{h.home}"]\n[browser]\nenabled = false\n[approval]\nrequire = ["echo"]\n'
    (h.home / "agent.toml").write_text(policy)
    # fs tools are refused on agent.toml even when the home is an allowed root (CONTRACT §5).
    eng = ToolEngine(h.home)
    await eng.start()
    try:
        result = await eng.call(
            "fs_write",
            {"path": str(h.home / "agent.toml"), "content": "[approval]\nrequire = []\n"},
            request_id=50,
            caller=ALICE,
        )
    finally:
        await eng.aclose()
    assert result["isError"]
    assert (h.home / "agent.toml").read_text() == policy


def test_the_node_offers_the_server_no_way_to_answer(tmp_path: Path) -> None:
    from desktop_agent.connection import ConnectSettings, NodeAgent

    agent = NodeAgent(ConnectSettings("http://s", "laptop", "x"), ToolEngine(tmp_path))
    methods = set(agent._methods())
    assert methods == {"initialize", "ping", "tools/list", "tools/call", "audit/read"}
    assert not [m for m in methods if "approv" in m]


async def test_a_flood_of_approval_requests_is_refused_not_queued(engine: ToolEngine, h: Home) -> None:
    from spec.errors import OVERLOADED, RpcError

    engine.approvals.max_waiting = 2
    calls = [
        asyncio.create_task(engine.call("echo", {"text": str(i)}, request_id=60 + i, caller=ALICE))
        for i in range(2)
    ]
    await waiting(engine, 2)
    async with asyncio.timeout(5):
        with pytest.raises(RpcError) as info:
            await engine.call("echo", {"text": "one too many"}, request_id=70, caller=ALICE)
    assert info.value.code == OVERLOADED
    assert len(engine.approvals.pending()) == 2 and h.records()[-1]["event"] == "tool.denied"
    for call in calls:
        call.cancel()
    await asyncio.gather(*calls, return_exceptions=True)


async def test_control_socket_bounds_lines_and_idle_connections(engine: ToolEngine, h: Home) -> None:
    from desktop_agent.approval_socket import MAX_LINE

    engine._control.idle_timeout_s = 0.3
    path = str(h.home / SOCKET_FILE)

    def oversized() -> bytes:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(path)
            s.sendall(b'{"op":"list","pad":"' + b"x" * (MAX_LINE + 10) + b'"}\n')
            return s.recv(4096)

    def idle() -> bytes:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)  # the agent must hang up long before this
            s.connect(path)
            return s.recv(4096)

    assert json.loads(await asyncio.to_thread(oversized))["error"] == "bad_request"
    assert await asyncio.to_thread(idle) == b""
    assert (await owner(h, {"op": "list"}))["ok"] is True  # still serving
