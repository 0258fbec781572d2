"""Shared fixtures (a real server process on 127.0.0.1 and real agent node processes) and the test tiers.

Tiers (pytest markers, registered in pyproject.toml; `pytest -m unit`, `make test-unit`, ...). Every test
module has exactly one, from `tests/tiers.py`; a module missing from it stops the collection, so a new
module must say which tier it is in:

- `unit`: one part, or two protocol cores wired text to text; no server or agent process, no browser.
- `inprocess`: several real parts wired in this process (the Starlette app under TestClient, a
  ToolEngine running real tools, real local sockets and files), still no server or agent process.
- `e2e`: real loopback end to end: starts a Cortex server or agent process, a browser, an X server or
  an installed copy. A module with any such test is e2e as a whole.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.engines import (  # noqa: F401  (fixtures)
    database,
    haproxy,
    pg_url,
    postgres,
    redis_server,
    redis_url,
)
from tests.support.procs import AgentProc, ServerProc
from tests.tiers import TIERS


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with its module's tier (tests/tiers.py); an untiered module is a usage error."""
    untiered: set[str] = set()
    for test in items:
        module = Path(str(test.path)).stem
        tier = TIERS.get(module)
        if tier is None:
            untiered.add(module)
            continue
        test.add_marker(getattr(pytest.mark, tier))
    if untiered:
        raise pytest.UsageError(
            f"test modules without a tier: {', '.join(sorted(untiered))}; add each to tests/tiers.py"
        )


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
