"""The artifact store: large tool results kept by the server for a while.

Layering: below every surface (it imports none of them). The tunnel (`server.tunnel`, through
`server.results`) receives a result too large for one frame in chunks (`artifacts/write`,
spec/protocol.md §11) and commits it here; surfaces that cannot carry a large result inline (MCP, whose
clients cap one message near 1 MiB) `put` the bytes here and hand out a link; `server.artifacts` serves
them back (`GET /api/v1/artifacts/{id}`). Everything goes through the `ArtifactStore` interface, so a
store shared by several replicas can replace the embedded `DiskArtifactStore`.

Rules:
1. An artifact lives `ArtifactLimits.ttl_s` seconds, then it is gone (404) and its file is deleted.
   Expired artifacts are swept on every store operation and every minute (`sweep_every`).
2. Uploads are bounded: at most `node_bytes` per node and `total_bytes` for the whole store, counting
   committed artifacts and the declared size of uploads still open. An upload that would go over is
   refused at once with `ArtifactBudgetExceeded` (nothing evicted, nothing partly kept).
3. An artifact whose only reader got it whole (a REST caller, who never saw its id) is discarded at
   once. `put` (copies derived by a surface, e.g. an MCP image) evicts the oldest artifacts when the total
   budget is full, as a cache would.
4. Ids are random (128 bits): knowing one is not authorization, the bearer token still is.
5. The embedded store keeps its files in ``<data dir>/artifacts`` (mode 0600) and its index in memory:
   a restarted server starts with an empty directory.
6. An upload writes strictly in order (``offset`` equals the bytes written so far) and commits only when
   its size and SHA-256 match what the node declared.
7. An open upload that gets no chunk for `upload_idle_s` (a node that gave up mid-way) is aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

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
    "artifact_uri",
    "visible_artifact",
]

MIB = 1024 * 1024


@dataclass(frozen=True)
class ArtifactLimits:
    ttl_s: float = 900.0
    node_bytes: int = 512 * MIB
    total_bytes: int = 2048 * MIB
    max_open_uploads: int = 16  # per node
    upload_idle_s: float = 60.0  # an open upload without a chunk for this long is aborted


@dataclass(frozen=True)
class ArtifactInfo:
    """What the store knows about an artifact, without its bytes."""

    id: str
    mime_type: str
    node: str
    workspace: str
    size: int
    sha256: str
    expires_at: float  # time.monotonic()


@dataclass(frozen=True)
class Artifact:
    """An artifact with its bytes (what `ArtifactStore.get` returns)."""

    data: bytes
    mime_type: str
    node: str
    workspace: str
    expires_at: float


class ArtifactBudgetExceeded(Exception):
    """An upload would take a node (or the whole store) over its byte budget."""

    def __init__(self, message: str, *, needed: int, limit: int, scope: str) -> None:
        super().__init__(message)
        self.needed, self.limit, self.scope = needed, limit, scope


class ArtifactUpload(Protocol):
    """One result arriving in chunks; written in order, then committed or aborted."""

    size: int
    written: int

    async def write(self, data: bytes) -> None: ...
    async def commit(self, sha256: str) -> ArtifactInfo: ...
    def abort(self) -> None: ...


class ArtifactStore(Protocol):
    """The seam: the embedded `DiskArtifactStore`, or later a store shared by replicas."""

    limits: ArtifactLimits

    def put(self, data: bytes, mime_type: str, *, node: str, workspace: str) -> str: ...
    def get(self, artifact_id: str, caller: Caller) -> Artifact | None: ...
    def info(self, artifact_id: str) -> ArtifactInfo | None: ...
    def open_upload(self, *, node: str, workspace: str, size: int, mime_type: str) -> ArtifactUpload: ...
    def open_bytes(self, artifact_id: str) -> BinaryIO | None: ...
    def read_bytes(self, artifact_id: str) -> bytes | None: ...
    def discard(self, artifact_id: str) -> None: ...
    def sweep(self) -> None: ...
    async def sweep_every(self, interval: float) -> None: ...
    def used_bytes(self, node: str | None = None) -> int: ...


class _DiskUpload:
    def __init__(
        self, store: DiskArtifactStore, node: str, workspace: str, size: int, mime_type: str
    ) -> None:
        self.store = store
        self.node, self.workspace, self.size, self.mime_type = node, workspace, size, mime_type
        self.written = 0
        self.touched = time.monotonic()
        self.id = secrets.token_urlsafe(16)
        self.path = store.directory / f"{self.id}.part"
        self._hash = hashlib.sha256()
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._done = False

    def _write(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self._hash.update(data)  # hashlib releases the GIL on large buffers

    async def write(self, data: bytes) -> None:
        if self._done:
            raise ValueError("the upload is closed")
        if self.written + len(data) > self.size:
            raise ValueError(f"chunk goes past the declared size of {self.size} bytes")
        self.written += len(data)
        self.touched = time.monotonic()
        await asyncio.to_thread(self._write, data)

    async def commit(self, sha256: str) -> ArtifactInfo:
        if self.written != self.size:
            raise ValueError(f"{self.written} bytes received of the {self.size} declared")
        if self._hash.hexdigest() != sha256.lower():
            raise ValueError("the SHA-256 of the bytes received does not match the one declared")
        self._close_fd()
        self._done = True
        final = self.store.directory / self.id
        os.replace(self.path, final)
        return self.store._commit(self)

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._close_fd()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.store._release(self)


class DiskArtifactStore:
    """The embedded store: files in a directory of the data dir, index in memory (see rules 1-6)."""

    def __init__(self, directory: Path, limits: ArtifactLimits | None = None) -> None:
        self.limits = limits or ArtifactLimits()
        self.directory = directory
        shutil.rmtree(directory, ignore_errors=True)  # rule 5: the index of old files is gone
        directory.mkdir(parents=True, mode=0o700)
        self._items: OrderedDict[str, ArtifactInfo] = OrderedDict()
        self._open: dict[str, _DiskUpload] = {}
        self._lock = threading.Lock()  # `put`/`get` may run in worker threads

    # -- accounting -----------------------------------------------------------------------------------
    def _used(self, node: str | None = None) -> int:
        committed = sum(a.size for a in self._items.values() if node is None or a.node == node)
        pending = sum(u.size for u in self._open.values() if node is None or u.node == node)
        return committed + pending

    def used_bytes(self, node: str | None = None) -> int:
        with self._lock:
            self._expire()
            return self._used(node)

    def _drop(self, artifact_id: str) -> None:
        if self._items.pop(artifact_id, None) is not None:
            with contextlib.suppress(FileNotFoundError):
                (self.directory / artifact_id).unlink()

    def _expire(self) -> None:
        now = time.monotonic()
        for artifact_id, info in list(self._items.items()):
            if info.expires_at <= now:
                self._drop(artifact_id)

    # -- uploads ----------------------------------------------------------------------------------------
    def open_upload(self, *, node: str, workspace: str, size: int, mime_type: str) -> _DiskUpload:
        self.sweep()
        with self._lock:
            if sum(1 for u in self._open.values() if u.node == node) >= self.limits.max_open_uploads:
                raise ArtifactBudgetExceeded(
                    f"node {node} already has {self.limits.max_open_uploads} uploads open",
                    needed=size,
                    limit=self.limits.max_open_uploads,
                    scope="uploads",
                )
            for scope, used, limit in (
                ("node", self._used(node), self.limits.node_bytes),
                ("total", self._used(), self.limits.total_bytes),
            ):
                if used + size > limit:
                    raise ArtifactBudgetExceeded(
                        f"a result of {size} bytes is over the server's {scope} artifact budget "
                        f"({used} of {limit} bytes in use; results expire after {self.limits.ttl_s:g} s)",
                        needed=size,
                        limit=limit,
                        scope=scope,
                    )
            upload = _DiskUpload(self, node, workspace, size, mime_type)
            self._open[upload.id] = upload
            return upload

    def sweep(self) -> None:
        """Delete expired artifacts and abort idle uploads (rules 1 and 7)."""
        with self._lock:
            self._expire()
            idle_since = time.monotonic() - self.limits.upload_idle_s
            idle = [u for u in self._open.values() if u.touched < idle_since]
        for upload in idle:
            upload.abort()

    async def sweep_every(self, interval: float) -> None:
        """Run `sweep` every `interval` seconds (a task of the app's lifespan): expired files go even
        when nobody touches the store."""
        while True:
            await asyncio.sleep(interval)
            await asyncio.to_thread(self.sweep)

    def _release(self, upload: _DiskUpload) -> None:
        with self._lock:
            self._open.pop(upload.id, None)

    def _commit(self, upload: _DiskUpload) -> ArtifactInfo:
        info = ArtifactInfo(
            upload.id,
            upload.mime_type,
            upload.node,
            upload.workspace,
            upload.size,
            upload._hash.hexdigest(),
            time.monotonic() + self.limits.ttl_s,
        )
        with self._lock:
            self._open.pop(upload.id, None)
            self._items[upload.id] = info
        return info

    # -- whole blobs --------------------------------------------------------------------------------------
    def put(self, data: bytes, mime_type: str, *, node: str, workspace: str) -> str:
        with self._lock:
            self._expire()
            while self._items and self._used() + len(data) > self.limits.total_bytes:
                self._drop(next(iter(self._items)))  # rule 3
            artifact_id = secrets.token_urlsafe(16)
            path = self.directory / artifact_id
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            self._items[artifact_id] = ArtifactInfo(
                artifact_id,
                mime_type,
                node,
                workspace,
                len(data),
                hashlib.sha256(data).hexdigest(),
                time.monotonic() + self.limits.ttl_s,
            )
            return artifact_id

    def discard(self, artifact_id: str) -> None:
        """Forget an artifact before its time (its only reader has it whole)."""
        with self._lock:
            self._drop(artifact_id)

    def info(self, artifact_id: str) -> ArtifactInfo | None:
        with self._lock:
            self._expire()
            return self._items.get(artifact_id)

    def read_bytes(self, artifact_id: str) -> bytes | None:
        return self._data(artifact_id) if self.info(artifact_id) is not None else None

    def get(self, artifact_id: str, caller: Caller) -> Artifact | None:
        """The artifact with its bytes, or None when unknown, expired or of another workspace."""
        return visible_artifact(self.info(artifact_id), caller, self._data)

    def _data(self, artifact_id: str) -> bytes | None:
        try:
            return (self.directory / artifact_id).read_bytes()
        except FileNotFoundError:  # expired since its info was read
            return None

    def open_bytes(self, artifact_id: str) -> BinaryIO | None:
        """The artifact's file opened for reading (it stays readable once open, even if the artifact
        expires meanwhile); None when unknown or expired. Blocking: call from a worker thread."""
        if self.info(artifact_id) is None:
            return None
        try:
            return open(self.directory / artifact_id, "rb")
        except FileNotFoundError:
            return None

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._items)


def visible_artifact(
    info: ArtifactInfo | None, caller: Caller, data_of: Callable[[str], bytes | None]
) -> Artifact | None:
    """`ArtifactStore.get` for every engine: the artifact `info` names with its bytes (`data_of`, read
    once), or None when unknown, expired or of a workspace the caller cannot see."""
    if info is None or not caller.can_see(info.workspace):
        return None
    data = data_of(info.id)
    if data is None:
        return None
    return Artifact(data, info.mime_type, info.node, info.workspace, info.expires_at)


def artifact_uri(artifact_id: str) -> str:
    """An artifact's short, origin-free name: the MCP resource URI (`resources/read`) besides its HTTP URL."""
    return f"cortex://artifacts/{artifact_id}"
