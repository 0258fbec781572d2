"""The node's tool engine: which tools exist, and the checked path every call takes.

Layering: the connection (`desktop_agent.connection`) turns JSON-RPC into calls on this engine; the engine
validates arguments against the manifest's inputSchema, enforces the owner's policy, writes the audit log
and runs the tool function (`desktop_agent.tools.*`). Nothing here knows about sockets.

Rules of a call:
1. Unknown or disabled tool -> RpcError(INVALID_PARAMS); arguments failing the schema -> RpcError(INVALID_PARAMS)
   with the schema's complaint. Nothing runs.
2. `tool.requested` is on disk (fsync'd) before the tool starts; if it cannot be written the tool does not run.
3. Every started call ends with exactly one `tool.finished` (ok | error | cancelled | timeout).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from desktop_agent.tools.base import ProgressFn, ToolContext, ToolFailure, ToolFunc, ToolResult
from desktop_agent.tools.basic import echo, system_info
from spec.errors import INVALID_PARAMS, RpcError
from spec.manifest import argument_problem, load_manifest, schema_validator

__all__ = ["ToolEngine"]

logger = logging.getLogger(__name__)


@dataclass
class _Tool:
    spec: dict[str, Any]
    func: ToolFunc
    validator: Draft202012Validator


class ToolEngine:
    """Owns the node's tools for one agent process."""

    def __init__(self, home: Path, policy: Any = None) -> None:
        self.home = home
        self.policy = policy
        self._on_tools_changed: list[Callable[[], None]] = []
        funcs: dict[str, ToolFunc] = {"echo": echo, "system_info": system_info}
        self._tools: dict[str, _Tool] = {
            spec["name"]: _Tool(spec, funcs[spec["name"]], schema_validator(spec["inputSchema"]))
            for spec in load_manifest()
            if spec["name"] in funcs
        }

    async def start(self) -> None:
        """Start background work (policy watching)."""

    async def aclose(self) -> None:
        """Stop background work and release resources (browser, watchers)."""

    def on_tools_changed(self, callback: Callable[[], None]) -> None:
        """Register a callback run when the set of available tools changes (policy edit)."""
        self._on_tools_changed.append(callback)

    def list_tools(self) -> list[dict[str, Any]]:
        return [t.spec for t in self._tools.values()]

    def audit_head(self) -> dict[str, Any]:
        return {"seq": 0, "hash": "0" * 64}

    async def audit_read(self, after_seq: int, limit: int) -> dict[str, Any]:
        return {"records": [], "head": self.audit_head()}

    async def record(self, event: str, **fields: Any) -> None:
        """Append a non-tool audit record (node.connected, node.disconnected)."""

    async def call(
        self,
        name: str,
        arguments: dict[str, Any],
        *,
        request_id: str | int,
        caller: dict[str, Any],
        progress: ProgressFn | None = None,
    ) -> dict[str, Any]:
        """Run one tool call and return the CallToolResult; see the module's rules."""
        tool = self._tools.get(name)
        if tool is None:
            raise RpcError(INVALID_PARAMS, f"unknown tool: {name}")
        problem = argument_problem(tool.validator, arguments)
        if problem is not None:
            raise RpcError(INVALID_PARAMS, f"invalid arguments for {name}: {problem}")
        ctx = ToolContext(request_id=request_id, caller=caller, home=self.home, policy=self.policy)
        if progress is not None:
            ctx.progress = progress
        try:
            result = await tool.func(arguments, ctx)
        except ToolFailure as exc:
            result = ToolResult.error(str(exc))
        return result.to_wire()
