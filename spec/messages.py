"""The message model: what a JSON-RPC peer core (`spec.peer`) hands to its I/O adapter.

Every incoming frame becomes zero or more of these events; the adapter acts on each. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from spec.errors import RpcError

__all__ = [
    "Event",
    "IncomingCancel",
    "IncomingNotification",
    "IncomingProgress",
    "IncomingRequest",
    "IncomingResponse",
    "JsonId",
    "ProtocolViolation",
    "Reply",
]

JsonId = str | int


@dataclass(frozen=True, slots=True)
class IncomingRequest:
    """A request the other side wants answered; dispatch it and `respond` with the same id.

    `params` and `message` come without `_meta` (the core strips it); `meta` is what it held (`{}` when
    absent or not an object).
    """

    id: JsonId
    method: str
    params: dict[str, Any] | list[Any] | None
    message: dict[str, Any] = field(repr=False)
    meta: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, slots=True)
class IncomingNotification:
    """A notification; never answered."""

    method: str
    params: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class IncomingProgress:
    """`notifications/progress` for one of our requests still awaiting its answer (found by its token)."""

    request_id: JsonId
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class IncomingCancel:
    """`notifications/cancelled` for a request of the other side's that is still in flight here: stop its
    handler and send no answer (MCP: the receiver of a cancel does not answer the cancelled request)."""

    request_id: JsonId
    reason: str


@dataclass(frozen=True, slots=True)
class IncomingResponse:
    """The answer to one of our requests: exactly one of `result` / `error` is meaningful."""

    id: JsonId
    method: str
    result: Any = None
    error: RpcError | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """Text the core wants sent back at once (the error answer to a malformed frame)."""

    text: str


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """Something the other side got wrong that has no answer (e.g. a response to an unknown id)."""

    description: str


Event = (
    IncomingRequest
    | IncomingNotification
    | IncomingProgress
    | IncomingCancel
    | IncomingResponse
    | Reply
    | ProtocolViolation
)
