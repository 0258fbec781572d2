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

An error answer from the server is decoded once, by `spec.errors.decode`, into the protocol's class
(reason and code); `_BY_CLASS` names the SDK class of each, looked up along the MRO like the server's
HTTP table, so both sides read a reason the same way.
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


_BY_CLASS: dict[type[errors.CortexRpcError], type[CortexError]] = {
    errors.CortexRpcError: CortexError,
    errors.Unauthorized: AuthError,
    errors.NodeNotFound: NodeNotFound,  # not_connected included: for a script both mean "not there"
    errors.NodeDisconnected: NodeDisconnected,
    errors.Cancelled: CallCancelled,
    errors.CallTimeout: CallTimeout,
    errors.InvalidParams: InvalidArguments,  # unknown_tool and invalid_arguments included
    errors.Overloaded: Overloaded,
}


def from_rpc_error(exc: errors.RpcError) -> CortexError:
    """The SDK exception of an error answer (by its protocol class)."""
    return errors.lookup(_BY_CLASS, exc)(exc.message, exc.code, exc.data)
