"""Approval on the node: the waiting room where calls to `[approval] require` tools wait for the owner.

Layering: a leaf under the engine (`desktop_agent.engine` calls `ApprovalRoom.ask` before a call takes a
concurrency slot); the owner's answers come from the local control socket
(`desktop_agent.approval_socket`, `cortex-agent approvals|approve|deny`) and from the tray
(`desktop_agent.tray`), both on this node. Nothing here knows about the network: no server, dashboard
or tool can answer (CONTRACT §8).

Rules:
1. A call to a tool in `policy.approval_required` is audited `tool.approval_requested` (durable: the
   audit log's `append` fsyncs) with an approval id, reports `waiting for approval on <node>` as
   progress, and waits. It holds no concurrency slot while it waits (the engine asks before it admits).
2. The answer is audited before the tool runs: `tool.approved` (``approver`` = the local OS user,
   ``via`` = cli | tray | allowance, ``scope`` = once | caller, ``until`` = RFC 3339 or null) or
   `tool.denied` (``reason`` = denied | timeout | withdrawn). A denial is an isError result, never a
   JSON-RPC error.
3. No answer within `policy.approval_timeout_s` is a denial (``timeout``); a cancel from the caller (or
   the link dropping) withdraws the request (``withdrawn``).
4. "Allow this caller for N minutes" remembers (caller sub, caller ws, tool) until then, in memory only:
   later calls of that caller to that tool are audited `tool.approved` (``via`` allowance) and run at
   once. A restart forgets every allowance.
5. Listeners (`on_change`) get the list of waiting requests after every change; they run on the
   agent's loop and must not block (the tray and the tunnel only record it and hand it on).
6. What is shown of a request (tool, arguments, caller) is redacted like the audit log and cut short:
   it reaches the screen, a terminal and the server.
7. At most `max_waiting` calls wait at once (default `MAX_WAITING`); one more is refused at once
   (`ApprovalsFull`, the engine's OVERLOADED): a flood of calls cannot grow the room, the owner's
   screen or the server's list without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from desktop_agent.redaction import redact

__all__ = [
    "MAX_WAITING",
    "Answer",
    "ApprovalRoom",
    "ApprovalsFull",
    "PendingApproval",
    "UnknownApproval",
    "local_user",
    "rfc3339",
]

logger = logging.getLogger(__name__)

AuditAppend = Callable[..., Awaitable[Any]]
ProgressFn = Callable[[float, float | None, str | None], Awaitable[None]]
SHOWN_STRING = 200  # characters of one argument string shown to the owner (rule 6)
SHOWN_ITEMS = 20  # keys / list items shown
MAX_ALLOW_MINUTES = 24 * 60
MAX_WAITING = 64


class ApprovalsFull(RuntimeError):
    """Rule 7: `max_waiting` calls already wait for the owner."""


class UnknownApproval(LookupError):
    """No call waits under that approval id (answered, timed out, withdrawn, or never asked)."""


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def local_user(uid: int | None = None) -> str:
    """The name of the local OS user `uid` (default: ours), for the ``approver`` field."""
    import os
    import pwd

    try:
        return pwd.getpwuid(os.getuid() if uid is None else uid).pw_name
    except KeyError:
        return getpass.getuser() if uid is None else f"uid {uid}"


def _shorten(value: Any, depth: int = 0) -> Any:
    if depth > 4:
        return "..."
    if isinstance(value, dict):
        items = list(value.items())
        out = {str(k)[:64]: _shorten(v, depth + 1) for k, v in items[:SHOWN_ITEMS]}
        if len(items) > SHOWN_ITEMS:
            out["..."] = f"{len(items) - SHOWN_ITEMS} more"
        return out
    if isinstance(value, list):
        shown = [_shorten(v, depth + 1) for v in value[:SHOWN_ITEMS]]
        return shown + ([f"... {len(value) - SHOWN_ITEMS} more"] if len(value) > SHOWN_ITEMS else [])
    if isinstance(value, str) and len(value) > SHOWN_STRING:
        return value[:SHOWN_STRING] + f"...[{len(value)} chars]"
    return value


def shown_arguments(arguments: Any) -> Any:
    """Rule 6: the arguments as the owner sees them (redacted, cut short)."""
    return _shorten(redact(arguments))


@dataclass(frozen=True)
class Answer:
    approved: bool
    approver: str
    via: str  # cli | tray
    until: float | None = None  # time.time() an allowance for this caller ends; None = once


@dataclass
class PendingApproval:
    id: str
    request_id: Any
    tool: str
    arguments: Any  # as shown (rule 6)
    caller: dict[str, Any]
    since: float
    future: asyncio.Future[Answer] = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "request_id": self.request_id,
            "tool": self.tool,
            "arguments": self.arguments,
            "caller": {"sub": self.caller.get("sub"), "ws": self.caller.get("ws")},
            "since": rfc3339(self.since),
        }

    def summary(self) -> str:
        """One line for a menu or notification: tool, arguments, caller."""
        import json

        args = json.dumps(self.arguments, ensure_ascii=False, separators=(", ", ": "))
        if len(args) > 120:
            args = args[:117] + "..."
        who = self.caller.get("sub") or "?"
        return f"{self.tool} {args} from {who}"


@dataclass(frozen=True)
class _Allowance:
    until: float
    approval_id: str
    approver: str


class ApprovalRoom:
    """The calls waiting for the node owner's answer, and the owner's standing allowances (rule 4)."""

    def __init__(self, node_name: str = "", *, clock: Callable[[], float] = time.time) -> None:
        self.node_name = node_name
        self.max_waiting = MAX_WAITING
        self._clock = clock
        self._waiting: dict[str, PendingApproval] = {}
        self._allowances: dict[tuple[Any, Any, str], _Allowance] = {}
        self._listeners: list[Callable[[list[PendingApproval]], None]] = []

    # -- what waits -------------------------------------------------------------------------------
    def pending(self) -> list[PendingApproval]:
        """Waiting requests, oldest first."""
        return list(self._waiting.values())

    def to_json(self) -> list[dict[str, Any]]:
        return [p.to_json() for p in self._waiting.values()]

    def on_change(self, listener: Callable[[list[PendingApproval]], None]) -> None:
        self._listeners.append(listener)

    def _changed(self) -> None:
        snapshot = self.pending()
        for listener in list(self._listeners):
            try:
                listener(snapshot)
            except Exception:
                logger.exception("approval listener failed")

    # -- the owner's answer (on the agent's loop) ------------------------------------------------------
    def answer(
        self, approval_id: str, *, approve: bool, approver: str, via: str, minutes: float | None = None
    ) -> None:
        """Approve (once, or this caller for `minutes`) or deny a waiting call; UnknownApproval if none."""
        pending = self._waiting.get(approval_id)
        if pending is None or pending.future.done():
            raise UnknownApproval(approval_id)
        if minutes is not None and not 0 < minutes <= MAX_ALLOW_MINUTES:
            raise ValueError(f"minutes must be between 0 and {MAX_ALLOW_MINUTES}")
        until = self._clock() + minutes * 60 if (approve and minutes is not None) else None
        pending.future.set_result(Answer(approve, approver, via, until))

    # -- the engine's question ---------------------------------------------------------------------------
    async def ask(
        self,
        *,
        audit: AuditAppend,
        tool: str,
        arguments: Any,
        request_id: Any,
        caller: dict[str, Any],
        timeout_s: float,
        progress: ProgressFn | None = None,
    ) -> str | None:
        """Rules 1-4: None when the call may run (its approval audited), else why it may not."""
        ids = {"request_id": request_id, "tool": tool, "caller": caller}
        key = (caller.get("sub"), caller.get("ws"), tool)
        allowance = self._allowances.get(key)
        if allowance is not None:
            if allowance.until > self._clock():
                await audit(
                    "tool.approved",
                    **ids,
                    approval_id=allowance.approval_id,
                    approver=allowance.approver,
                    via="allowance",
                    scope="caller",
                    until=rfc3339(allowance.until),
                )
                return None
            del self._allowances[key]
        if len(self._waiting) >= self.max_waiting:  # rule 7
            raise ApprovalsFull(f"{len(self._waiting)} calls already wait for the owner's approval")
        approval_id = self._new_id()
        shown = shown_arguments(arguments)
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        pending = PendingApproval(approval_id, request_id, tool, shown, dict(caller), self._clock(), future)
        await audit("tool.approval_requested", **ids, arguments=arguments, approval_id=approval_id)
        self._waiting[approval_id] = pending
        self._changed()
        try:
            if progress is not None:
                with contextlib.suppress(Exception):  # a caller gone deaf must not lose the answer
                    await progress(0, None, f"waiting for approval on {self.node_name or 'this node'}")
            try:
                async with asyncio.timeout(timeout_s):
                    answer = await future
            except TimeoutError:
                answer = None
        except asyncio.CancelledError:
            self._forget(approval_id)
            await asyncio.shield(audit("tool.denied", **ids, approval_id=approval_id, reason="withdrawn"))
            raise
        self._forget(approval_id)
        if answer is None:
            await audit("tool.denied", **ids, approval_id=approval_id, reason="timeout")
            return (
                f"{tool} was not approved: nobody answered on node {self.node_name or 'this node'} "
                f"within {timeout_s:g} s (approval {approval_id}); the tool did not run"
            )
        if not answer.approved:
            await audit(
                "tool.denied",
                **ids,
                approval_id=approval_id,
                reason="denied",
                approver=answer.approver,
                via=answer.via,
            )
            return (
                f"{tool} was denied by the owner of node {self.node_name or 'this node'} "
                f"(approval {approval_id}); the tool did not run"
            )
        await audit(
            "tool.approved",
            **ids,
            approval_id=approval_id,
            approver=answer.approver,
            via=answer.via,
            scope="once" if answer.until is None else "caller",
            until=None if answer.until is None else rfc3339(answer.until),
        )
        if answer.until is not None:
            self._allowances[key] = _Allowance(answer.until, approval_id, answer.approver)
        return None

    def _forget(self, approval_id: str) -> None:
        if self._waiting.pop(approval_id, None) is not None:
            self._changed()

    def _new_id(self) -> str:
        while True:
            approval_id = secrets.token_hex(4)
            if approval_id not in self._waiting:
                return approval_id
