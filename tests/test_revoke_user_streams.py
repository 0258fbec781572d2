"""`revoke-user` also ends the user's long-lived HTTP streams: the node event stream (SSE) and a planner
run's stream, whose run (and the tool running on the node) is then cancelled.

Real processes: the server (with its planner pointed at the scripted local LLM stand-in), a node, and
the CLI in a third process.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2
import pytest

from tests.support.fake_llm import FakeLLM, Turn
from tests.support.procs import REPO, AgentProc, ServerProc


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    with FakeLLM("openai", [Turn(calls=[("laptop__shell_exec", {"command": "sleep 30"})])]) as fake:
        yield fake


@pytest.fixture
def server_proc(tmp_path: Path, llm: FakeLLM) -> Iterator[ServerProc]:
    server = ServerProc(
        tmp_path / "server", args=["--heartbeat-interval", "1"], env=llm.env(api_key="k")
    ).start()
    try:
        yield server
    finally:
        server.stop()


def _read_until_end(
    url: str, method: str, token: str, first_line: threading.Event, **kwargs: object
) -> float:
    with (
        httpx2.Client(timeout=httpx2.Timeout(60.0), headers={"Authorization": f"Bearer {token}"}) as http,
        http.stream(method, url, **kwargs) as response,  # type: ignore[arg-type]
    ):
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event:") and ("tool_call" in line or "node." in line):
                first_line.set()
    return time.monotonic()


def test_revoke_user_ends_event_and_planner_streams(
    server_proc: ServerProc, start_node: Callable[..., AgentProc]
) -> None:
    start_node("laptop")
    token = server_proc.token("alice", "ws1")
    ended: dict[str, float] = {}
    started = {name: threading.Event() for name in ("events", "planner")}

    def watch(name: str, method: str, path: str, **kwargs: object) -> None:
        ended[name] = _read_until_end(server_proc.url + path, method, token, started[name], **kwargs)

    threads = [
        threading.Thread(target=watch, args=("events", "GET", "/api/v1/events"), daemon=True),
        threading.Thread(
            target=watch,
            args=("planner", "POST", "/api/v1/planner/runs"),
            kwargs={"json": {"goal": "wait", "node": "laptop"}},
            daemon=True,
        ),
    ]
    for thread in threads:
        thread.start()
    assert all(event.wait(30) for event in started.values()), "the streams did not start"
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "revoke-user", "alice", "--data-dir", str(server_proc.data_dir)],
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    revoked_at = time.monotonic()
    assert done.returncode == 0, done.stderr
    for thread in threads:
        thread.join(5)
    assert set(ended) == {"events", "planner"}, "a stream of the revoked user is still open"
    latencies = {name: at - revoked_at for name, at in ended.items()}
    print(f"\nrevoke-user to stream end: { {k: f'{v * 1000:.0f} ms' for k, v in latencies.items()} }")
    assert max(latencies.values()) < 2.0
