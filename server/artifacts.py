"""`GET /api/v1/artifacts/{id}`: serves the artifacts of `server.artifact_store` back to callers.

Layering: an HTTP surface over the store (`server.artifact_store`, re-exported here for the surfaces
that reach the store through this module). Same authorization as the node that produced an artifact:
a caller of another workspace gets 404, as for the node itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from server.api import ApiError, authenticate, state_of
from server.artifact_store import (
    Artifact,
    ArtifactBudgetExceeded,
    ArtifactInfo,
    ArtifactLimits,
    ArtifactStore,
    ArtifactUpload,
    DiskArtifactStore,
    artifact_store,
)

if TYPE_CHECKING:
    from server.router import Caller

__all__ = [
    "Artifact",
    "ArtifactBudgetExceeded",
    "ArtifactInfo",
    "ArtifactLimits",
    "ArtifactStore",
    "ArtifactUpload",
    "DiskArtifactStore",
    "artifact_store",
    "routes",
]


STREAM_ABOVE = 1024 * 1024
"""Artifacts larger than this are streamed from their file in pieces of this size: handing uvicorn one
50 MB body makes it copy the whole into its write buffer at once, stalling the event loop."""


def _headers(mime_type: str, node: str) -> dict[str, str]:
    """The headers of an artifact response, streamed or not."""
    return {"Cache-Control": "private, max-age=60", "X-Cortex-Node": node}


async def _streamed(store: DiskArtifactStore, artifact_id: str, caller: Caller) -> Response | None:
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

    return StreamingResponse(
        body(),
        media_type=info.mime_type,
        headers={**_headers(info.mime_type, info.node), "Content-Length": str(info.size)},
    )


async def get_artifact(request: Request) -> Response:
    try:
        caller = authenticate(request)
        store = artifact_store(state_of(request))
        streamed = await _streamed(store, request.path_params["artifact_id"], caller)
        if streamed is not None:
            return streamed
        artifact = await asyncio.to_thread(store.get, request.path_params["artifact_id"], caller)
        if artifact is None:
            raise ApiError(404, "artifact_not_found", "no such artifact (it may have expired)")
    except ApiError as exc:
        return exc.response()
    return Response(
        artifact.data,
        media_type=artifact.mime_type,
        headers=_headers(artifact.mime_type, artifact.node),
    )


def routes() -> list[Route]:
    return [Route("/api/v1/artifacts/{artifact_id}", get_artifact)]
