"""The node side of results too large for one frame: upload them in chunks with `artifacts/write`.

Layering: `NodeAgent` (desktop_agent/connection.py) hands every `tools/call` result from the `ToolEngine`
to `ResultSender.deliver` before answering; a small result goes back as it is, a large one is uploaded
over the same `RpcSession` and the answer becomes a reference (spec/protocol.md §11). The audit record
(`output_sha256`/`output_bytes`) was already written by the engine over the whole result.

Rules:
1. No frame we send is over the server's frame limit (told in `initialize` ``limits.maxFrameBytes``):
   a result whose JSON is over `threshold` (1 MiB, or less when the limit is smaller) is uploaded in
   chunks of at most `chunk_bytes` decoded bytes, whose base64 frame fits the limit.
2. Flow control: at most `window` chunks are in flight; each is awaited, so other calls' frames
   interleave with the upload and a slow server slows the upload, never the link.
3. The upload carries the size up front and the SHA-256 on the final chunk; the server commits only
   when both match.
4. A refusal by the server (over the artifact budget, or anything else) becomes an ``isError`` result
   for the caller explaining why; it never drops the link.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
from collections.abc import Iterator
from typing import Any

from spec.errors import INTERNAL_ERROR, RpcError
from spec.json_text import compact
from spec.protocol import MetaKey, Method
from spec.session import RpcSession

__all__ = [
    "BIG_RESULT_BYTES", "EncodedList", "ResultSender", "json_digest", "json_digest_kept", "json_pieces",
    "size_bound",
]  # fmt: skip

MIB = 1024 * 1024
BIG_RESULT_BYTES = MIB
"""Above this, a result's serialisation and hashing leave the event loop (engine and sender alike)."""
FRAME_OVERHEAD = 4096
"""Room in an `artifacts/write` frame for the envelope and the params besides ``data``."""
PREVIEW_CHARS = 2048


def size_bound(value: Any, depth: int = 0) -> int:
    """An upper bound of the JSON bytes of `value` (cheap: no serialisation) — at most 6 bytes per
    character (``\\u00XX`` escapes), with a margin for the structure."""
    if isinstance(value, str):
        return 6 * len(value) + 2
    if isinstance(value, dict):
        if depth > 32:
            return 1 << 40
        total = 2
        for k, v in value.items():  # a loop, strings inline: this runs twice on every call's result
            total += (6 * len(k) + 4 if type(k) is str else size_bound(k, depth + 1) + 2) + (
                6 * len(v) + 2 if type(v) is str else size_bound(v, depth + 1)
            )
        return total
    if isinstance(value, list | tuple):
        if depth > 32:
            return 1 << 40
        total = 2
        for v in value:
            total += 6 * len(v) + 3 if type(v) is str else size_bound(v, depth + 1) + 1
        return total
    return 32


PIECE_CHARS = 64 * 1024


class EncodedList(list[Any]):
    """A list that carries its own JSON text, made once and reused.

    The engine serialises a big result's ``content`` (canonically: sorted keys) to digest it for the audit
    record; the upload of the same result then sends those pieces as they are instead of escaping
    megabytes a second time. Any JSON text of the value will do there: key order carries no meaning.
    """

    __slots__ = ("pieces",)

    def __init__(self, items: list[Any], pieces: list[str]) -> None:
        super().__init__(items)
        self.pieces = pieces


def json_pieces(value: Any, *, sort_keys: bool = False, depth: int = 0, reuse: bool = False) -> Iterator[str]:
    """``json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=...)`` in pieces.

    Joined, the pieces are exactly that text; but no piece takes long to make. One `json.dumps` of a
    50 MB string is a single C call that holds the GIL for a fifth of a second: in a worker thread it
    would still stall the event loop. In pieces, the loop gets its turn at every switch interval.
    With `reuse`, an `EncodedList` inside `value` gives its own (canonical) text instead.
    """
    if reuse and type(value) is EncodedList:
        yield from value.pieces
        return
    if isinstance(value, str):
        if len(value) <= PIECE_CHARS:
            yield compact(value)
            return
        # JSON escapes each character on its own, so the escaped slices joined are the escaped whole.
        yield '"'
        for start in range(0, len(value), PIECE_CHARS):
            yield compact(value[start : start + PIECE_CHARS])[1:-1]
        yield '"'
    elif isinstance(value, dict) and depth < 64 and all(isinstance(k, str) for k in value):
        yield "{"
        for i, key in enumerate(sorted(value) if sort_keys else value):
            yield ("," if i else "") + compact(key) + ":"
            yield from json_pieces(value[key], sort_keys=sort_keys, depth=depth + 1, reuse=reuse)
        yield "}"
    elif isinstance(value, list | tuple) and depth < 64:
        yield "["
        for i, item in enumerate(value):
            if i:
                yield ","
            yield from json_pieces(item, sort_keys=sort_keys, depth=depth + 1, reuse=reuse)
        yield "]"
    else:
        yield json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=sort_keys)


def json_digest(value: Any, *, sort_keys: bool = False) -> tuple[str, int]:
    """SHA-256 hex and length of the UTF-8 of `json_pieces(value)` (blocking: run it in a thread)."""
    digest, size, _ = json_digest_kept(value, sort_keys=sort_keys, keep=False)
    return digest, size


def json_digest_kept(value: Any, *, sort_keys: bool = False, keep: bool = True) -> tuple[str, int, list[str]]:
    """`json_digest` that also returns the pieces it hashed (for an `EncodedList`) when `keep`."""
    digest, size, kept = hashlib.sha256(), 0, []
    for piece in json_pieces(value, sort_keys=sort_keys):
        data = piece.encode("utf-8")
        digest.update(data)
        size += len(data)
        if keep:
            kept.append(piece)
    return digest.hexdigest(), size, kept


def _utf8_cut(buffer: bytearray, limit: int) -> int:
    """The largest cut at most `limit` into `buffer` that splits no UTF-8 character (continuation bytes
    are 0b10xxxxxx), so every chunk is text on its own."""
    cut = limit
    while cut > limit - 4 and cut > 0 and buffer[cut] & 0xC0 == 0x80:
        cut -= 1
    return cut if cut > limit - 4 and cut > 0 else limit


def _serialise(result: dict[str, Any], chunk_bytes: int) -> tuple[list[bytes], int, str]:
    """The result's JSON as chunks of at most `chunk_bytes`, cut between characters, its size and SHA-256.

    Never one big buffer: allocating and copying 50 MB in one C call holds the GIL for tens of ms."""
    chunks: list[bytes] = []
    digest, size = hashlib.sha256(), 0
    buffer = bytearray()
    for piece in json_pieces(result, reuse=True):
        data = piece.encode("utf-8")
        digest.update(data)
        size += len(data)
        buffer += data
        while len(buffer) > chunk_bytes:
            cut = _utf8_cut(buffer, chunk_bytes)
            chunks.append(bytes(buffer[:cut]))
            del buffer[:cut]
    if buffer or not chunks:
        chunks.append(bytes(buffer))
    return chunks, size, digest.hexdigest()


def _chunk_param(chunk: bytes, room: int) -> tuple[str, str]:
    """How a chunk travels: ``("text", …)`` when it is UTF-8 whose JSON string fits `room` (a JSON text's
    bytes need no base64: they are text already, and decoding base64 cost the server more than the rest of
    the chunk's handling), else ``("data", base64)``. Our JSON holds no control characters, so its escaped
    length is its length plus one per quote and backslash."""
    if len(chunk) + chunk.count(b'"') + chunk.count(b"\\") + 2 <= room:
        try:
            return "text", chunk.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return "data", base64.b64encode(chunk).decode("ascii")


def _preview(result: dict[str, Any]) -> str:
    for item in result.get("content") or []:
        if isinstance(item, dict) and item.get("type") == "text" and isinstance(item.get("text"), str):
            text = str(item["text"])
            return text[:PREVIEW_CHARS] + ("…" if len(text) > PREVIEW_CHARS else "")
    kinds = sorted({str(i.get("type")) for i in result.get("content") or [] if isinstance(i, dict)})
    return f"(content: {', '.join(kinds) or 'none'})"


class ResultSender:
    """Decides inline or upload for each result of one link (see the module's rules)."""

    def __init__(self, max_frame_bytes: int, *, threshold: int = BIG_RESULT_BYTES, window: int = 4) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.threshold = max(1024, min(threshold, max_frame_bytes - FRAME_OVERHEAD))
        raw = (max_frame_bytes - FRAME_OVERHEAD) * 3 // 4
        self.chunk_bytes = max(3, min(512 * 1024, raw) // 3 * 3)
        self.window = max(1, window)

    async def deliver(self, rpc: RpcSession, result: dict[str, Any]) -> dict[str, Any]:
        if size_bound(result) <= self.threshold:
            return result
        # Megabytes: serialise off the event loop, so other calls' frames keep flowing meanwhile.
        chunks, size, digest = await asyncio.to_thread(_serialise, result, self.chunk_bytes)
        if size <= self.threshold:
            return result
        try:
            artifact = await self._upload(rpc, chunks, size, digest)
        except RpcError as exc:
            return {
                "content": [
                    {
                        "type": "text",
                        "text": f"the result ({size} bytes) could not be handed to the server: {exc.message}",
                    }
                ],
                "isError": True,
            }
        return {
            "content": [{"type": "text", "text": _preview(result)}],
            "isError": bool(result.get("isError")),
            "_meta": {MetaKey.ARTIFACT: artifact},
        }

    def fit_records(self, result: dict[str, Any]) -> dict[str, Any]:
        """An `audit/read` answer cut to the records that fit one frame (rule 1); the caller pages on
        with ``after_seq`` (audit strings are capped, so one record always fits)."""
        records = result.get("records")
        if not isinstance(records, list) or size_bound(result) <= self.threshold:
            return result
        room = self.threshold - len(json.dumps({k: v for k, v in result.items() if k != "records"}))
        kept: list[Any] = []
        for record in records:
            room -= len(json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode("utf-8")) + 1
            if room < 0 and kept:
                break
            kept.append(record)
        return {**result, "records": kept}

    async def _upload(self, rpc: RpcSession, chunks: list[bytes], size: int, digest: str) -> dict[str, Any]:
        upload_id = secrets.token_urlsafe(12)
        offsets, at = [], 0
        for chunk in chunks:
            offsets.append(at)
            at += len(chunk)
        index = {offset: i for i, offset in enumerate(offsets)}
        last = offsets.pop()
        slots = asyncio.Semaphore(self.window)
        failure: list[RpcError] = []
        room = self.max_frame_bytes - FRAME_OVERHEAD

        async def send(offset: int, final: bool) -> Any:
            key, value = _chunk_param(chunks[index[offset]], room)
            params: dict[str, Any] = {
                "id": upload_id,
                "offset": offset,
                key: value,
                "final": final,
                "size": size,
            }
            if final:
                params["sha256"] = digest
                params["mimeType"] = "application/json"
            return await rpc.request(Method.ARTIFACTS_WRITE, params)

        async def one(offset: int) -> None:
            try:
                if not failure:
                    await send(offset, False)
            except RpcError as exc:
                failure.append(exc)
            finally:
                slots.release()

        tasks: list[asyncio.Task[None]] = []
        try:
            for offset in offsets:
                await slots.acquire()
                if failure:
                    slots.release()
                    break
                tasks.append(asyncio.create_task(one(offset)))
            await asyncio.gather(*tasks)
            if failure:
                raise failure[0]
            answer = await send(last, True)
        finally:
            for task in tasks:
                task.cancel()
        artifact = answer.get("artifact") if isinstance(answer, dict) else None
        if not isinstance(artifact, dict) or not isinstance(artifact.get("id"), str):
            raise RpcError(INTERNAL_ERROR, "the server did not confirm the upload")
        return artifact
