"""The message model: what a JSON-RPC peer core (`spec.peer`) hands to its I/O adapter.

Every incoming frame becomes zero or more of these events; the adapter acts on each. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from spec.errors import RpcError

__all__ = [
    "Event",
    "IncomingNotification",
    "IncomingRequest",
    "IncomingResponse",
    "JsonId",
    "ProtocolViolation",
    "Reply",
]

JsonId = str | int


@dataclass(frozen=True, slots=True)
class IncomingRequest:
    """A request the other side wants answered; dispatch it and `respond` with the same id."""

    id: JsonId
    method: str
    params: dict[str, Any] | list[Any] | None
    message: dict[str, Any] = field(repr=False)


@dataclass(frozen=True, slots=True)
class IncomingNotification:
    """A notification; never answered."""

    method: str
    params: dict[str, Any] | None


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


Event = IncomingRequest | IncomingNotification | IncomingResponse | Reply | ProtocolViolation
