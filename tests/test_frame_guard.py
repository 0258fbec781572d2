"""A caller's request that is over the node's frame limit once wrapped for the tunnel is refused for that
caller (422), and the node's link stays up for everyone else.

The REST body limit is the frame limit, but the frame the server sends the node wraps the arguments in
an envelope: a body just under the limit made a frame just over it, the agent closed the tunnel (1009),
and every other caller's call on that node failed with 502.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import AgentProc, ServerProc

LIMIT = 256 * 1024  # small, so the test moves little data; the agent is told the same limit


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[ServerProc, AgentProc]]:
    server = ServerProc(tmp_path / "server", args=["--max-frame-bytes", str(LIMIT)]).start()
    agent: AgentProc | None = None
    try:
        credential = server.enroll("n1")
        agent = AgentProc(
            tmp_path / "agent", server.url, "n1", credential, args=["--max-frame-bytes", str(LIMIT)]
        ).start()
        server.wait_status("n1", "connected", timeout=30)
        yield server, agent
    finally:
        if agent is not None:
            agent.stop()
        server.stop()


def test_a_request_too_big_once_wrapped_is_refused_and_the_link_stays(
    node: tuple[ServerProc, AgentProc],
) -> None:
    server, _agent = node
    before = server.node("n1")["connected_at"]
    body = json.dumps({"arguments": {"text": "a" * (LIMIT - 40)}})
    assert len(body) <= LIMIT  # within the body limit
    with server.http() as http:
        refused = http.post(
            "/api/v1/nodes/n1/tools/echo/call", content=body, headers={"content-type": "application/json"}
        )
        assert refused.status_code == 422, refused.text
        assert "frame limit" in refused.json()["message"]
        ok = http.post("/api/v1/nodes/n1/tools/echo/call", json={"arguments": {"text": "still here"}})
        assert ok.status_code == 200 and "still here" in ok.text
    after = server.node("n1")
    assert after["status"] == "connected" and after["connected_at"] == before  # never reconnected
