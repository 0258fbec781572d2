"""`POST /oauth/token` backs off failed attempts per client_id and per remote address.

The rules are tested on `FailureBackoff` with a hand-driven clock, then end to end on the real app
(Starlette TestClient) with small policies: a guesser gets 429 + Retry-After, other clients do not.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from server import admin
from server.app import build_app
from server.backoff import BackoffPolicy, FailureBackoff
from server.config import ServerConfig


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_exponential_and_capped() -> None:
    clock = _Clock()
    table = FailureBackoff(BackoffPolicy(free_failures=2, base_s=1.0, cap_s=8.0), clock)
    assert [table.failed("a") for _ in range(2)] == [0.0, 0.0]
    delays = []
    for _ in range(6):
        delays.append(table.failed("a"))
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert table.retry_after("a") == 8.0
    assert table.retry_after("b") == 0.0  # another key is untouched
    clock.now += 8.0
    assert table.retry_after("a") == 0.0
    for _ in range(200):  # a patient guesser: no overflow, still the cap
        table.failed("a")
    assert table.retry_after("a") == 8.0


def test_success_clears_and_idle_keys_are_forgotten() -> None:
    clock = _Clock()
    table = FailureBackoff(BackoffPolicy(free_failures=0, base_s=1.0, cap_s=4.0, forget_after_s=60), clock)
    table.failed("a")
    table.succeeded("a")
    assert table.retry_after("a") == 0.0
    table.failed("b")
    table.failed("b")
    clock.now += 61
    assert table.retry_after("b") == 0.0
    assert table.failed("b") == 1.0  # counting starts again


def test_memory_is_bounded() -> None:
    table = FailureBackoff(BackoffPolicy(max_keys=100), _Clock())
    for i in range(10_000):
        table.failed(f"client-{i}")
    assert len(table) == 100
    assert FailureBackoff.header_value(0.2) == "1" and FailureBackoff.header_value(2.5) == "3"


@pytest.fixture
def app_client(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    data_dir = tmp_path / "srv"
    creds = {name: admin.enroll_node(data_dir, name, "ws1") for name in ("victim", "other")}
    config = ServerConfig(
        data_dir=data_dir,
        oauth_client_backoff=BackoffPolicy(free_failures=3, base_s=30.0, cap_s=60.0),
        oauth_address_backoff=BackoffPolicy(free_failures=20, base_s=30.0, cap_s=60.0),
    )
    with TestClient(build_app(config)) as client:
        yield client, creds


def _token(client: TestClient, client_id: str, secret: str) -> tuple[int, dict[str, str], dict[str, str]]:
    response = client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
    )
    return response.status_code, dict(response.headers), response.json()


def test_a_guessed_client_backs_off_and_others_do_not(app_client: tuple[TestClient, dict[str, str]]) -> None:
    client, creds = app_client
    for _ in range(4):  # three free failures, the fourth blocks
        status, _, body = _token(client, "victim", "cnc_wrong")
        assert status == 401 and body["error"] == "invalid_client"
    status, headers, body = _token(client, "victim", "cnc_wrong")
    assert status == 429 and body["error"] == "too_many_requests"
    assert 1 <= int(headers["retry-after"]) <= 30
    # While blocked even the right secret is not checked (a guesser must learn nothing).
    assert _token(client, "victim", creds["victim"])[0] == 429
    # Another client, from the same address, is not slowed.
    status, _, body = _token(client, "other", creds["other"])
    assert status == 200 and body["token_type"] == "Bearer"


def test_an_address_spraying_client_ids_backs_off(app_client: tuple[TestClient, dict[str, str]]) -> None:
    client, creds = app_client
    statuses = [_token(client, f"guess-{i}", "cnc_wrong")[0] for i in range(25)]
    assert statuses[:20] == [401] * 20 and set(statuses[21:]) == {429}
    status, headers, _ = _token(client, "guess-new", "cnc_wrong")
    assert status == 429 and int(headers["retry-after"]) >= 1
    # An enrolled node behind the same address (a NAT, a load balancer) is not locked out by the sprayer.
    status, _, body = _token(client, "other", creds["other"])
    assert status == 200 and body["token_type"] == "Bearer"
