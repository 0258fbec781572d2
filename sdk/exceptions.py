"""The SDK's exceptions: one root, one class per outcome a script would handle differently.

CortexError                 -- root; `.code` is the JSON-RPC error code when there is one
├── AuthError               -- missing, bad or expired token; not allowed (-32001, HTTP 401/403)
├── NodeNotFound            -- no such node in your workspace, or not connected (-32004)
├── NodeDisconnected        -- the node dropped during the call (-32010)
├── CallCancelled           -- the call was cancelled (-32800)
├── CallTimeout             -- the call did not finish in time; the node's work was cancelled (-32011)
├── InvalidArguments        -- unknown tool or arguments failing its inputSchema (-32602)
├── Overloaded              -- the node is at its concurrency limit (-32012)
├── PlannerUnavailable      -- the server has no LLM provider configured (HTTP 503 planner_unconfigured)
└── ConnectionLost          -- the link to the server dropped or could not be opened
"""

from __future__ import annotations

from typing import Any

from spec import errors

__all__ = [
    "AuthError",
    "CallCancelled",
    "CallTimeout",
    "ConnectionLost",
    "CortexError",
    "InvalidArguments",
    "NodeDisconnected",
    "NodeNotFound",
    "Overloaded",
    "PlannerUnavailable",
    "from_rpc_error",
]


class CortexError(Exception):
    def __init__(self, message: str, code: int | None = None, data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.data = data


class AuthError(CortexError):
    pass


class NodeNotFound(CortexError):
    pass


class NodeDisconnected(CortexError):
    pass


class CallCancelled(CortexError):
    pass


class CallTimeout(CortexError):
    pass


class InvalidArguments(CortexError):
    pass


class Overloaded(CortexError):
    pass


class ConnectionLost(CortexError):
    pass


class PlannerUnavailable(CortexError):
    pass


_BY_CODE: dict[int, type[CortexError]] = {
    errors.UNAUTHORIZED: AuthError,
    errors.NODE_NOT_FOUND: NodeNotFound,
    errors.NODE_DISCONNECTED: NodeDisconnected,
    errors.CANCELLED: CallCancelled,
    errors.TIMEOUT: CallTimeout,
    errors.INVALID_PARAMS: InvalidArguments,
    errors.OVERLOADED: Overloaded,
}


def from_rpc_error(exc: errors.RpcError) -> CortexError:
    return _BY_CODE.get(exc.code, CortexError)(exc.message, exc.code, exc.data)
