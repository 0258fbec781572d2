"""MCP resources on `/mcp`: the server's artifacts and each node's audit log, read with the MCP session.

Layering: a facade beside `server/mcp.py` (which registers these handlers on the `mcp` low-level server).
It reads through the same objects the REST API uses — `ArtifactStore.get` (authorization by workspace)
and `CallRouter.read_audit` (the node over the tunnel) — so a resource is visible exactly when the REST
resource is, and the caller's workspace is the boundary.

Rules:
1. URIs: an artifact (a large tool result, e.g. a screenshot) is ``<base>/api/v1/artifacts/{id}`` —
   the URL the ``resource_link`` of a tool result carries (CONTRACT §7), also readable by REST — or,
   the same resource, ``cortex://artifacts/{id}``; `resources/read` returns the bytes as a blob.
   ``cortex://nodes/{node}/audit`` is a node's audit log (its records after SEQ, at most N, and the
   chain head), with optional query ``?after=SEQ&limit=N`` as on REST (default 0 and 100, limit ≤ 1000).
2. `resources/list` lists the audit log of every connected node the caller may see (artifacts are
   short-lived and not listed: their links come with the results that made them);
   `resources/templates/list` gives both URI templates.
3. An unknown URI, an expired artifact, or a node of another workspace is the same error: -32602 with
   ``data.uri`` (SEP-2164) — never revealing that something exists elsewhere.
4. 2026-07-28 caching hints (SEP-2549): every answer that depends on the caller is ``private``; the
   templates and the empty prompt list are the same for everyone (``public``). An artifact never
   changes, so it may be cached for its remaining lifetime; audit logs and lists change at any time
   (ttl 0: the list_changed notifications tell clients when to refetch).
"""

from __future__ import annotations

import base64
import json
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import mcp_types as types
from mcp.shared.exceptions import MCPError

from server.router import Caller
from spec import errors
from spec.errors import RpcError

if TYPE_CHECKING:
    from server.state import ServerState

__all__ = [
    "ARTIFACT_TEMPLATE",
    "AUDIT_TEMPLATE",
    "STATIC_LIST_TTL_MS",
    "AuditRef",
    "McpResources",
    "audit_uri",
    "parse_resource_uri",
]

ARTIFACT_TEMPLATE = "cortex://artifacts/{id}"
AUDIT_TEMPLATE = "cortex://nodes/{node}/audit{?after,limit}"
AUDIT_DEFAULT_LIMIT = 100
AUDIT_MAX_LIMIT = 1000
STATIC_LIST_TTL_MS = 3_600_000

_ARTIFACT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NODE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


def audit_uri(node: str) -> str:
    return f"cortex://nodes/{node}/audit"


@dataclass(frozen=True)
class AuditRef:
    node: str
    after: int
    limit: int


def parse_resource_uri(uri: str) -> str | AuditRef | None:
    """An artifact id, an `AuditRef`, or None for a URI that names nothing of ours."""
    if len(uri) > 2048:
        return None
    parts = urlsplit(uri)
    segments = parts.path.strip("/").split("/") if parts.path.strip("/") else []
    if parts.scheme == "cortex" and parts.netloc == "artifacts" and len(segments) == 1 and not parts.query:
        return segments[0] if _ARTIFACT_ID.fullmatch(segments[0]) else None
    if (
        parts.scheme in ("http", "https")
        and segments[-4:-1] == ["api", "v1", "artifacts"]
        and not parts.query
    ):
        return segments[-1] if _ARTIFACT_ID.fullmatch(segments[-1]) else None  # any base path (a proxy's)
    if parts.scheme == "cortex" and parts.netloc == "nodes" and len(segments) == 2 and segments[1] == "audit":
        if not _NODE_NAME.fullmatch(segments[0]):
            return None
        query = parse_qs(parts.query, keep_blank_values=True, max_num_fields=4)
        if set(query) - {"after", "limit"} or any(len(v) != 1 for v in query.values()):
            return None
        try:
            after = int(query.get("after", ["0"])[0])
            limit = int(query.get("limit", [str(AUDIT_DEFAULT_LIMIT)])[0])
        except ValueError:
            return None
        if after < 0 or not 1 <= limit <= AUDIT_MAX_LIMIT:
            return None
        return AuditRef(segments[0], after, limit)
    return None


def _not_found(uri: str) -> MCPError:
    return MCPError(errors.INVALID_PARAMS, "resource not found", {"uri": uri})


class McpResources:
    """The resource handlers of `/mcp`, bound to one server's state."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    def list(self, caller: Caller) -> types.ListResourcesResult:
        resources = []
        for entry in self.state.router.visible_nodes(caller):
            if self.state.registry.link(entry.name) is None:
                continue
            resources.append(
                types.Resource(
                    uri=audit_uri(entry.name),
                    name=f"{entry.name}-audit",
                    title=f"Audit log of node {entry.name}",
                    description=(
                        f"The first {AUDIT_DEFAULT_LIMIT} records of node {entry.name!r}'s hash-chained "
                        "audit log and its head, as JSON; add ?after=SEQ&limit=N for the next ones."
                    ),
                    mime_type="application/json",
                )
            )
        return types.ListResourcesResult(resources=resources, ttl_ms=0, cache_scope="private")

    def templates(self) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(
            resource_templates=[
                types.ResourceTemplate(
                    uri_template=ARTIFACT_TEMPLATE,
                    name="artifact",
                    title="Large tool result",
                    description=(
                        "A tool result too large to send inline (e.g. a screenshot), kept for a while. "
                        "Tool results link to it with a resource_link."
                    ),
                ),
                types.ResourceTemplate(
                    uri_template=AUDIT_TEMPLATE,
                    name="node-audit",
                    title="Node audit log",
                    description="Records of a node's hash-chained audit log after SEQ (at most N), as JSON.",
                    mime_type="application/json",
                ),
            ],
            ttl_ms=STATIC_LIST_TTL_MS,
            cache_scope="public",
        )

    async def read(self, caller: Caller, uri: str) -> types.ReadResourceResult:
        ref = parse_resource_uri(uri)
        if ref is None:
            raise _not_found(uri)
        if isinstance(ref, str):
            artifact = self.state.artifacts.get(ref, caller)
            if artifact is None:
                raise _not_found(uri)
            remaining_ms = max(0, int((artifact.expires_at - time.monotonic()) * 1000))
            return types.ReadResourceResult(
                contents=[
                    types.BlobResourceContents(
                        uri=uri,
                        mime_type=artifact.mime_type,
                        blob=base64.b64encode(artifact.data).decode("ascii"),
                        _meta={"cortex/node": artifact.node},
                    )
                ],
                ttl_ms=remaining_ms,
                cache_scope="private",
            )
        try:
            records = await self.state.router.read_audit(caller, ref.node, ref.after, ref.limit)
        except RpcError as exc:
            if exc.code == errors.NODE_NOT_FOUND and not (
                isinstance(exc.data, dict) and exc.data.get("reason") == "not_connected"
            ):
                raise _not_found(uri) from None
            raise MCPError(exc.code, exc.message, {"uri": uri}) from None
        return types.ReadResourceResult(
            contents=[
                types.TextResourceContents(uri=uri, mime_type="application/json", text=_dumps(records))
            ],
            ttl_ms=0,
            cache_scope="private",
        )


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
