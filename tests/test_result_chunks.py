"""Tier (a): the node's `ResultSender` and the server's `ResultUploads` wired text-to-text (no sockets).

Both sides of `artifacts/write`: no frame the node sends is over the frame limit, the artifact is the
whole result byte for byte, the window bounds what is in flight, and every refusal by the server (budget,
a gap, a wrong digest, bad base64) is a clear answer that keeps nothing partial.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from desktop_agent.uploads import EncodedList, ResultSender, json_digest_kept
from server.artifact_store import ArtifactLimits, DiskArtifactStore
from server.results import ResultUploads, checked_result
from spec import errors
from spec.errors import RpcError
from spec.schemas import message_problems
from spec.session import RpcSession, make_methods

MIB = 1024 * 1024


@dataclass
class Link:
    node: RpcSession
    server: RpcSession
    uploads: ResultUploads
    store: DiskArtifactStore
    node_frames: list[int] = field(default_factory=list)
    node_texts: list[str] = field(default_factory=list)
    in_flight_max: int = 0


@contextlib.asynccontextmanager
async def linked(tmp_path: Path, frame: int, limits: ArtifactLimits | None = None) -> AsyncIterator[Link]:
    store = DiskArtifactStore(tmp_path / "artifacts", limits)
    uploads = ResultUploads(store, "n1", "ws1", frame)
    to_server: asyncio.Queue[str] = asyncio.Queue()
    to_node: asyncio.Queue[str] = asyncio.Queue()
    in_flight = 0

    async def node_send(text: str) -> None:
        link.node_frames.append(len(text.encode("utf-8", "surrogatepass")))  # a hostile node may send one
        link.node_texts.append(text)
        await to_server.put(text)

    async def server_send(text: str) -> None:
        await to_node.put(text)

    async def write(ctx: Any, **params: Any) -> Any:
        nonlocal in_flight
        in_flight += 1
        link.in_flight_max = max(link.in_flight_max, in_flight)
        try:
            await asyncio.sleep(0)  # let the node send more if its window allows
            return await uploads.write(ctx, **params)
        finally:
            in_flight -= 1

    node = RpcSession(node_send, {}, name="node")
    server = RpcSession(server_send, make_methods({"artifacts/write": write}), name="server")
    link = Link(node, server, uploads, store)

    async def pump(queue: asyncio.Queue[str], session: RpcSession) -> None:
        while True:
            await session.feed(await queue.get())

    pumps = [asyncio.create_task(pump(to_server, server)), asyncio.create_task(pump(to_node, node))]
    try:
        yield link
    finally:
        for task in pumps:
            task.cancel()


def _wire(result: dict[str, Any]) -> bytes:
    return json.dumps(result, separators=(",", ":"), ensure_ascii=False).encode()


async def test_a_large_result_arrives_whole_in_frames_under_the_limit(tmp_path: Path) -> None:
    result = {"content": [{"type": "text", "text": "é" * (3 * MIB)}], "isError": False}
    async with linked(tmp_path, MIB) as link:
        sender = ResultSender(MIB, window=4)
        async with asyncio.timeout(20):
            answer = await sender.deliver(link.node, result)
        ref = answer["_meta"]["cortex/artifact"]
        assert max(link.node_frames) <= MIB
        assert len(link.node_frames) > 8
        assert 1 < link.in_flight_max <= 4  # a bounded window, not one chunk at a time
        for text in link.node_texts:  # every frame is what spec/schemas says, the chunk as UTF-8 text
            assert message_problems(json.loads(text), "artifacts/write") == []
            assert "text" in json.loads(text)["params"]
        assert message_problems({"jsonrpc": "2.0", "id": 1, "result": answer}, "tools/call") == []
        stored = link.store.read_bytes(ref["id"])
        assert stored == _wire(result)
        assert ref["sha256"] == hashlib.sha256(_wire(result)).hexdigest()
        # what the surfaces see: a summary with the link
        checked = checked_result(link.store, "n1", answer)
        assert checked["_meta"]["cortex/artifact"]["uri"] == f"/api/v1/artifacts/{ref['id']}"
        assert len(json.dumps(checked)) < 16 * 1024


async def test_a_small_result_goes_inline(tmp_path: Path) -> None:
    result = {"content": [{"type": "text", "text": "hi"}], "isError": False}
    async with linked(tmp_path, MIB) as link:
        assert await ResultSender(MIB).deliver(link.node, result) is result
        assert link.node_frames == []


async def test_over_the_budget_is_an_iserror_result_and_nothing_is_kept(tmp_path: Path) -> None:
    result = {"content": [{"type": "text", "text": "x" * (3 * MIB)}], "isError": False}
    async with linked(tmp_path, MIB, ArtifactLimits(node_bytes=2 * MIB)) as link:
        async with asyncio.timeout(20):
            answer = await ResultSender(MIB).deliver(link.node, result)
        assert answer["isError"] is True and "budget" in answer["content"][0]["text"]
        assert list((tmp_path / "artifacts").iterdir()) == []
        assert link.store.used_bytes("n1") == 0


async def _write(link: Link, **params: Any) -> Any:
    async with asyncio.timeout(5):
        return await link.node.request("artifacts/write", params)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_the_server_refuses_bad_chunks_and_keeps_nothing_partial(tmp_path: Path) -> None:
    async with linked(tmp_path, MIB) as link:
        # a gap
        await _write(link, id="u1", offset=0, data=_b64(b"abc"), final=False, size=6)
        with pytest.raises(RpcError) as gap:
            await _write(link, id="u1", offset=4, data=_b64(b"de"), final=False, size=6)
        assert gap.value.code == errors.INVALID_PARAMS
        # the upload is gone: continuing it is refused too
        with pytest.raises(RpcError):
            await _write(link, id="u1", offset=3, data=_b64(b"def"), final=True, size=6, sha256="0" * 64)
        # a wrong digest
        with pytest.raises(RpcError) as digest:
            await _write(link, id="u2", offset=0, data=_b64(b"abc"), final=True, size=3, sha256="0" * 64)
        assert digest.value.code == errors.INVALID_PARAMS
        # bad base64, a chunk past the declared size, an upload that does not start at 0
        for params in (
            {"id": "u3", "offset": 0, "data": "!!!", "final": False, "size": 3},
            {"id": "u4", "offset": 0, "data": _b64(b"abcd"), "final": False, "size": 3},
            {"id": "u5", "offset": 5, "data": _b64(b"a"), "final": False, "size": 9},
            {"id": "", "offset": 0, "data": _b64(b"a"), "final": False, "size": 1},
        ):
            with pytest.raises(RpcError) as bad:
                await _write(link, **params)
            assert bad.value.code == errors.INVALID_PARAMS
        # a chunk over the frame limit once decoded
        with pytest.raises(RpcError) as big:
            await _write(link, id="u6", offset=0, data=_b64(b"x" * (MIB + 1)), final=False, size=2 * MIB)
        assert big.value.code == errors.INVALID_PARAMS
        assert list((tmp_path / "artifacts").iterdir()) == []
        # a good one still works on the same link
        good = await _write(
            link,
            id="u7",
            offset=0,
            data=_b64(b"abc"),
            final=True,
            size=3,
            sha256=hashlib.sha256(b"abc").hexdigest(),
        )
        assert link.store.read_bytes(good["artifact"]["id"]) == b"abc"


async def test_a_chunk_that_would_grow_past_the_frame_as_text_goes_as_base64(tmp_path: Path) -> None:
    # Quotes and backslashes double when a JSON text is escaped again: such a chunk goes as base64.
    result = {"content": [{"type": "text", "text": '"\\' * (MIB // 2) + "é" * MIB}], "isError": False}
    async with linked(tmp_path, MIB) as link:
        async with asyncio.timeout(20):
            answer = await ResultSender(MIB).deliver(link.node, result)
        kinds = {next(k for k in ("data", "text") if k in json.loads(t)["params"]) for t in link.node_texts}
        assert kinds == {"data", "text"}
        assert max(link.node_frames) <= MIB
        assert link.store.read_bytes(answer["_meta"]["cortex/artifact"]["id"]) == _wire(result)


async def test_the_audit_digests_serialisation_is_the_one_uploaded(tmp_path: Path) -> None:
    content = [{"type": "text", "text": "€" * (2 * MIB)}]
    digest, size, pieces = json_digest_kept(content, sort_keys=True)
    result = {"content": EncodedList(content, pieces), "isError": False}
    async with linked(tmp_path, MIB) as link:
        async with asyncio.timeout(20):
            answer = await ResultSender(MIB).deliver(link.node, result)
        stored = link.store.read_bytes(answer["_meta"]["cortex/artifact"]["id"])
        assert stored is not None
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        assert stored == b'{"content":' + canonical + b',"isError":false}'
        assert hashlib.sha256(canonical).hexdigest() == digest and len(canonical) == size
        assert json.loads(stored) == {"content": content, "isError": False}


async def test_the_server_refuses_bad_text_chunks(tmp_path: Path) -> None:
    async with linked(tmp_path, MIB) as link:
        for params in (
            {"id": "t1", "offset": 0, "final": False, "size": 3},  # neither data nor text
            {"id": "t2", "offset": 0, "data": _b64(b"abc"), "text": "abc", "final": False, "size": 3},
            {"id": "t3", "offset": 0, "text": "a\ud800b", "final": False, "size": 3},  # a lone surrogate
            {"id": "t4", "offset": 0, "text": "€" * (MIB // 2), "final": False, "size": 2 * MIB},  # 1.5 MiB
            {"id": "t5", "offset": 0, "text": 7, "final": False, "size": 3},
        ):
            with pytest.raises(RpcError) as bad:
                await _write(link, **params)
            assert bad.value.code == errors.INVALID_PARAMS, params
        assert list((tmp_path / "artifacts").iterdir()) == []
        good = await _write(
            link,
            id="t6",
            offset=0,
            text="é",
            final=True,
            size=2,
            sha256=hashlib.sha256("é".encode()).hexdigest(),
        )
        assert link.store.read_bytes(good["artifact"]["id"]) == "é".encode()


async def test_open_uploads_die_with_the_link(tmp_path: Path) -> None:
    async with linked(tmp_path, MIB) as link:
        await _write(link, id="u1", offset=0, data=_b64(b"abc"), final=False, size=6)
        assert link.store.used_bytes("n1") == 6
        link.uploads.close()
        assert link.store.used_bytes("n1") == 0
        assert list((tmp_path / "artifacts").iterdir()) == []


def test_a_reference_to_another_nodes_artifact_is_an_error(tmp_path: Path) -> None:
    store = DiskArtifactStore(tmp_path / "artifacts")
    theirs = store.put(b"{}", "application/json", node="other", workspace="ws2")
    forged = {"content": [], "isError": False, "_meta": {"cortex/artifact": {"id": theirs}}}
    checked = checked_result(store, "n1", forged)
    assert checked["isError"] is True and "_meta" not in checked
    assert checked_result(store, "n1", {**forged, "_meta": {"cortex/artifact": {"id": "nope"}}})["isError"]


def test_artifacts_expire_and_their_files_go(tmp_path: Path) -> None:
    store = DiskArtifactStore(tmp_path / "artifacts", ArtifactLimits(ttl_s=0))
    gone = store.put(b"x", "text/plain", node="n1", workspace="ws1")
    assert store.info(gone) is None
    assert list((tmp_path / "artifacts").iterdir()) == []


def test_an_audit_page_is_cut_to_fit_one_frame() -> None:
    records = [{"seq": i, "arguments": {"content": "x" * 4000}} for i in range(1, 1001)]
    answer = {"records": records, "head": {"seq": 1000, "hash": "0" * 64}}
    fitted = ResultSender(256 * 1024).fit_records(answer)
    assert len(json.dumps(fitted)) < 256 * 1024
    assert fitted["records"] == records[: len(fitted["records"])] and len(fitted["records"]) > 10
    assert fitted["head"] == answer["head"]
    small = {"records": records[:3], "head": answer["head"]}
    assert ResultSender(256 * 1024).fit_records(small) is small


def test_an_idle_upload_is_aborted(tmp_path: Path) -> None:
    store = DiskArtifactStore(tmp_path / "artifacts", ArtifactLimits(upload_idle_s=0))
    store.open_upload(node="n1", workspace="ws1", size=10, mime_type="application/json")
    assert store.used_bytes("n1") == 10
    store.sweep()  # the node gave up mid-way: its reservation and its file go
    assert store.used_bytes("n1") == 0
    assert list((tmp_path / "artifacts").iterdir()) == []
