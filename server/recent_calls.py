"""The last tool calls made through this server process, for the dashboard's recent-calls view.

Where it sits: a service below `server.router` (whose `CallRouter.call_tool`, the one path every
surface's calls take, records each call here) and `server.fleet` (which serves `GET /api/v1/calls`).

Rules:
1. `RecentCalls` holds at most `capacity` calls (oldest dropped first) and at most `result_bytes` of
   each result's text: memory is bounded whatever callers do.
2. `visible` shows only calls to nodes of the caller's workspace (admins: all), newest first.
3. A call is recorded when it ends, with its outcome; `result` is its first text block (cut to the
   bound) and `audit` the seqs of its `tool.requested`/`tool.finished` records, which the node reports
   in the result's `_meta["cortex/audit"]` — so the view links a call to what it returned and to
   its audit records.
"""

from __future__ import annotations

import itertools
import json
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from spec.protocol import MetaKey

__all__ = ["DEFAULT_CAPACITY", "DEFAULT_RESULT_BYTES", "CallRecord", "RecentCalls"]

DEFAULT_CAPACITY = 500
DEFAULT_RESULT_BYTES = 4096


class Caller(Protocol):
    """What this module needs of `server.router.Caller` (a Protocol: the router imports this module)."""

    def can_see(self, workspace: str) -> bool: ...

    def wire(self) -> dict[str, str]: ...


@dataclass(slots=True)  # not frozen: a frozen __init__ sets each field through object.__setattr__
class CallRecord:
    id: int
    started_at: float
    duration_ms: float
    node: str
    workspace: str
    tool: str
    caller: dict[str, str]
    outcome: str  # ok | tool_error | timeout | cancelled | rpc_<code> | error
    arguments: dict[str, Any]
    result: str | None
    audit: dict[str, int] | None  # {"requested_seq", "finished_seq"} in the node's audit log

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "started_at": self.started_at,
            "duration_ms": round(self.duration_ms, 1),
            "node": self.node,
            "workspace": self.workspace,
            "tool": self.tool,
            "caller": self.caller,
            "outcome": self.outcome,
            "arguments": self.arguments,
            "result": self.result,
            "audit": self.audit,
        }


class RecentCalls:
    """The last `capacity` tool calls made through this server process (rule 2)."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY, result_bytes: int = DEFAULT_RESULT_BYTES) -> None:
        self._calls: deque[CallRecord] = deque(maxlen=capacity)
        self._ids = itertools.count(1)
        self.result_bytes = result_bytes

    def record(
        self,
        *,
        started_at: float,
        duration_s: float,
        node: str,
        workspace: str,
        tool: str,
        caller: Caller,
        outcome: str,
        arguments: dict[str, Any],
        result: dict[str, Any] | None,
    ) -> None:
        self._calls.append(
            CallRecord(
                next(self._ids),
                started_at,
                duration_s * 1000,
                node,
                workspace,
                tool,
                caller.wire(),
                outcome,
                _bounded_arguments(arguments, self.result_bytes),
                _first_text(result, self.result_bytes),
                _audit_seqs(result),
            )
        )

    async def latest(self, caller: Caller, limit: int) -> list[CallRecord]:
        """`visible`, for the endpoint: a shared log (server.redis_calls) has to ask over the network."""
        return self.visible(caller, limit)

    def visible(self, caller: Caller, limit: int) -> list[CallRecord]:
        out: list[CallRecord] = []
        for call in reversed(self._calls):
            if caller.can_see(call.workspace):
                out.append(call)
                if len(out) >= limit:
                    break
        return out

    def __len__(self) -> int:
        return len(self._calls)


def _first_text(result: dict[str, Any] | None, limit: int) -> str | None:
    if not isinstance(result, dict):
        return None
    for item in result.get("content") or []:
        if isinstance(item, dict) and item.get("type") == "text" and isinstance(item.get("text"), str):
            text: str = item["text"]
            return text if len(text) <= limit else text[: limit - 1] + "…"
        if isinstance(item, dict) and item.get("type") in ("image", "resource_link"):
            return f"({item.get('type')} {item.get('mimeType', '')})".replace(" )", ")")
    return None


def _audit_seqs(result: dict[str, Any] | None) -> dict[str, int] | None:
    meta = result.get("_meta") if isinstance(result, dict) else None
    audit = meta.get(MetaKey.AUDIT) if isinstance(meta, dict) else None
    if not isinstance(audit, dict):
        return None
    seqs = {k: v for k, v in audit.items() if k in ("requested_seq", "finished_seq") and type(v) is int}
    return seqs or None


def _bounded_arguments(arguments: dict[str, Any], limit: int) -> dict[str, Any]:
    # The common case (a few short scalars) is kept without serialising: this runs on every call.
    short = limit // 20
    if len(arguments) <= 16:
        for k, v in arguments.items():  # a loop, not a generator: this runs on every call
            if len(k) > short or not (
                v is None or isinstance(v, bool | int | float) or (isinstance(v, str) and len(v) <= short)
            ):
                break
        else:
            return arguments
    text = json.dumps(arguments, ensure_ascii=False, default=str)
    if len(text) <= limit:
        return arguments
    return {"_truncated": text[: limit - 1] + "…"}
