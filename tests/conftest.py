"""Shared fixtures: a real server process on 127.0.0.1 and real agent node processes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.engines import database, pg_url, postgres, redis_server, redis_url  # noqa: F401  (fixtures)
from tests.support.procs import AgentProc, ServerProc


@pytest.fixture
def server_proc(tmp_path: Path) -> Iterator[ServerProc]:
    server = ServerProc(tmp_path / "server", args=["--heartbeat-interval", "1"]).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def start_node(server_proc: ServerProc, tmp_path: Path) -> Iterator[Callable[..., AgentProc]]:
    """start_node(name, workspace="ws1", args=[...], browser=False) -> a connected AgentProc."""
    agents: list[AgentProc] = []

    def start(
        name: str,
        workspace: str = "ws1",
        args: list[str] | None = None,
        wait: bool = True,
        browser: bool = False,
    ) -> AgentProc:
        credential = server_proc.enroll(name, workspace)
        root = tmp_path / f"{name}-root"
        root.mkdir(exist_ok=True)
        agent = AgentProc(
            tmp_path / f"{name}-home",
            server_proc.url,
            name,
            credential,
            ["--allow-root", str(root), *([] if browser else ["--no-browser"]), *(args or [])],
        )
        agents.append(agent)
        if wait:
            with server_proc.events() as stream:
                agent.start()
                for event, data in stream.items(deadline=time.monotonic() + 30):
                    if event == "node.connected" and data["name"] == name:
                        break
                else:
                    raise TimeoutError(f"node {name} did not connect:\n{''.join(agent.output[-30:])}")
        else:
            agent.start()
        return agent

    try:
        yield start
    finally:
        for agent in agents:
            agent.stop()
