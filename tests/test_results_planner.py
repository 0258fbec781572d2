"""The planner with a result too large for one message (issue 21): the model gets the summary (preview,
size) plus the artifact link, never the megabytes. Real server, real agent, a scripted LLM."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sdk import Client
from tests.support.fake_llm import FakeLLM, Turn
from tests.support.procs import AgentProc, ServerProc
from tests.test_planner import _tool_messages


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    with FakeLLM("openai", []) as fake:
        yield fake


def test_the_model_gets_a_summary_and_the_link(llm: FakeLLM, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "big.txt").write_text("BEGIN " + "z" * 3_000_000)
    server = ServerProc(
        tmp_path / "server", args=["--heartbeat-interval", "1", "--max-frame-bytes", "1048576"], env=llm.env()
    ).start()
    agent: AgentProc | None = None
    try:
        agent = AgentProc(
            tmp_path / "home",
            server.url,
            "laptop",
            server.enroll("laptop"),
            ["--allow-root", str(root), "--no-browser"],
        ).start()
        server.wait_status("laptop", "connected", 30)
        llm.script[:] = [
            Turn(calls=[("laptop__fs_read", {"path": "big.txt", "limit": 4_000_000})]),
            Turn(text="It is a big file of z."),
        ]
        with Client(server.url, token=server.token()) as client:
            steps = list(client.plan("What is in big.txt?", node="laptop"))
        assert steps[-1].event == "done", steps[-1]
        told = [text for text, _ in _tool_messages(llm.requests[1], "openai")]
        assert len(told) == 1 and len(told[0]) < 64 * 1024
        assert told[0].startswith("BEGIN zzz") and "/api/v1/artifacts/" in told[0]
        assert "The whole result (" in told[0]  # the size and the link, from the server's summary
    finally:
        if agent is not None:
            agent.stop()
        server.stop()
