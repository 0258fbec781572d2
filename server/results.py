"""Results too large for one frame: the server side of `artifacts/write` and the artifact reference.

Layering: `server.tunnel.NodeSession` owns one `ResultUploads` per link (node → server chunks land in
the `ArtifactStore`) and passes every `tools/call` result through `checked_result`; the surfaces then
treat a result carrying ``_meta["cortex/artifact"]`` (a *reference*) each their own way
(spec/protocol.md §11): REST streams the whole CallToolResult back, the client RPC passes the reference
to the SDK (which fetches and assembles it), MCP turns the large parts into `resource_link`s, the planner
reads the summary and the link.

Rules:
1. A chunk is at most the server's frame limit once decoded; chunks of one upload are written strictly in
   order (``offset`` equals the bytes received so far): anything else is INVALID_PARAMS and the upload is
   dropped (nothing partial is ever kept).
2. The first chunk declares ``size``; an upload that would go over the node's or the server's artifact
   budget is refused at once with OVERLOADED ``data.reason = "artifact_budget"``. The node turns that
   into an ``isError`` result for its caller; the link stays up.
3. The uploads of a link die with it.
4. A reference is honoured only if the artifact exists and was uploaded by the same node; otherwise the
   caller gets an ``isError`` result (a node never reads another node's artifact through a reference).
5. A node's answer that is not a CallToolResult (`spec.tool_result`) reaches every surface as an
   ``isError`` result naming the problem, and the server logs it once; so does a whole result (the
   artifact a reference names) whose bytes are not JSON, nest deeper than `spec.json_limits.MAX_DEPTH`,
   or are not a CallToolResult, when MCP expands it (REST streams those bytes unchanged; the SDK
   checks them itself). The tool did run: the node's own audit log says so.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import JSONResponse, Response, StreamingResponse

from server.artifact_store import ArtifactBudgetExceeded, ArtifactStore, ArtifactUpload, artifact_uri
from spec import json_limits
from spec.errors import INVALID_PARAMS, OverArtifactBudget, RpcError
from spec.protocol import MetaKey
from spec.tool_result import tool_result_problem

__all__ = [
    "ARTIFACT_META",
    "ResultUploads",
    "artifact_reference",
    "checked_result",
    "expand_for_mcp",
    "load_full_result",
    "rest_response",
]

logger = logging.getLogger(__name__)

ARTIFACT_META = MetaKey.ARTIFACT
MAX_UPLOAD_ID = 64
STREAM_PIECE = 1024 * 1024
PREVIEW_CHARS = 4096


def artifact_reference(result: Any) -> dict[str, Any] | None:
    """The ``_meta["cortex/artifact"]`` of a result, when it is a reference."""
    if not isinstance(result, dict):
        return None
    meta = result.get("_meta")
    ref = meta.get(ARTIFACT_META) if isinstance(meta, dict) else None
    return ref if isinstance(ref, dict) and isinstance(ref.get("id"), str) else None


class ResultUploads:
    """The `artifacts/write` handler of one node link (see the module's rules)."""

    def __init__(self, store: ArtifactStore, node: str, workspace: str, max_chunk: int) -> None:
        self.store = store
        self.node, self.workspace = node, workspace
        self.max_chunk = max_chunk
        self._open: dict[str, tuple[ArtifactUpload, asyncio.Lock]] = {}

    async def write(
        self,
        ctx: Any,
        id: str,
        offset: int,
        data: str | None = None,
        final: bool = False,
        size: int | None = None,
        sha256: str | None = None,
        mimeType: str = "application/json",
        text: str | None = None,
    ) -> dict[str, Any]:
        if not isinstance(id, str) or not 0 < len(id) <= MAX_UPLOAD_ID:
            raise RpcError(INVALID_PARAMS, f"id must be a string of 1 to {MAX_UPLOAD_ID} characters")
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise RpcError(INVALID_PARAMS, "offset must be a non-negative integer")
        raw = self._chunk(data, text)
        if len(raw) > self.max_chunk:
            raise RpcError(INVALID_PARAMS, f"a chunk is at most {self.max_chunk} bytes")
        entry = self._open.get(id)
        if entry is None:
            entry = self._begin(id, offset, size, mimeType)
        upload, lock = entry
        async with lock:  # FIFO: chunks are handled in the order they arrived
            try:
                if offset != upload.written:
                    raise RpcError(INVALID_PARAMS, f"offset {offset} is not the next byte ({upload.written})")
                await upload.write(raw)
                if not final:
                    return {"received": upload.written}
                if not isinstance(sha256, str):
                    raise RpcError(INVALID_PARAMS, "the final chunk must carry sha256")
                info = await upload.commit(sha256)
            except (RpcError, ValueError, OSError) as exc:
                self._drop(id)
                if isinstance(exc, RpcError):
                    raise
                raise RpcError(INVALID_PARAMS, f"upload {id} failed: {exc}") from None
            except BaseException:
                self._drop(id)
                raise
            self._open.pop(id, None)
        return {
            "artifact": {"id": info.id, "bytes": info.size, "sha256": info.sha256, "mimeType": info.mime_type}
        }

    def _chunk(self, data: str | None, text: str | None) -> bytes:
        """The chunk's bytes: `data` (base64) or `text` (the bytes' UTF-8 text), exactly one of them."""
        if (data is None) == (text is None):
            raise RpcError(INVALID_PARAMS, "a chunk carries exactly one of data (base64) and text (UTF-8)")
        if text is not None:
            # The encoded size is checked below, as for base64 (the frame limit bounds the work).
            if not isinstance(text, str) or len(text) > self.max_chunk:
                raise RpcError(INVALID_PARAMS, f"text must be a string of at most {self.max_chunk} bytes")
            try:
                return text.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate: JSON can escape one, UTF-8 cannot hold it
                raise RpcError(INVALID_PARAMS, "text is not valid Unicode") from None
        if not isinstance(data, str) or len(data) > (self.max_chunk * 4) // 3 + 4:
            raise RpcError(INVALID_PARAMS, f"data must be base64 of at most {self.max_chunk} bytes")
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise RpcError(INVALID_PARAMS, "data is not valid base64") from None

    def _begin(
        self, id: str, offset: int, size: int | None, mime_type: str
    ) -> tuple[ArtifactUpload, asyncio.Lock]:
        if offset != 0:
            raise RpcError(INVALID_PARAMS, f"no upload {id} is open (the first chunk has offset 0)")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise RpcError(INVALID_PARAMS, "the first chunk must declare size (bytes)")
        if not isinstance(mime_type, str) or len(mime_type) > 128:
            raise RpcError(INVALID_PARAMS, "mimeType must be a short string")
        try:
            upload = self.store.open_upload(
                node=self.node, workspace=self.workspace, size=size, mime_type=mime_type
            )
        except ArtifactBudgetExceeded as exc:
            raise OverArtifactBudget(
                str(exc), {"scope": exc.scope, "needed": exc.needed, "limit": exc.limit}
            ) from None
        entry = (upload, asyncio.Lock())
        self._open[id] = entry
        return entry

    def _drop(self, id: str) -> None:
        entry = self._open.pop(id, None)
        if entry is not None:
            entry[0].abort()

    def close(self) -> None:
        """The link is gone (rule 3)."""
        for id in list(self._open):
            self._drop(id)


def checked_result(store: ArtifactStore, node: str, result: Any) -> dict[str, Any]:
    """A `tools/call` result as the surfaces may see it (rules 4-5); a reference gets its link and size."""
    problem = tool_result_problem(result)
    if problem is not None:
        logger.warning("node %r answered tools/call with a malformed result: %s", node, problem)
        return _malformed(node, problem)
    ref = artifact_reference(result)
    if ref is None:
        return result  # type: ignore[no-any-return]
    info = store.info(ref["id"])
    if info is None or info.node != node:
        return {
            "content": [{"type": "text", "text": f"node {node} referred to an artifact it did not upload"}],
            "isError": True,
        }
    uri = f"/api/v1/artifacts/{info.id}"
    content = [c for c in result.get("content") or [] if isinstance(c, dict) and c.get("type") == "text"][:1]
    content.append(
        {
            "type": "text",
            "text": f"The whole result ({info.size} bytes) is artifact {info.id}, kept "
            f"{store.limits.ttl_s:g} s: GET {uri} with the same bearer token.",
        }
    )
    meta = {
        ARTIFACT_META: {
            "id": info.id,
            "uri": uri,
            "bytes": info.size,
            "sha256": info.sha256,
            "mimeType": info.mime_type,
        }
    }
    return {"content": content, "isError": bool(result.get("isError")), "_meta": meta}


def _malformed(node: str, problem: str) -> dict[str, Any]:
    text = f"node {node} answered with a result that is not a CallToolResult: {problem}"
    return {"content": [{"type": "text", "text": text}], "isError": True}


async def load_full_result(store: ArtifactStore, ref: dict[str, Any]) -> dict[str, Any] | str | None:
    """The whole CallToolResult a reference stands for (read and parsed in a worker thread): None when
    it has expired, the problem (a string) when the node's bytes are not a CallToolResult (rule 5)."""

    def load() -> dict[str, Any] | str | None:
        data = store.read_bytes(str(ref.get("id")))
        if data is None:
            return None
        try:
            value = json_limits.loads(data)
        except ValueError as exc:
            return f"the whole result is not JSON ({exc})"
        problem = tool_result_problem(value)
        if problem is not None:
            return problem
        if MetaKey.ARTIFACT in (value.get("_meta") or {}):
            return "the whole result is itself a reference to an artifact"
        return value  # type: ignore[no-any-return]

    return await asyncio.to_thread(load)


async def rest_response(store: ArtifactStore, result: Any) -> Response:
    """REST (`POST .../call`): the whole CallToolResult, streamed from the artifact when it is one."""
    ref = artifact_reference(result)
    f = await asyncio.to_thread(store.open_bytes, str(ref["id"])) if ref is not None else None
    if ref is None or f is None:
        return JSONResponse(result)

    async def body() -> AsyncIterator[bytes]:
        try:
            while piece := await asyncio.to_thread(f.read, STREAM_PIECE):
                yield piece
        finally:
            f.close()
            # Only this caller holds the reference (it never saw the id): the budget is free again.
            store.discard(str(ref["id"]))

    return StreamingResponse(
        body(), media_type="application/json", headers={"X-Cortex-Artifact": str(ref["id"])}
    )


def _shrink(value: Any, uri: str, depth: int = 0) -> Any:
    if isinstance(value, str) and len(value) > PREVIEW_CHARS:
        return value[:PREVIEW_CHARS] + f"… [{len(value)} characters in all; the whole result is at {uri}]"
    if depth < 32 and isinstance(value, dict):
        return {k: _shrink(v, uri, depth + 1) for k, v in value.items()}
    if depth < 32 and isinstance(value, list):
        return [_shrink(v, uri, depth + 1) for v in value]
    return value


async def _image_link(
    store: ArtifactStore, item: dict[str, Any], *, node: str, workspace: str, base: str
) -> dict[str, Any]:
    """A large image as a `resource_link` to an artifact of its own bytes (decoded and stored in a
    worker thread: tens of megabytes of base64 would stall the loop)."""
    mime = str(item.get("mimeType") or "application/octet-stream")

    def put() -> tuple[str, int]:
        data = base64.b64decode(item["data"])
        return store.put(data, mime, node=node, workspace=workspace), len(data)

    artifact_id, size = await asyncio.to_thread(put)
    return _link(
        base, artifact_id, f"{node}-image-{artifact_id[:8]}", "Image too large to inline", mime, size
    )


def _link(base: str, artifact_id: str, name: str, what: str, mime: str, size: Any) -> dict[str, Any]:
    """A `resource_link` to an artifact: its HTTP URL, readable with `resources/read` in the same MCP
    session too, and its short name in ``_meta["cortex/uri"]``."""
    return {
        "type": "resource_link",
        "uri": f"{base}/api/v1/artifacts/{artifact_id}",
        "name": name,
        "description": f"{what}; read it with resources/read, or GET it with the same bearer token.",
        "mimeType": mime,
        "size": size,
        "_meta": {MetaKey.URI: artifact_uri(artifact_id)},
    }


async def expand_for_mcp(
    store: ArtifactStore, result: Any, *, node: str, workspace: str, base_url: str, inline_limit: int
) -> Any:
    """MCP: a reference becomes the result's own small parts plus `resource_link`s: one per large text
    (``text/plain``), one per large image, and one to the whole CallToolResult (``application/json``).
    A reference's big parts are decoded and stored in worker threads."""
    ref = artifact_reference(result)
    if ref is None:
        return result
    base = base_url.rstrip("/")
    whole_uri = f"{base}/api/v1/artifacts/{ref['id']}"
    whole_link = _link(
        base,
        str(ref["id"]),
        f"{node}-result-{str(ref['id'])[:8]}.json",
        "The whole CallToolResult (JSON)",
        "application/json",
        ref.get("bytes"),
    )
    full = await load_full_result(store, ref)
    if full is None:  # expired meanwhile: the summary still says what happened
        return {"content": [*(result.get("content") or []), whole_link], "isError": result.get("isError")}
    if isinstance(full, str):
        logger.warning("node %r uploaded a whole result that is not a CallToolResult: %s", node, full)
        return {"content": [*_malformed(node, full)["content"], whole_link], "isError": True}
    content: list[Any] = []
    for item in full.get("content") or []:
        image = item.get("data") if isinstance(item, dict) and item.get("type") == "image" else None
        if isinstance(image, str) and len(image) > inline_limit:
            content.append(await _image_link(store, item, node=node, workspace=workspace, base=base))
            continue
        text = item.get("text") if isinstance(item, dict) and item.get("type") == "text" else None
        if not isinstance(text, str) or len(text) <= inline_limit:
            content.append(item)
            continue
        data = text.encode("utf-8")
        artifact_id = await asyncio.to_thread(
            store.put, data, "text/plain; charset=utf-8", node=node, workspace=workspace
        )
        content.append({"type": "text", "text": _shrink(text, f"{base}/api/v1/artifacts/{artifact_id}")})
        content.append(
            _link(
                base,
                artifact_id,
                f"{node}-text-{artifact_id[:8]}.txt",
                "Text too large to inline",
                "text/plain",
                len(data),
            )
        )
    content.append(whole_link)
    expanded: dict[str, Any] = {"content": content, "isError": bool(full.get("isError"))}
    if full.get("structuredContent") is not None:
        expanded["structuredContent"] = _shrink(full["structuredContent"], whole_uri)
    return expanded
