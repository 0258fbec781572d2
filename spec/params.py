"""Typed params and results of the tunnel and client-RPC methods (`spec.protocol.Method`).

Layering: pure data in `spec`, no I/O; the side that builds a message calls `to_json()`, the side
that reads one calls `from_json()`. spec/schemas/methods.schema.json is the wire's long form; every
`to_json()` output validates against it (tests/test_params.py).

Rules:
1. `to_json()` writes exactly the wire names (camelCase where MCP has them, `after_seq` where ours
   do) and leaves out optional fields that are unset.
2. `from_json()` of something we *asked for* (a result from the other side) is lenient where the
   other side may be old or hostile: a field of the wrong type reads as absent, never raises, and the
   caller applies its own caps. `from_json()` of *params* we serve raises `InvalidParams` (-32602).
3. The node side of `tools/call` reads `_meta` from the call context, not from these params: the
   session strips `_meta` before dispatch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from spec.errors import InvalidParams
from spec.protocol import AUDIT_DEFAULT_LIMIT, PROTOCOL_VERSION, MetaKey, clamp_audit_limit

__all__ = [
    "AuditReadParams",
    "AuthRefreshParams",
    "AuthRefreshResult",
    "CancelledParams",
    "ClientAuditReadParams",
    "ClientToolsCallParams",
    "ClientToolsListParams",
    "InitializeParams",
    "InitializeResult",
    "ProgressParams",
    "ToolsCallParams",
    "checked_name",
    "json_type",
]


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _dict(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def _frame_limit(value: Any) -> int | None:
    """A declared frame limit: a positive int, else None (the receiver keeps its own)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _json_id(value: Any) -> str | int | None:
    return value if isinstance(value, str | int) and not isinstance(value, bool) else None


# -- tunnel: server → node ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class InitializeParams:
    """`initialize` params: who the server is and the frame limit the node must keep to."""

    client_name: str
    client_version: str
    max_frame_bytes: int | None = None
    protocol_version: str = PROTOCOL_VERSION
    capabilities: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "protocolVersion": self.protocol_version,
            "capabilities": self.capabilities,
            "clientInfo": {"name": self.client_name, "version": self.client_version},
        }
        if self.max_frame_bytes is not None:
            params["limits"] = {"maxFrameBytes": self.max_frame_bytes}
        return params

    @classmethod
    def from_json(cls, params: Mapping[str, Any]) -> InitializeParams:
        """Lenient (rule 2 for the node: an older server may leave things out)."""
        info = _dict(params.get("clientInfo")) or {}
        limits = _dict(params.get("limits")) or {}
        frame = limits.get("maxFrameBytes")
        return cls(
            client_name=_str(info.get("name")) or "",
            client_version=_str(info.get("version")) or "",
            max_frame_bytes=frame if isinstance(frame, int) and not isinstance(frame, bool) else None,
            protocol_version=_str(params.get("protocolVersion")) or "",
            capabilities=_dict(params.get("capabilities")) or {},
        )


@dataclass(frozen=True, slots=True)
class InitializeResult:
    """`initialize` result: the node's self-description and its audit chain head."""

    server_name: str
    server_version: str
    node: dict[str, Any] | None
    audit_head: dict[str, Any] | None
    protocol_version: str | None = PROTOCOL_VERSION
    capabilities: dict[str, Any] = field(default_factory=lambda: {"tools": {"listChanged": True}})
    max_frame_bytes: int | None = None
    """The largest frame the node takes (``limits.maxFrameBytes``); the server sends none bigger."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "protocolVersion": self.protocol_version,
            "capabilities": self.capabilities,
            "serverInfo": {"name": self.server_name, "version": self.server_version},
            "node": self.node,
            "audit_head": self.audit_head,
        }
        if self.max_frame_bytes is not None:
            out["limits"] = {"maxFrameBytes": self.max_frame_bytes}
        return out

    @classmethod
    def from_json(cls, result: Any) -> InitializeResult:
        """Lenient (rule 2): a node's answer; `node` and `audit_head` are capped/checked by the server."""
        result = result if isinstance(result, dict) else {}
        info = _dict(result.get("serverInfo")) or {}
        return cls(
            server_name=_str(info.get("name")) or "",
            server_version=_str(info.get("version")) or "",
            node=_dict(result.get("node")),
            audit_head=result.get("audit_head"),  # checked where it is used (audit heads)
            protocol_version=_str(result.get("protocolVersion")),
            capabilities=_dict(result.get("capabilities")) or {},
            max_frame_bytes=_frame_limit((_dict(result.get("limits")) or {}).get("maxFrameBytes")),
        )


@dataclass(frozen=True, slots=True)
class ToolsCallParams:
    """Tunnel `tools/call`: the tool, its arguments and the caller the node audits."""

    name: str
    arguments: dict[str, Any]
    caller: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": self.arguments, "_meta": {MetaKey.CALLER: self.caller}}


@dataclass(frozen=True, slots=True)
class AuditReadParams:
    """Tunnel `audit/read`: records after `after_seq`, at most `limit`."""

    after_seq: int = 0
    limit: int = AUDIT_DEFAULT_LIMIT

    def to_json(self) -> dict[str, Any]:
        return {"after_seq": self.after_seq, "limit": self.limit}

    @classmethod
    def from_args(cls, after_seq: Any, limit: Any) -> AuditReadParams:
        """The two as a caller sent them (JSON numbers, or anything): integers, `after_seq` >= 0, the
        limit brought into 1 … AUDIT_MAX_LIMIT; `InvalidParams` for anything else (a string, null, a
        boolean, 2.5), never an internal error."""
        return cls(_whole(after_seq, "after_seq", minimum=0), clamp_audit_limit(_whole(limit, "limit")))


# -- tunnel: node → server ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AuthRefreshParams:
    """`auth/refresh`: the node's new access token (a secret: never in a repr)."""

    access_token: str = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"access_token": self.access_token}


@dataclass(frozen=True, slots=True)
class AuthRefreshResult:
    """`auth/refresh` result: when the new token expires (Unix seconds)."""

    expires_at: int

    def to_json(self) -> dict[str, Any]:
        return {"expires_at": self.expires_at}

    @classmethod
    def from_json(cls, result: Any) -> AuthRefreshResult:
        value = result.get("expires_at") if isinstance(result, dict) else None
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidParams("auth/refresh answered without an integer expires_at")
        return cls(value)


# -- both ways --------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ProgressParams:
    """`notifications/progress`."""

    progress_token: str | int
    progress: float
    total: float | None = None
    message: str | None = None

    def to_json(self) -> dict[str, Any]:
        params: dict[str, Any] = {"progressToken": self.progress_token, "progress": self.progress}
        if self.total is not None:
            params["total"] = self.total
        if self.message is not None:
            params["message"] = self.message
        return params

    @classmethod
    def from_json(cls, params: Mapping[str, Any]) -> ProgressParams:
        """Lenient (rule 2): a bad progress value reads as 0, a bad total or message as absent."""
        token = _json_id(params.get("progressToken"))
        return cls(
            progress_token=token if token is not None else "",
            progress=_number(params.get("progress")) or 0,
            total=_number(params.get("total")),
            message=_str(params.get("message")),
        )


@dataclass(frozen=True, slots=True)
class CancelledParams:
    """`notifications/cancelled`."""

    request_id: str | int
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        params: dict[str, Any] = {"requestId": self.request_id}
        if self.reason is not None:
            params["reason"] = self.reason
        return params

    @classmethod
    def from_json(cls, params: Mapping[str, Any]) -> CancelledParams:
        request_id = _json_id(params.get("requestId"))
        if request_id is None:
            raise InvalidParams("notifications/cancelled needs requestId (a string or an integer)")
        return cls(request_id, _str(params.get("reason")))


# -- client RPC (SDK → server) ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ClientToolsListParams:
    """Client `tools/list {node}`."""

    node: str

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node}


@dataclass(frozen=True, slots=True)
class ClientToolsCallParams:
    """Client `tools/call {node, name, arguments, timeout_s?}` (progress: `_meta` is the session's)."""

    node: str
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    timeout_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        params: dict[str, Any] = {"node": self.node, "name": self.name, "arguments": self.arguments}
        if self.timeout_s is not None:
            params["timeout_s"] = self.timeout_s
        return params


@dataclass(frozen=True, slots=True)
class ClientAuditReadParams:
    """Client `audit/read {node, after_seq, limit}`."""

    node: str
    after_seq: int = 0
    limit: int = AUDIT_DEFAULT_LIMIT

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "after_seq": self.after_seq, "limit": self.limit}


def _whole(value: Any, name: str, minimum: int | None = None) -> int:
    """`value` as an int when it is a whole JSON number (not a boolean), else `InvalidParams`."""
    if type(value) is float and value.is_integer():
        value = int(value)
    if type(value) is not int or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise InvalidParams(f"{name} must be an integer{bound}, not {json_type(value)}")
    return value


def checked_name(value: Any, what: str) -> str:
    """`value` when it is a string (a node or tool name), else `InvalidParams` naming what came: a
    surface that parses JSON hands over whatever the caller sent, and a list or an object would fail a
    name lookup deeper down as an internal error."""
    if type(value) is not str:
        raise InvalidParams(f"{what} must be a string, not {json_type(value)}")
    return value


def json_type(value: Any, *, show_numbers: bool = True) -> str:
    """How a caller would name what it sent: ``null``, ``a string``, ``-3`` (or ``a number`` when
    `show_numbers` is false) …"""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return repr(value)[:32] if show_numbers else "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"
