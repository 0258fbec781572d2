"""Node tools as the outside world sees them: one list and one naming for MCP clients and the planner's LLM.

Where it sits: below the two surfaces that offer node tools to a model — `server.mcp` (outside MCP
clients) and `server.planner` (the built-in planner) — and above `server.router`, whose `CallRouter`
decides what a caller may see. Neither surface builds names or error texts of its own.

Rules:
1. Tool ``t`` of node ``n`` is offered as ``n__t`` (`TOOL_SEPARATOR`; no dots: LLM function names
   forbid them). `split_tool_name` parses at the first separator (node names never contain ``__``:
   they match ``[a-z0-9][a-z0-9-]{0,62}``) and refuses a name with an empty half.
2. Only connected nodes the caller may see are listed (`CallRouter.visible_nodes`: its workspace;
   admins: all); each description names the node, each title too.
3. A call that could not run or finish is told to the model as one readable sentence
   (`tool_error_text`), chosen by the error's code and ``data.reason``, so it can correct itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from server.router import Caller, CallRouter
from spec import errors
from spec.errors import RpcError

__all__ = [
    "TOOL_SEPARATOR",
    "ExposedTool",
    "exposed_tools",
    "split_tool_name",
    "tool_error_text",
    "tool_name",
]

TOOL_SEPARATOR = "__"


@dataclass(frozen=True)
class ExposedTool:
    """One node tool as the outside world (MCP clients, the planner's LLM) sees it."""

    name: str
    node: str
    tool: str
    description: str
    definition: dict[str, Any]

    @property
    def input_schema(self) -> dict[str, Any]:
        schema = self.definition.get("inputSchema") or {"type": "object", "properties": {}}
        return dict(schema)

    def mcp_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "inputSchema": self.input_schema,
        }
        title = self.definition.get("title")
        if title:
            data["title"] = f"{title} ({self.node})"
        for key in ("outputSchema", "annotations"):
            if self.definition.get(key):
                data[key] = self.definition[key]
        return data


def tool_name(node: str, tool: str) -> str:
    """The exposed name of *tool* on *node* (rule 1)."""
    return f"{node}{TOOL_SEPARATOR}{tool}"


def split_tool_name(name: str) -> tuple[str, str] | None:
    """``(node, tool)`` of an exposed name, None when it is not one (rule 1)."""
    node, sep, tool = name.partition(TOOL_SEPARATOR)
    if not sep or not node or not tool:
        return None
    return node, tool


def exposed_tools(router: CallRouter, caller: Caller, node: str | None = None) -> list[ExposedTool]:
    """The connected nodes' tools *caller* may use (only *node*'s when given), as ``<node>__<tool>``."""
    tools: list[ExposedTool] = []
    for entry in router.visible_nodes(caller):
        if node is not None and entry.name != node:
            continue
        if router.registry.link(entry.name) is None:
            continue
        for definition in entry.tools:
            description = (
                definition.get("description") or definition.get("title") or definition["name"]
            ).strip()
            tools.append(
                ExposedTool(
                    name=tool_name(entry.name, definition["name"]),
                    node=entry.name,
                    tool=definition["name"],
                    description=f"[on node {entry.name!r}] {description}",
                    definition=definition,
                )
            )
    return tools


def tool_error_text(exc: RpcError, node: str, tool: str) -> str:
    """A clear, model-readable sentence for a call that could not run or finish (rule 3), by the
    error's class (`spec.errors.lookup`)."""
    known = errors.decode(exc)
    if isinstance(known, errors.InvalidArguments):
        return f"Invalid arguments for {tool_name(node, tool)}: {known.problem}"
    template = errors.lookup(_TOOL_ERROR_TEXT, known)
    return template.format(node=node, tool=tool, message=exc.message)


_TOOL_ERROR_TEXT: dict[type[errors.CortexRpcError], str] = {
    errors.CortexRpcError: "{tool} on node {node!r} failed: {message}",
    errors.UnknownTool: "Node {node!r} has no tool {tool!r}.",
    errors.NodeNotConnected: (
        "Node {node!r} is not connected right now, so {tool} cannot run. Try again when it is back."
    ),
    errors.NodeNotFound: "There is no node named {node!r}.",
    errors.NodeDisconnected: "Node {node!r} disconnected while {tool} was running; the result is unknown.",
    errors.CallTimeout: "{tool} on node {node!r} timed out: {message}",
    errors.Overloaded: "Node {node!r} is overloaded; try again shortly.",
    errors.Cancelled: "{tool} on node {node!r} was cancelled.",
}
"""By class: the model-readable sentence for a call that could not run or finish."""
