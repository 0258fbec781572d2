"""The audit rule against a real `cortex-agent`: kill -9 under load, and a log silenced via shell_exec.

Real server, real agent, real SDK client over loopback (CONTRACT §8): every tool that ran has its
`tool.requested` on disk after a kill -9 at 64 calls in flight, the chain verifies with
`cortex-agent audit verify`; removing, moving, replacing or cutting `<home>/audit.log` through the agent's
own shell makes it refuse every later tool until it is restarted, and the restarted agent records
`audit.recovered`.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sdk import AsyncClient, CortexError
from tests.support.procs import REPO, AgentProc, ServerProc, _env

LANES = 64


def audit_verify(home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "desktop_agent.cli", "audit", "verify", "--home", str(home)],
        env=_env(), cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def audit_records(home: Path) -> list[dict[str, Any]]:
    out = []
    for line in (home / "audit.log").read_bytes().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # a torn last line is allowed after kill -9
            continue
    return out


def restart(agent: AgentProc, server: ServerProc) -> AgentProc:
    again = AgentProc(agent.home, agent.server_url, agent.name, agent.credential, agent.args)
    with server.events() as stream:
        again.start()
        for event, data in stream.items(deadline=time.monotonic() + 30):
            if event == "node.connected" and data["name"] == agent.name:
                return again
    raise TimeoutError("the restarted agent did not connect")


async def test_kill_9_under_load_loses_no_requested_record(
    server_proc: ServerProc, start_node: Callable[..., AgentProc], tmp_path: Path
) -> None:
    agent = start_node("laptop", args=["--max-concurrency", "64"])
    markers = tmp_path / "laptop-root"
    echoed: set[str] = set()
    completed = asyncio.Event()
    counter = iter(range(100_000))

    async def lane(client: AsyncClient) -> None:
        for i in counter:
            try:
                if i % 4 == 0:  # a side effect the tool leaves behind, even if its answer is lost
                    await client.call("laptop", "shell_exec", {"command": f": > {markers}/m-{i}"}, timeout=20)
                else:
                    result = await client.call("laptop", "echo", {"text": f"e-{i}"}, timeout=20)
                    echoed.add(result.text)
            except CortexError:
                return  # the node is gone
            if len(echoed) >= 400:
                completed.set()

    async with AsyncClient(server_proc.url, token=server_proc.token()) as client:
        lanes = [asyncio.create_task(lane(client)) for _ in range(LANES)]
        async with asyncio.timeout(60):
            await completed.wait()
        agent.kill()  # kill -9 with 64 calls in flight
        async with asyncio.timeout(30):
            await asyncio.gather(*lanes)

    report = audit_verify(agent.home)
    assert report.returncode == 0, report.stdout + report.stderr
    requested = {
        json.dumps(r["arguments"], sort_keys=True)
        for r in audit_records(agent.home)
        if r["event"] == "tool.requested"
    }
    ran_shell = sorted(p.name for p in markers.glob("m-*"))
    assert len(echoed) >= 400 and ran_shell
    for text in echoed:  # every answer a caller got came from a tool whose request is on disk
        assert json.dumps({"text": text}) in requested, text
    for name in ran_shell:  # every side effect too, answered or not
        assert json.dumps({"command": f": > {markers}/{name}"}) in requested, name

    again = restart(agent, server_proc)  # the chain goes on after the crash
    async with AsyncClient(server_proc.url, token=server_proc.token()) as client:
        assert (await client.call("laptop", "echo", {"text": "after"})).text == "after"
    again.stop()
    assert audit_verify(agent.home).returncode == 0


SILENCE = {
    "rm": "rm {log}",
    "mv": "mv {log} {log}.moved",
    "replace": "cp {log} {log}.copy && mv {log}.copy {log}",
    "truncate": "truncate -s 100 {log}",
}


@pytest.mark.parametrize("how", sorted(SILENCE))
async def test_silenced_log_refuses_tools_until_restart(
    server_proc: ServerProc, start_node: Callable[..., AgentProc], tmp_path: Path, how: str
) -> None:
    agent = start_node("laptop")
    log = agent.home / "audit.log"
    marker = tmp_path / "laptop-root" / "ran"
    async with AsyncClient(server_proc.url, token=server_proc.token()) as client:
        assert (await client.call("laptop", "echo", {"text": "hi"})).text == "hi"
        done = await client.call("laptop", "shell_exec", {"command": SILENCE[how].format(log=log)})
        assert not done.is_error, done.text
        for _ in range(2):
            refused = await client.call("laptop", "shell_exec", {"command": f"touch {marker}"})
            assert refused.is_error and "audit log" in refused.text
            assert not marker.exists()
        refused_echo = await client.call("laptop", "echo", {"text": "still?"})
        assert refused_echo.is_error and "audit log" in refused_echo.text
    if how != "replace":  # the log at the path no longer reaches what the agent wrote
        assert audit_verify(agent.home).returncode == 1
    if how == "rm":  # a new link (server restart) does not bring the node back to running tools
        server_proc.stop()
        with server_proc.start().events() as stream:
            for event, data in stream.items(deadline=time.monotonic() + 30):
                if event == "node.connected" and data["name"] == "laptop":
                    break
        async with AsyncClient(server_proc.url, token=server_proc.token()) as client:
            refused = await client.call("laptop", "shell_exec", {"command": f"touch {marker}"})
            assert refused.is_error and "audit log" in refused.text and not marker.exists()

    agent.stop()
    again = restart(agent, server_proc)
    async with AsyncClient(server_proc.url, token=server_proc.token()) as client:
        assert (await client.call("laptop", "echo", {"text": "back"})).text == "back"
    again.stop()
    recovered = [r for r in audit_records(agent.home) if r["event"] == "audit.recovered"]
    # one naming the refusal (a cut mid-line also gets the torn-line recovery record)
    assert [r for r in recovered if "refused every tool" in r["reason"]]
    report = audit_verify(agent.home)
    assert report.returncode == 0, report.stdout
