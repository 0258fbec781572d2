"""Call routing: every surface (REST, client RPC, MCP, planner) calls node tools through `CallRouter`.

Layering: surfaces → `CallRouter` → `NodeRegistry` link → tunnel. The router enforces the workspace
boundary, checks arguments against the node's declared inputSchema, attaches the caller identity
(`_meta["cortex/caller"]`), applies the call timeout (which cancels the work on the node too) and
counts calls. A shared routing layer for several replicas replaces `LocalRegistry` behind it, not this.

Rules:
1. A node of another workspace is reported exactly like a missing one (`NodeNotFound`: NODE_NOT_FOUND,
   reason ``not_found``); a known node without a live link is `NodeNotConnected` (reason ``not_connected``).
2. An unknown tool is `UnknownTool` (INVALID_PARAMS reason ``unknown_tool``); arguments failing the
   schema are `InvalidArguments` (reason ``invalid_arguments``) with the schema's complaint. Nothing
   reaches the node.
3. A timeout is `CallTimeout` (TIMEOUT); the node was sent `notifications/cancelled`.
4. Progress goes to the caller through a `ProgressPump`: a slow caller never stalls the node's link.
5. A node name or tool name that is not a string (a surface that parses JSON hands over whatever came)
   is `InvalidParams` before any lookup: a list or an object would otherwise fail the registry's
   dict lookup (-32603 and a traceback instead of -32602).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator

from server.deadlines import Deadlines
from server.metrics import Metrics
from server.node_lookup import NodeLookup
from server.progress import ProgressPump
from server.recent_calls import RecentCalls
from server.registry import NodeEntry, NodeLink, NodeRegistry
from spec.errors import (
    INTERNAL_ERROR,
    CallTimeout,
    InvalidArguments,
    InvalidParams,
    NodeNotConnected,
    NodeNotFound,
    RpcError,
    UnknownTool,
)
from spec.manifest import QuickCheck, argument_problem, quick_check
from spec.params import AuditReadParams, ToolsCallParams, checked_name
from spec.protocol import Method
from spec.session import ProgressCallback

__all__ = ["CallRouter", "Caller"]

_QUICK_CHECKS_KEPT = 4096


@dataclass(frozen=True)
class Caller:
    """Who is calling: a user (or a planner run acting for one)."""

    sub: str
    ws: str
    role: str = "member"
    iat: int = field(default=0, compare=False)
    """When the token behind this caller was issued (a user revocation covers tokens up to a time)."""

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def can_see(self, workspace: str) -> bool:
        return self.is_admin or workspace == self.ws

    def wire(self) -> dict[str, str]:
        return {"sub": self.sub, "ws": self.ws}


class CallRouter:
    def __init__(self, registry: NodeRegistry, metrics: Metrics, default_timeout: float = 120.0) -> None:
        self.registry = registry
        self.deadlines = Deadlines()  # every call's timeout, on one shared timer (server.deadlines)
        self.metrics = metrics
        self.recent = RecentCalls()  # the dashboard's recent-calls view (bounded, server.recent_calls)
        self.default_timeout = default_timeout
        # Per compiled validator (shared by every node declaring the same tools, see ToolCatalog): the
        # fast check for arguments that fit. Keyed by identity; the validator is kept so the id stays
        # its own. Bounded: emptied when full (it refills from the live nodes' validators).
        self._quick: dict[int, tuple[Draft202012Validator, QuickCheck | None]] = {}
        self.on_audit_head: Callable[[NodeEntry, Any], Awaitable[None]] | None = None
        """Told every head an ``audit/read`` answer carries (the app persists it: server.audit_heads)."""
        self.lookup: NodeLookup | None = None
        """Asks the store about a name the registry does not know (server.node_lookup), so a node
        enrolled a moment ago is "not connected", never "not found"."""

    def _quick_check(self, validator: Draft202012Validator) -> QuickCheck | None:
        known = self._quick.get(id(validator))
        if known is None or known[0] is not validator:
            if len(self._quick) >= _QUICK_CHECKS_KEPT:
                self._quick.clear()
            known = self._quick[id(validator)] = (validator, quick_check(validator.schema))
        return known[1]

    def visible_nodes(self, caller: Caller) -> list[NodeEntry]:
        return [e for e in self.registry.nodes() if caller.can_see(e.workspace)]

    def node(self, caller: Caller, name: str) -> NodeEntry:
        checked_name(name, "node")
        entry = self.registry.get(name)
        if entry is None or not caller.can_see(entry.workspace):
            raise NodeNotFound(f"no node named {name!r}")
        return entry

    async def find(self, caller: Caller, name: str) -> NodeEntry:
        """`node`, after asking the store about a name the registry does not know (rule 1)."""
        checked_name(name, "node")
        if self.lookup is not None and self.registry.get(name) is None:
            await self.lookup.entry(name)
        return self.node(caller, name)

    async def find_link(self, caller: Caller, name: str) -> tuple[NodeEntry, NodeLink]:
        """`link`, after asking the store about a name the registry does not know."""
        checked_name(name, "node")
        if self.lookup is not None and self.registry.get(name) is None:  # as `find`, one await less
            await self.lookup.entry(name)
        return self.link(caller, name)

    def link(self, caller: Caller, name: str) -> tuple[NodeEntry, NodeLink]:
        entry = self.node(caller, name)
        link = self.registry.link(name)
        if link is None:
            raise NodeNotConnected(f"node {name!r} is not connected")
        return entry, link

    async def call_tool(
        self,
        caller: Caller,
        node: str,
        tool: str,
        arguments: dict[str, Any] | None,
        *,
        timeout_s: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> dict[str, Any]:
        # The call's own parameters first, for every surface (REST answers its own 400 before this).
        if timeout_s is not None and (type(timeout_s) not in (int, float) or not timeout_s > 0):
            raise InvalidParams("timeout_s must be a positive number")
        if arguments is not None and not isinstance(arguments, dict):
            raise InvalidParams("arguments must be an object")
        checked_name(tool, "the tool name")
        entry, link = await self.find_link(caller, node)
        arguments = {} if arguments is None else arguments
        validator = entry.validators.get(tool)  # one per declared tool (see NodeEntry.set_tools)
        if validator is None:
            raise UnknownTool(f"node {node!r} has no tool {tool!r}")
        problem = argument_problem(validator, arguments, self._quick_check(validator))
        if problem is not None:
            raise InvalidArguments(f"invalid arguments for {tool}: {problem}", {"problem": problem})
        params = ToolsCallParams(tool, arguments, caller.wire()).to_json()
        limit = self.default_timeout if timeout_s is None else timeout_s
        started = time.perf_counter()
        started_at = time.time()
        outcome = "error"
        result: dict[str, Any] | None = None
        pump = ProgressPump(on_progress) if on_progress is not None else None
        self.metrics.call_started()
        try:
            async with self.deadlines.after(limit):
                answer: dict[str, Any] = await link.request(
                    Method.TOOLS_CALL, params, on_progress=pump.push if pump is not None else None
                )
            result = answer
            outcome = "tool_error" if answer.get("isError") else "ok"
            if pump is not None:
                await pump.drain()  # the caller sees its progress before the result (bounded)
            return answer
        except TimeoutError:
            outcome = "timeout"
            raise CallTimeout(f"{tool} on {node} did not finish within {limit:g} s") from None
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except RpcError as exc:
            outcome = f"rpc_{exc.code}"
            raise
        finally:
            if pump is not None:
                pump.close()
            self.metrics.call_finished(tool, outcome, time.perf_counter() - started)
            self.recent.record(
                started_at=started_at,
                duration_s=time.perf_counter() - started,
                node=node,
                workspace=entry.workspace,
                tool=tool,
                caller=caller,
                outcome=outcome,
                arguments=arguments,
                result=result,
            )

    async def read_audit(
        self, caller: Caller, node: str, after_seq: int, limit: int, timeout_s: float = 30.0
    ) -> dict[str, Any]:
        """`audit/read` on a node, with the same boundary and a timeout. The head it reports is checked
        against the last one seen (a log whose head went backwards is flagged) and the flag is returned
        as ``warning``."""
        entry, link = await self.find_link(caller, node)
        try:
            async with asyncio.timeout(timeout_s):
                result: dict[str, Any] = await link.request(
                    Method.AUDIT_READ, AuditReadParams(after_seq, limit).to_json()
                )
        except TimeoutError:
            raise CallTimeout(f"audit/read on {node} did not answer within {timeout_s:g} s") from None
        if not isinstance(result, dict) or not isinstance(result.get("records"), list):
            raise RpcError(
                INTERNAL_ERROR, f"node {node!r} answered audit/read with something else than records"
            )
        entry.observe_audit_head(result.get("head"))
        if self.on_audit_head is not None:
            await self.on_audit_head(entry, result.get("head"))
        if entry.audit_warning:
            result = {**result, "warning": entry.audit_warning}
        return result
