"""Tier (c): the planner in a real server process, talking to scripted LLM servers that speak the real
OpenAI chat-completions and Anthropic messages wire formats, calling tools on a real agent node."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from sdk import Client
from sdk.exceptions import PlannerUnavailable
from sdk.planner import PlanStep
from tests.support.fake_llm import FakeLLM, Turn
from tests.support.procs import AgentProc, ServerProc
from tests.test_mcp import _sleep_children, wait_no_children

SECRET = "sk-test-secret-123"


@pytest.fixture
def llm(request: pytest.FixtureRequest) -> Iterator[FakeLLM | None]:
    wire = getattr(request, "param", None)
    if wire is None:
        yield None
        return
    with FakeLLM(wire, []) as fake:
        yield fake


@pytest.fixture
def server_proc(tmp_path: Path, llm: FakeLLM | None) -> Iterator[ServerProc]:
    """The conftest server, with the CORTEX_LLM_* environment pointing at the scripted LLM (if any)."""
    env = llm.env(api_key=SECRET) if llm is not None else None
    server = ServerProc(tmp_path / "server", args=["--heartbeat-interval", "1"], env=env).start()
    try:
        yield server
    finally:
        server.stop()


def _audit(server: ServerProc, node: str) -> list[dict[str, Any]]:
    """The node's audit records, read as users read them (`audit/read` through the server, which
    the node answers only once every queued record is written: a `tool.finished` may still be queued
    when the call's answer is out)."""
    with Client(server.url, token=server.token()) as client:
        return list(client.audit(node, limit=500)["records"])


def _run(server: ServerProc, goal: str, **kwargs: Any) -> list[PlanStep]:
    with Client(server.url, token=server.token()) as client:
        return list(client.plan(goal, **kwargs))


def _tool_messages(body: dict[str, Any], wire: str) -> list[tuple[str, bool]]:
    """(text, is_error) of the tool results the planner sent in one request to the model."""
    found: list[tuple[str, bool]] = []
    for message in body["messages"]:
        if wire == "openai" and message.get("role") == "tool":
            found.append((message["content"], message["content"].startswith("ERROR: ")))
        elif wire == "anthropic" and isinstance(message.get("content"), list):
            for block in message["content"]:
                if block.get("type") == "tool_result":
                    text = " ".join(c.get("text", "") for c in block["content"] if c.get("type") == "text")
                    found.append((text, bool(block.get("is_error"))))
    return found


def test_unconfigured_planner_answers_503(server_proc: ServerProc) -> None:
    with server_proc.http(server_proc.token()) as http:
        response = http.post("/api/v1/planner/runs", json={"goal": "anything"})
    assert response.status_code == 503
    body = response.json()
    assert body["error"] == "planner_unconfigured" and "CORTEX_LLM_PROVIDER" in body["message"]
    with Client(server_proc.url, token=server_proc.token()) as client, pytest.raises(PlannerUnavailable):
        list(client.plan("anything"))


@pytest.mark.parametrize("llm", ["openai", "anthropic"], indirect=True)
def test_two_step_run_lists_then_reads(
    llm: FakeLLM, server_proc: ServerProc, start_node: Callable[..., AgentProc], tmp_path: Path
) -> None:
    start_node("laptop")
    root = tmp_path / "laptop-root"
    (root / "notes.txt").write_text("the launch code is 4242\n", encoding="utf-8")
    llm.script[:] = [
        Turn(text="Let me look around.", calls=[("laptop__fs_list", {"path": str(root)})]),
        Turn(calls=[("laptop__fs_read", {"path": str(root / "notes.txt")})]),
        Turn(text="The notes say the launch code is 4242."),
    ]
    steps = _run(server_proc, "What do my notes say?", node="laptop")
    events = [s.event for s in steps]
    assert events[-1] == "done", steps[-1]
    assert steps[-1].answer == "The notes say the launch code is 4242."
    calls = [s.data for s in steps if s.event == "tool_call"]
    assert [c["name"] for c in calls] == ["laptop__fs_list", "laptop__fs_read"]
    results = [s.data for s in steps if s.event == "tool_result"]
    assert not any(r["is_error"] for r in results)
    assert "4242" in results[1]["text"]
    assert "step" in events and "message" in events

    # What the model was offered and told.
    first = llm.requests[0]
    offered = {t["function"]["name"] if llm.wire == "openai" else t["name"] for t in first["tools"]}
    assert {"laptop__fs_list", "laptop__fs_read", "laptop__echo"} <= offered
    assert any("notes.txt" in text for text, _ in _tool_messages(llm.requests[1], llm.wire))
    assert any("4242" in text for text, _ in _tool_messages(llm.requests[2], llm.wire))
    sent = llm.headers[0]
    assert sent.get("authorization") == f"Bearer {SECRET}" or sent.get("x-api-key") == SECRET

    # Both calls are in the node's audit log, made by the planner run acting for the user.
    finished = [
        r
        for r in _audit(server_proc, "laptop")
        if r["event"] == "tool.finished" and r["tool"] in ("fs_list", "fs_read")
    ]
    assert [r["tool"] for r in finished] == ["fs_list", "fs_read"]
    assert all(r["status"] == "ok" for r in finished)
    assert all(
        r["caller"]["sub"].startswith("alice/planner:") and r["caller"]["ws"] == "ws1" for r in finished
    )
    assert SECRET not in "".join(server_proc.output)


@pytest.mark.parametrize("llm", ["openai", "anthropic"], indirect=True)
def test_malformed_tool_calls_are_reported_to_the_model(
    llm: FakeLLM, server_proc: ServerProc, start_node: Callable[..., AgentProc]
) -> None:
    start_node("laptop")
    bad_arguments: dict[str, Any] | str = "{not json" if llm.wire == "openai" else {"text": 5}
    llm.script[:] = [
        Turn(calls=[("ghost__teleport", {}), ("laptop__echo", bad_arguments)]),
        Turn(calls=[("laptop__echo", {"text": "fixed"})]),
        Turn(text="All good."),
    ]
    steps = _run(server_proc, "echo something")
    assert steps[-1].event == "done" and steps[-1].answer == "All good."
    results = [s.data for s in steps if s.event == "tool_result"]
    assert [r["is_error"] for r in results] == [True, True, False]
    reported = _tool_messages(llm.requests[1], llm.wire)
    assert len(reported) == 2 and all(is_error for _, is_error in reported)
    assert "Unknown tool" in reported[0][0] and "laptop__echo" in reported[0][0]
    assert ("JSON" in reported[1][0]) if llm.wire == "openai" else ("text" in reported[1][0])
    assert _tool_messages(llm.requests[2], llm.wire)[-1] == ("fixed", False)


@pytest.mark.parametrize("llm", ["openai"], indirect=True)
def test_arguments_nested_past_the_parser_are_reported_to_the_model(
    llm: FakeLLM, server_proc: ServerProc, start_node: Callable[..., AgentProc]
) -> None:
    # A model's arguments text is input like any other (a prompt-injected page can shape it): nested
    # past the parser, it raised RecursionError out of json.loads and ended the run.
    start_node("laptop")
    llm.script[:] = [
        Turn(calls=[("laptop__echo", "[" * 3000)]),
        Turn(calls=[("laptop__echo", {"text": "fixed"})]),
        Turn(text="All good."),
    ]
    steps = _run(server_proc, "echo something")
    assert steps[-1].event == "done" and steps[-1].answer == "All good.", steps[-1]
    assert [s.data["is_error"] for s in steps if s.event == "tool_result"] == [True, False]
    (reported,) = _tool_messages(llm.requests[1], llm.wire)
    assert reported[1] and "not valid JSON" in reported[0]


@pytest.mark.parametrize("llm", ["openai"], indirect=True)
def test_max_steps_stops_the_run(
    llm: FakeLLM, server_proc: ServerProc, start_node: Callable[..., AgentProc]
) -> None:
    start_node("laptop")
    llm.script[:] = [Turn(calls=[("laptop__echo", {"text": f"round {i}"})]) for i in range(5)]
    steps = _run(server_proc, "loop forever", max_steps=2)
    assert steps[-1].event == "done" and steps[-1].data["reason"] == "max_steps"
    assert len([s for s in steps if s.event == "tool_call"]) == 2
    assert len(llm.requests) == 2


@pytest.mark.parametrize("llm", ["anthropic"], indirect=True)
def test_dropping_the_stream_cancels_the_running_tool_call(
    llm: FakeLLM, server_proc: ServerProc, start_node: Callable[..., AgentProc]
) -> None:
    agent = start_node("laptop")
    llm.script[:] = [Turn(calls=[("laptop__shell_exec", {"command": "echo ready; sleep 600"})])]
    seen: list[str] = []
    with Client(server_proc.url, token=server_proc.token()) as client:
        for step in client.plan("wait a long time"):
            seen.append(step.event)
            if step.event == "tool_call":
                deadline = time.monotonic() + 15
                while not _sleep_children(agent.pid, "sleep 600") and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert _sleep_children(agent.pid, "sleep 600"), "the command did not start on the node"
                break  # leaving the loop closes the stream, which cancels the run
    assert seen[-1] == "tool_call"
    assert wait_no_children(agent.pid, "sleep 600", 15.0)
    deadline = time.monotonic() + 10
    finished: list[dict[str, Any]] = []
    while not finished and time.monotonic() < deadline:
        finished = [
            r
            for r in _audit(server_proc, "laptop")
            if r.get("tool") == "shell_exec" and r["event"] == "tool.finished"
        ]
        time.sleep(0.05)
    assert finished and finished[0]["status"] == "cancelled"
    assert finished[0]["caller"]["sub"].startswith("alice/planner:")


@pytest.mark.parametrize("llm", ["openai"], indirect=True)
def test_run_is_cancelled_by_delete(
    llm: FakeLLM, server_proc: ServerProc, start_node: Callable[..., AgentProc]
) -> None:
    agent = start_node("laptop")
    llm.script[:] = [Turn(calls=[("laptop__shell_exec", {"command": "echo ready; sleep 600"})])]
    token = server_proc.token()
    with (
        httpx2.Client(
            base_url=server_proc.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as http,
        http.stream("POST", "/api/v1/planner/runs", json={"goal": "wait"}) as response,
    ):
        assert response.status_code == 200
        run_id = response.headers["x-cortex-run"]
        events: list[tuple[str, dict[str, Any]]] = []
        event = ""
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                events.append((event, json.loads(line[5:])))
                if event == "tool_call":
                    deadline = time.monotonic() + 15
                    while not _sleep_children(agent.pid, "sleep 600") and time.monotonic() < deadline:
                        time.sleep(0.05)
                    other = server_proc.token("mallory", "ws2")
                    with server_proc.http(other) as stranger:
                        assert stranger.delete(f"/api/v1/planner/runs/{run_id}").status_code == 404
                    with server_proc.http(token) as owner:
                        assert owner.delete(f"/api/v1/planner/runs/{run_id}").status_code == 200
                if event in ("done", "error"):
                    break
    assert events[-1][0] == "error" and events[-1][1]["error"] == "cancelled"
    assert wait_no_children(agent.pid, "sleep 600", 15.0)


def test_bad_bodies_and_unknown_node(server_proc: ServerProc) -> None:
    with server_proc.http(server_proc.token()) as http:
        assert http.post("/api/v1/planner/runs", json={"goal": "x"}).status_code == 503
    with httpx2.Client(base_url=server_proc.url, timeout=10) as http:
        response = http.post("/api/v1/planner/runs", json={"goal": "x"})
        assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Bearer")
