"""Two real `cortex-server serve --redis-url` replicas share their per-process state through a real Redis.

The replicas share one data directory (the store) and one redis-server: failed `/oauth/token` attempts
counted on one replica block the same client on the other (a guesser gets no fresh allowance per
replica), and a call made through one replica is in `GET /api/v1/calls` of the other.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import AgentProc, ServerProc


@pytest.fixture
def replicas(tmp_path: Path, redis_url: str) -> Iterator[tuple[ServerProc, ServerProc]]:
    data = tmp_path / "data"
    one = ServerProc(data, args=["--redis-url", redis_url]).start()
    two = ServerProc(data, args=["--redis-url", redis_url])
    try:
        two.start()
        yield one, two
    finally:
        two.stop()
        one.stop()


def _bad_token_request(server: ServerProc, client_id: str) -> int:
    with server.http() as http:
        response = http.post(
            "/oauth/token",
            data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": "cnc_wrong"},
        )
    return response.status_code


def test_oauth_failures_on_one_replica_block_on_the_other(replicas: tuple[ServerProc, ServerProc]) -> None:
    one, two = replicas
    one.enroll("n1")
    for _ in range(5):  # CLIENT_BACKOFF: five free failures, all on replica one
        assert _bad_token_request(one, "n1") == 401
    assert _bad_token_request(one, "n1") == 401  # the sixth is counted and blocks the client ...
    assert _bad_token_request(two, "n1") == 429  # ... on every replica
    assert _bad_token_request(two, "someone-else") == 401  # other clients are not slowed


def test_a_call_through_one_replica_is_listed_by_the_other(
    replicas: tuple[ServerProc, ServerProc], tmp_path: Path
) -> None:
    one, two = replicas
    agent = AgentProc(tmp_path / "home", one.url, "n1", one.enroll("n1"), ["--no-browser"]).start()
    try:
        one.wait_status("n1", "connected", timeout=60)
        with one.http() as http:
            call = http.post("/api/v1/nodes/n1/tools/echo/call", json={"arguments": {"text": "across"}})
            assert call.status_code == 200, call.text
        with two.http() as http:
            listed = http.get("/api/v1/calls").json()["calls"]
        # The record is pushed in the background: a bounded wait on the other replica's answer.
        if not any(c["result"] == "across" for c in listed):
            for _ in range(200):
                with two.http() as http:
                    listed = http.get("/api/v1/calls").json()["calls"]
                if any(c["result"] == "across" for c in listed):
                    break
        assert [c["node"] for c in listed if c["result"] == "across"] == ["n1"]
        with two.http(two.token("bob", "ws2")) as http:
            assert http.get("/api/v1/calls").json()["calls"] == []  # another workspace sees nothing
    finally:
        agent.stop()
