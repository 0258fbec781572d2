"""GET /metrics against a real server process: the exposition follows what happens on the server.

A node connecting, a call running and finishing, a cancelled call and a refused token each change the
exposition as an operator would expect, and no node name ever appears in it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx2
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from sdk import AsyncClient, CallCancelled
from tests.support.procs import AgentProc, ServerProc

NODE = "zebra-quietly-metered"


def scrape(server: ServerProc) -> tuple[dict[tuple[str, tuple[tuple[str, str], ...]], float], str]:
    response = httpx2.get(server.url + "/metrics", timeout=10)
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples, response.text


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_metric(server: ServerProc, check: Callable[[dict], bool], timeout: float = 10.0) -> dict:  # type: ignore[type-arg]
    """Scrape until *check* holds (each scrape is a real request; bounded by *timeout*)."""
    deadline = time.monotonic() + timeout
    while True:
        samples, _ = scrape(server)
        if check(samples):
            return samples
        if time.monotonic() > deadline:
            raise TimeoutError(f"metrics never matched; last: {samples}")


def test_exposition_follows_nodes_calls_and_refusals(
    server_proc: ServerProc, start_node: Callable[..., AgentProc]
) -> None:
    before, _ = scrape(server_proc)
    assert value(before, "cortex_nodes_connected") == 0
    assert value(before, "cortex_node_handshakes_total") == 0

    start_node(NODE)
    after_connect, _ = scrape(server_proc)
    assert value(after_connect, "cortex_nodes_connected") == 1
    assert value(after_connect, "cortex_node_handshakes_total") == 1

    with server_proc.http() as http:
        response = http.post(f"/api/v1/nodes/{NODE}/tools/echo/call", json={"arguments": {"text": "hi"}})
        assert response.status_code == 200, response.text
    after_call, text = scrape(server_proc)
    assert value(after_call, "cortex_tool_calls_total", tool="echo", outcome="ok") == 1
    assert value(after_call, "cortex_tool_call_seconds_count") == 1
    assert value(after_call, "cortex_tool_calls_in_flight") == 0

    bad_refusals = value(after_call, "cortex_node_refusals_total", reason="malformed")
    with pytest.raises(websockets.InvalidStatus) as refused:
        asyncio.run(_connect_with(server_proc, "not-a-jwt"))
    assert refused.value.response.status_code == 401
    after_refusal, text = scrape(server_proc)
    assert value(after_refusal, "cortex_node_refusals_total", reason="malformed") == bad_refusals + 1
    assert value(after_refusal, "cortex_node_handshakes_total") == 1

    assert NODE not in text
    assert "zebra" not in text


async def _connect_with(server: ServerProc, token: str) -> None:
    url = "ws://" + server.url.removeprefix("http://") + "/api/v1/nodes/connect"
    async with connect(
        url,
        additional_headers={"Authorization": f"Bearer {token}"},
        subprotocols=["cortex.v1"],  # type: ignore[list-item]
        open_timeout=10,
    ):
        pass


async def test_in_flight_gauge_and_cancelled_outcome(
    server_proc: ServerProc, start_node: Callable[..., AgentProc]
) -> None:
    start_node(NODE)
    async with AsyncClient(server_proc.url, token=server_proc.admin_token) as client:
        call = client.start(NODE, "shell_exec", {"command": "sleep 30"})
        await asyncio.to_thread(
            wait_metric, server_proc, lambda s: value(s, "cortex_tool_calls_in_flight") == 1
        )
        await call.cancel()
        with pytest.raises(CallCancelled):
            await call
    samples = await asyncio.to_thread(
        wait_metric,
        server_proc,
        lambda s: value(s, "cortex_tool_calls_total", tool="shell_exec", outcome="cancelled") == 1,
    )
    assert value(samples, "cortex_tool_calls_in_flight") == 0
    _, text = scrape(server_proc)
    assert NODE not in text
