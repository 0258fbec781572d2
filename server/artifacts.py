"""`GET /api/v1/artifacts/{id}`: large tool results (screenshots) kept by the server for a while.

Layering: surfaces that cannot carry a large result inline (MCP, whose clients cap one message near
1 MiB) put the bytes in the `ArtifactStore` and hand out a link; this endpoint serves them back with the
same authorization as the node that produced them (a caller of another workspace gets 404, as for the
node itself).

Rules:
1. An artifact lives `ttl_s` seconds, then it is gone (404).
2. The store holds at most `max_bytes`; adding beyond that evicts the oldest artifacts first.
3. Ids are random (128 bits): knowing one is not authorization, the bearer token still is.
4. The node chose the bytes and their type, so neither is trusted: every answer carries
   ``X-Content-Type-Options: nosniff`` and a sandboxing CSP, and only an allow-listed image type
   (`INLINE_TYPES`) is served inline under its own type; anything else goes out as
   ``application/octet-stream`` with ``Content-Disposition: attachment`` (a node's ``text/html`` never
   renders in the server's origin).
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.api import ApiError, authenticate, state_of

if TYPE_CHECKING:
    from server.app import ServerState
    from server.router import Caller

__all__ = ["INLINE_TYPES", "Artifact", "ArtifactStore", "artifact_store", "response_headers", "routes"]

INLINE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
"""Content types an artifact may be served inline with; every other one is an attachment."""


@dataclass(frozen=True)
class Artifact:
    data: bytes
    mime_type: str
    node: str
    workspace: str
    expires_at: float


class ArtifactStore:
    """In-memory, size-bounded, expiring blob store (one per server process)."""

    def __init__(self, ttl_s: float = 900.0, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, Artifact] = OrderedDict()
        self._bytes = 0

    def put(self, data: bytes, mime_type: str, *, node: str, workspace: str) -> str:
        self._expire()
        while self._items and self._bytes + len(data) > self.max_bytes:
            self._drop(next(iter(self._items)))
        artifact_id = secrets.token_urlsafe(16)
        self._items[artifact_id] = Artifact(data, mime_type, node, workspace, time.monotonic() + self.ttl_s)
        self._bytes += len(data)
        return artifact_id

    def get(self, artifact_id: str, caller: Caller) -> Artifact | None:
        self._expire()
        artifact = self._items.get(artifact_id)
        if artifact is None or not caller.can_see(artifact.workspace):
            return None
        return artifact

    def _drop(self, artifact_id: str) -> None:
        artifact = self._items.pop(artifact_id, None)
        if artifact is not None:
            self._bytes -= len(artifact.data)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._items:
            first_id, first = next(iter(self._items.items()))
            if first.expires_at > now:
                return
            self._drop(first_id)

    def __len__(self) -> int:
        return len(self._items)


def artifact_store(state: ServerState) -> ArtifactStore:
    """The store kept in `ServerState.extras` (created on first use)."""
    store = state.extras.get("artifacts")
    if not isinstance(store, ArtifactStore):
        store = ArtifactStore()
        state.extras["artifacts"] = store
    return store


async def get_artifact(request: Request) -> Response:
    try:
        caller = authenticate(request)
        artifact = artifact_store(state_of(request)).get(request.path_params["artifact_id"], caller)
        if artifact is None:
            raise ApiError(404, "artifact_not_found", "no such artifact (it may have expired)")
    except ApiError as exc:
        return exc.response()
    media_type, headers = response_headers(artifact.mime_type, request.path_params["artifact_id"])
    headers["X-Cortex-Node"] = artifact.node
    return Response(artifact.data, media_type=media_type, headers=headers)


def response_headers(mime_type: str, artifact_id: str) -> tuple[str, dict[str, str]]:
    """The content type and headers to serve an artifact the node labelled *mime_type* with."""
    declared = mime_type.split(";", 1)[0].strip().lower() if isinstance(mime_type, str) else ""
    headers = {
        "Cache-Control": "private, max-age=60",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox",
    }
    if declared in INLINE_TYPES:
        return declared, headers
    # The id is [A-Za-z0-9_-] (token_urlsafe), safe inside the quoted filename.
    headers["Content-Disposition"] = f'attachment; filename="artifact-{artifact_id[:32]}"'
    return "application/octet-stream", headers


def routes() -> list[Route]:
    return [Route("/api/v1/artifacts/{artifact_id}", get_artifact)]
