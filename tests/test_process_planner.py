"""The seed's outcome through the planner: start a web server in the background on the node, open it in
the node's browser, screenshot it, stop it — a real server, a real agent with Chromium, a scripted model
speaking the real OpenAI and Anthropic wire formats, every step in the node's audit log."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sdk import Client
from server.planner.loop import SYSTEM_PROMPT
from tests.support.fake_llm import FakeLLM, Turn
from tests.support.procs import AgentProc, ServerProc

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/chromium"), reason="needs Debian's chromium")


@pytest.fixture(params=["openai", "anthropic"])
def llm(request: pytest.FixtureRequest) -> Iterator[FakeLLM]:
    with FakeLLM(request.param, []) as fake:
        yield fake


@pytest.fixture
def server_proc(tmp_path: Path, llm: FakeLLM) -> Iterator[ServerProc]:
    server = ServerProc(tmp_path / "server", args=["--heartbeat-interval", "1"], env=llm.env()).start()
    try:
        yield server
    finally:
        server.stop()


def _process_id(body: dict[str, Any]) -> str:
    found = re.findall(r"started (p[0-9a-f]{8})", json.dumps(body))
    assert found, body
    return str(found[-1])


def _served_url(body: dict[str, Any]) -> str:
    """The address `http.server` printed in the process_read result the planner sent back."""
    ports = re.findall(r"Serving HTTP on 127\.0\.0\.1 port (\d+)", json.dumps(body))
    assert ports, body
    return f"http://127.0.0.1:{ports[-1]}/"


def test_planner_runs_a_server_in_the_background_and_looks_at_it(
    llm: FakeLLM, server_proc: ServerProc, start_node: Callable[..., AgentProc], tmp_path: Path
) -> None:
    start_node("laptop", browser=True)
    root = tmp_path / "laptop-root"
    (root / "index.html").write_text("<title>Seed Outcome</title><h1>It works</h1>", encoding="utf-8")
    llm.script[:] = [
        Turn(
            text="Starting the web server in the background.",
            calls=[
                (
                    "laptop__process_start",
                    # Port 0: the server binds a port of its own and says which (nothing can take it first).
                    {"command": "python3 -u -m http.server 0 --bind 127.0.0.1", "cwd": str(root)},
                )
            ],
        ),
        Turn(
            make=lambda body: Turn(
                calls=[("laptop__process_read", {"process_id": _process_id(body), "wait_s": 10})]
            )
        ),
        Turn(make=lambda body: Turn(calls=[("laptop__browser_navigate", {"url": _served_url(body)})])),
        Turn(calls=[("laptop__browser_screenshot", {"max_width": 640})]),
        Turn(make=lambda body: Turn(calls=[("laptop__process_kill", {"process_id": _process_id(body)})])),
        Turn(text="The page at localhost shows 'It works'; the server is stopped."),
    ]
    with Client(server_proc.url, token=server_proc.token()) as client:
        steps = list(client.plan("Serve my site and show me a screenshot of it", node="laptop", max_steps=10))
    assert steps[-1].event == "done", steps[-1]
    calls = [s.data["name"] for s in steps if s.event == "tool_call"]
    assert calls == [
        "laptop__process_start",
        "laptop__process_read",
        "laptop__browser_navigate",
        "laptop__browser_screenshot",
        "laptop__process_kill",
    ]
    results = [s.data for s in steps if s.event == "tool_result"]
    assert not any(r["is_error"] for r in results), results
    assert "Serving HTTP" in results[1]["text"]
    assert "Seed Outcome" in results[2]["text"]

    # The model was told how to run things in the background.
    first = llm.requests[0]
    system = first["messages"][0]["content"] if llm.wire == "openai" else json.dumps(first["system"])
    assert SYSTEM_PROMPT[:40] in system and "process_start" in system

    # Read as users read it: `audit/read` answers once every queued record is written.
    with Client(server_proc.url, token=server_proc.token()) as client:
        records = client.audit("laptop", limit=500)["records"]
    finished = [r for r in records if r["event"] == "tool.finished"]
    assert [r["tool"] for r in finished][-5:] == [
        "process_start",
        "process_read",
        "browser_navigate",
        "browser_screenshot",
        "process_kill",
    ]
    assert all(r["status"] == "ok" for r in finished[-5:])
    requested = [r for r in records if r["event"] == "tool.requested"]
    assert [r["tool"] for r in requested][-5:] == [r["tool"] for r in finished][-5:]
    exited = [r for r in records if r["event"] == "process.exited"]
    assert len(exited) == 1 and exited[0]["output_bytes"] > 0
    assert exited[0]["process_id"] == re.findall(r"p[0-9a-f]{8}", results[0]["text"])[0]
