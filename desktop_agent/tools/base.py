"""What every node tool is: an async function from (arguments, context) to a `ToolResult`.

Sits under the engine (`desktop_agent.engine`), which validates arguments, writes the audit log and
enforces policy before a tool runs; tools themselves only do their job. A tool that ran but could not do
its job raises `ToolFailure` (or returns ``ToolResult(is_error=True)``): that becomes a normal result
with ``isError: true``, never a JSON-RPC error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ProgressFn", "ToolContext", "ToolFailure", "ToolFunc", "ToolResult"]

ProgressFn = Callable[[float, float | None, str | None], Awaitable[None]]
"""progress(progress, total, message): sends `notifications/progress` when the caller asked for it."""


async def _no_progress(progress: float, total: float | None, message: str | None) -> None:
    return None


@dataclass
class ToolContext:
    """Everything a tool may know about the call it serves."""

    request_id: str | int
    caller: dict[str, Any]
    home: Path
    policy: Any  # desktop_agent.policy.Policy: the snapshot in force when the call started
    progress: ProgressFn = _no_progress


class ToolFailure(Exception):
    """The tool ran but could not do its job; the message is shown to the caller as an isError result."""


@dataclass
class ToolResult:
    """An MCP CallToolResult plus what the audit log records about it."""

    content: list[dict[str, Any]] = field(default_factory=list)
    structured: dict[str, Any] | None = None
    is_error: bool = False
    exit_code: int | None = None

    @classmethod
    def text(cls, text: str, structured: dict[str, Any] | None = None, **kw: Any) -> ToolResult:
        return cls(content=[{"type": "text", "text": text}], structured=structured, **kw)

    @classmethod
    def error(cls, message: str, **kw: Any) -> ToolResult:
        return cls(content=[{"type": "text", "text": message}], is_error=True, **kw)

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"content": self.content, "isError": self.is_error}
        if self.structured is not None:
            out["structuredContent"] = self.structured
        return out


ToolFunc = Callable[[dict[str, Any], ToolContext], Awaitable[ToolResult]]
