"""The planner from a script: `Client.plan()` / `AsyncClient.plan()` iterate a run's steps.

Layering: plain HTTP (httpx2) against `POST /api/v1/planner/runs`, reading its Server-Sent Events
(`step`, `tool_call`, `tool_result`, `message`, then `done` or `error`) into `PlanStep` values. Leaving the
loop early (break, exception, garbage collection of the iterator) closes the stream, which cancels the
run on the server — and its running tool call on the node.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx2

from sdk.exceptions import AuthError, ConnectionLost, CortexError, NodeNotFound, PlannerUnavailable

__all__ = ["PlanStep", "aplan", "plan"]

TERMINAL_EVENTS = frozenset({"done", "error"})


@dataclass(frozen=True)
class PlanStep:
    """One event of a planner run: `event` is step|tool_call|tool_result|message|done|error."""

    event: str
    data: dict[str, Any]

    @property
    def final(self) -> bool:
        return self.event in TERMINAL_EVENTS

    @property
    def answer(self) -> str | None:
        return self.data.get("answer") if self.event == "done" else None


def _body(goal: str, node: str | None, max_steps: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"goal": goal}
    if node is not None:
        body["node"] = node
    if max_steps is not None:
        body["max_steps"] = max_steps
    return body


def _headers(token: str | None) -> dict[str, str]:
    headers = {"Accept": "text/event-stream"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def _refusal(status: int, payload: bytes) -> CortexError:
    try:
        body = json.loads(payload)
        message = str(body.get("message") or body.get("error") or payload[:200])
    except ValueError:
        body, message = {}, payload[:200].decode(errors="replace")
    if status in (401, 403):
        return AuthError(message, data={"status": status})
    if status == 404:
        return NodeNotFound(message, data={"status": status})
    if status == 503 and body.get("error") == "planner_unconfigured":
        return PlannerUnavailable(message, data=body)
    return CortexError(
        f"the server refused the run (HTTP {status}): {message}", data={"status": status, **body}
    )


class _SseParser:
    def __init__(self) -> None:
        self.event = "message"
        self.data: list[str] = []

    def feed(self, line: str) -> PlanStep | None:
        if not line:
            if not self.data:
                return None
            step = PlanStep(self.event, json.loads("\n".join(self.data)))
            self.event, self.data = "message", []
            return step
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        return None


def _steps(lines: Iterable[str]) -> Iterator[PlanStep]:
    parser = _SseParser()
    for line in lines:
        step = parser.feed(line)
        if step is not None:
            yield step
            if step.final:
                return


def plan(
    url: str,
    token: str | None,
    goal: str,
    *,
    node: str | None = None,
    max_steps: int | None = None,
    verify: ssl.SSLContext | bool = True,
    timeout: float = 30.0,
) -> Iterator[PlanStep]:
    """Start a run and yield its steps (blocking)."""
    timeouts = httpx2.Timeout(timeout, read=None)
    try:
        with (
            httpx2.Client(base_url=url, headers=_headers(token), timeout=timeouts, verify=verify) as http,
            http.stream("POST", "/api/v1/planner/runs", json=_body(goal, node, max_steps)) as response,
        ):
            if response.status_code != 200:
                raise _refusal(response.status_code, response.read())
            yield from _steps(response.iter_lines())
    except httpx2.TransportError as exc:
        raise ConnectionLost(f"the planner stream from {url} failed: {exc}") from None


async def aplan(
    url: str,
    token: str | None,
    goal: str,
    *,
    node: str | None = None,
    max_steps: int | None = None,
    verify: ssl.SSLContext | bool = True,
    timeout: float = 30.0,
) -> AsyncIterator[PlanStep]:
    """Start a run and yield its steps (async)."""
    timeouts = httpx2.Timeout(timeout, read=None)
    try:
        async with (
            httpx2.AsyncClient(
                base_url=url, headers=_headers(token), timeout=timeouts, verify=verify
            ) as http,
            http.stream("POST", "/api/v1/planner/runs", json=_body(goal, node, max_steps)) as response,
        ):
            if response.status_code != 200:
                raise _refusal(response.status_code, await response.aread())
            parser = _SseParser()
            async for line in response.aiter_lines():
                step = parser.feed(line)
                if step is not None:
                    yield step
                    if step.final:
                        return
    except httpx2.TransportError as exc:
        raise ConnectionLost(f"the planner stream from {url} failed: {exc}") from None
