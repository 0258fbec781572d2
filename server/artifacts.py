"""`GET /api/v1/artifacts/{id}`: serves the artifacts of `server.artifact_store` back to callers.

Layering: an HTTP surface over the store (`server.artifact_store`, re-exported here for the surfaces
that reach the store through this module). Same authorization as the node that produced an artifact:
a caller of another workspace gets 404, as for the node itself.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response
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


async def get_artifact(request: Request) -> Response:
    try:
        caller = authenticate(request)
        store = artifact_store(state_of(request))
        artifact = await asyncio.to_thread(store.get, request.path_params["artifact_id"], caller)
        if artifact is None:
            raise ApiError(404, "artifact_not_found", "no such artifact (it may have expired)")
    except ApiError as exc:
        return exc.response()
    return Response(
        artifact.data,
        media_type=artifact.mime_type,
        headers={"Cache-Control": "private, max-age=60", "X-Cortex-Node": artifact.node},
    )


def routes() -> list[Route]:
    return [Route("/api/v1/artifacts/{artifact_id}", get_artifact)]
