"""`GET /api/v1/artifacts/{id}`: serves the artifacts of `server.artifact_store` back to callers.

Layering: an HTTP surface over the store (`server.artifact_store`, which the other surfaces import
directly). Same authorization as the node that produced an artifact:
a caller of another workspace gets 404, as for the node itself.

Rules:
1. Ids are random (128 bits): knowing one is not authorization, the bearer token still is.
2. The node chose the bytes and their type, so neither is trusted: every answer carries
   ``X-Content-Type-Options: nosniff`` and a sandboxing CSP, and only an allow-listed image type
   (`INLINE_TYPES`) is served inline under its own type; anything else goes out as
   ``application/octet-stream`` with ``Content-Disposition: attachment`` (a node's ``text/html`` never
   renders in the server's origin).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from server.artifact_store import ArtifactStore
from server.http_errors import ApiError
from server.identity import authenticate, state_of

if TYPE_CHECKING:
    from server.router import Caller

__all__ = ["INLINE_TYPES", "response_headers", "routes"]

INLINE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
"""Content types an artifact may be served inline with; every other one is an attachment."""


STREAM_ABOVE = 1024 * 1024
"""Artifacts larger than this are streamed from their file in pieces of this size: handing uvicorn one
50 MB body makes it copy the whole into its write buffer at once, stalling the event loop."""


async def _streamed(store: ArtifactStore, artifact_id: str, caller: Caller) -> Response | None:
    info = store.info(artifact_id)
    if info is None or info.size <= STREAM_ABOVE or not caller.can_see(info.workspace):
        return None
    f = await asyncio.to_thread(store.open_bytes, artifact_id)
    if f is None:
        return None

    async def body() -> AsyncIterator[bytes]:
        try:
            while piece := await asyncio.to_thread(f.read, STREAM_ABOVE):
                yield piece
        finally:
            f.close()

    media_type, headers = response_headers(info.mime_type, artifact_id)
    headers.update({"X-Cortex-Node": info.node, "Content-Length": str(info.size)})
    return StreamingResponse(body(), media_type=media_type, headers=headers)


async def get_artifact(request: Request) -> Response:
    try:
        caller = authenticate(request)
        store = state_of(request).artifacts
        streamed = await _streamed(store, request.path_params["artifact_id"], caller)
        if streamed is not None:
            return streamed
        artifact = await asyncio.to_thread(store.get, request.path_params["artifact_id"], caller)
        if artifact is None:
            raise ApiError(404, "artifact_not_found", "no such artifact (it may have expired)")
    except ApiError as exc:
        return exc.response()
    media_type, headers = response_headers(artifact.mime_type, request.path_params["artifact_id"])
    headers["X-Cortex-Node"] = artifact.node
    return Response(artifact.data, media_type=media_type, headers=headers)


def response_headers(mime_type: str, artifact_id: str) -> tuple[str, dict[str, str]]:
    """The content type and headers to serve an artifact the node labelled *mime_type* with (rule 2)."""
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
