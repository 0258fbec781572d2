"""The planner loop: goal → LLM → tool calls through the router → results back → … → answer.

Layering: `server.planner` (HTTP + SSE) starts a `PlannerRun`; the run asks a provider `Conversation`
(`server.planner.providers`) for the next turn and executes tool calls through `CallRouter.call_tool`,
the path every surface uses, as `Caller(sub="<user>/planner:<run_id>")` so the node's audit log names
the run. Each step is published as an event: ``step``, ``message``, ``tool_call``, ``tool_result``,
then exactly one of ``done`` or ``error``.

Rules:
1. A malformed call from the model (unknown tool, arguments that are not a JSON object or fail the
   schema) becomes an error tool result the model reads; it never ends the run.
2. The run ends at the first turn without tool calls (its text is the answer) or after `max_steps`
   model turns (``done`` with ``reason: "max_steps"``).
3. Cancelling the run's task cancels what it is waiting on: the model request or the running tool
   call (which the router cancels on the node).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from server.mcp import exposed_tools, split_tool_name, tool_error_text
from server.planner.providers import (
    Conversation,
    LlmConfig,
    ToolCallRequest,
    ToolOutcome,
    ToolSpec,
    open_conversation,
)
from server.router import Caller
from spec.errors import RpcError

if TYPE_CHECKING:
    from server.state import ServerState

__all__ = ["DEFAULT_MAX_STEPS", "MAX_STEPS_LIMIT", "SYSTEM_PROMPT", "PlannerRun"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_STEPS = 10
MAX_STEPS_LIMIT = 50
MODEL_TEXT_LIMIT = 32 * 1024
TOOL_TIMEOUT_S = 300.0

SYSTEM_PROMPT = (
    "You are the Cortex planner. You reach the user's machines (nodes) only through the tools offered, "
    "named <node>__<tool>; each description says which node it runs on. Call tools to gather what you "
    "need, one step at a time. If a tool reports an error, read it and correct yourself. When the goal is "
    "met, reply with the answer in plain text and call no more tools. "
    "For anything that keeps running (a dev server, a watcher, a long build) use process_start, never "
    "shell_exec: it returns a process_id at once while the command runs on. Then process_read with "
    "wait_s (e.g. 10) until its output shows it is ready (e.g. a 'listening on' line), answer prompts with "
    "process_write, and look at a web server with browser_navigate to its http://127.0.0.1:<port>/ URL "
    "and browser_screenshot or browser_snapshot. Stop what you started with process_kill when you are "
    "done, unless the user wants it left running; process_list shows what runs. browser_click, "
    "browser_type and browser_press_key answer with the page's new snapshot."
)

Emit = Callable[[str, dict[str, Any]], Awaitable[None]]


@dataclass
class PlannerRun:
    state: ServerState
    config: LlmConfig
    user: Caller
    goal: str
    node: str | None = None
    max_steps: int = DEFAULT_MAX_STEPS
    run_id: str = ""

    def __post_init__(self) -> None:
        if not self.run_id:
            self.run_id = secrets.token_hex(6)
        self.max_steps = max(1, min(self.max_steps, MAX_STEPS_LIMIT))

    @property
    def caller(self) -> Caller:
        """The identity the nodes see (and audit): the run, acting for the user."""
        return Caller(sub=f"{self.user.sub}/planner:{self.run_id}", ws=self.user.ws, role=self.user.role)

    def _tools(self) -> list[ToolSpec]:
        return [
            ToolSpec(t.name, t.description, t.input_schema)
            for t in exposed_tools(self.state, self.caller, self.node)
        ]

    async def run(self, emit: Emit) -> None:
        conversation = open_conversation(self.config, self._system(), self.goal)
        try:
            await self._loop(conversation, emit)
        finally:
            await asyncio.shield(conversation.aclose())

    def _system(self) -> str:
        if self.node:
            return SYSTEM_PROMPT + f" Work on node {self.node!r}."
        return SYSTEM_PROMPT

    async def _loop(self, conversation: Conversation, emit: Emit) -> None:
        last_text = ""
        for step in range(1, self.max_steps + 1):
            await emit("step", {"run_id": self.run_id, "step": step})
            tools = self._tools()
            turn = await conversation.next_turn(tools)
            if turn.text:
                last_text = turn.text
                await emit("message", {"step": step, "text": turn.text})
            if not turn.tool_calls:
                await emit(
                    "done", {"run_id": self.run_id, "answer": turn.text, "reason": "answer", "steps": step}
                )
                return
            known = {t.name for t in tools}
            outcomes = [await self._execute(step, call, known, emit) for call in turn.tool_calls]
            conversation.add_tool_outcomes(outcomes)
        await emit(
            "done",
            {
                "run_id": self.run_id,
                "answer": last_text or None,
                "reason": "max_steps",
                "steps": self.max_steps,
            },
        )

    async def _execute(self, step: int, call: ToolCallRequest, known: set[str], emit: Emit) -> ToolOutcome:
        parts = split_tool_name(call.name)
        await emit(
            "tool_call",
            {
                "step": step,
                "id": call.id,
                "name": call.name,
                "node": parts[0] if parts else None,
                "tool": parts[1] if parts else None,
                "arguments": call.arguments,
            },
        )
        outcome: ToolOutcome
        structured: Any = None
        if call.name not in known or parts is None:
            outcome = ToolOutcome(
                call.id,
                f"Unknown tool {call.name!r}. Available tools: {', '.join(sorted(known)) or 'none'}.",
                True,
            )
        elif call.arguments is None:
            outcome = ToolOutcome(call.id, f"Tool call {call.name!r} not run: {call.arguments_error}.", True)
        else:
            node, tool = parts
            try:
                result = await self.state.router.call_tool(
                    self.caller, node, tool, call.arguments, timeout_s=TOOL_TIMEOUT_S
                )
            except RpcError as exc:
                outcome = ToolOutcome(call.id, tool_error_text(exc, node, tool), True)
            else:
                structured = result.get("structuredContent")
                outcome = _outcome(call.id, result)
        event: dict[str, Any] = {
            "step": step,
            "id": call.id,
            "name": call.name,
            "is_error": outcome.is_error,
            "text": outcome.text,
            "images": [{"mimeType": mime, "data": data} for mime, data in outcome.images],
        }
        if structured is not None:
            event["structured"] = structured
        await emit("tool_result", event)
        return outcome


def _outcome(call_id: str, result: dict[str, Any]) -> ToolOutcome:
    texts: list[str] = []
    images: list[tuple[str, str]] = []
    for item in result.get("content") or []:
        if item.get("type") == "text":
            texts.append(item.get("text", ""))
        elif item.get("type") == "image" and item.get("data"):
            images.append((item.get("mimeType", "image/png"), item["data"]))
    text = "\n".join(texts)
    structured = result.get("structuredContent")
    if structured is not None and (not text or len(text) < 2):
        text = json.dumps(structured, ensure_ascii=False)
    if len(text) > MODEL_TEXT_LIMIT:
        text = text[:MODEL_TEXT_LIMIT] + f"\n… [truncated, {len(text)} characters in all]"
    return ToolOutcome(call_id, text, bool(result.get("isError")), images)
