"""The file tools: `fs_read`, `fs_write`, `fs_edit`, `fs_list`, `fs_grep`, confined to the allowed roots.

Sits under the engine, which has validated the arguments against the manifest and checked the owner's
policy; the engine builds one `FsTools` per agent and takes its functions from `tools()`. All opening goes
through `desktop_agent.confine` (race-proof confinement and the protected files, its rules 1-4); the
directory walk and the search of `fs_list`/`fs_grep` are desktop_agent.tools.fs_search.

Rules:
1. Every path is confined: `~` expanded, a relative path joined to the first allowed root, then opened
   beneath its root's fd so that no symlink or concurrent swap leads out (confine rules 1-2). Anything
   else is a `ToolFailure` (an isError result), never touched.
2. No tool can change the node's policy or read its secrets: the agent's own files and the policy's
   `protected_paths` are refused to every file tool by identity, through hard links too (confine rule 3);
   a walk (`fs_list`, `fs_grep`) skips them. Writes never go through a file with several hard links.
3. Writes to one path are serialised by a per-path asyncio lock, so concurrent writes never interleave;
   an overwrite is atomic (temporary file in the same directory fd, fsync, rename within that fd).
4. Blocking file I/O runs in the tools' own thread pool (so a slow file or a FIFO never starves the audit
   log's threads); a cancelled call (the caller's timeout ends as a cancel) tells its thread to stop at
   the next line or directory entry.
5. Directory walks never follow symlinks (no escapes, no loops) and skip `.git` when searching.
6. `fs_grep` patterns are RE2 (linear time whatever the pattern and the text); a pattern RE2 does not
   support (backreferences, lookaround) is a clear isError.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import mimetypes
import os
import secrets
import select
import stat
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from desktop_agent.confine import HOME_FILES, Confinement, Guard, Openat2, Opened
from desktop_agent.tools.base import ToolContext, ToolFailure, ToolFunc, ToolResult
from desktop_agent.tools.fs_search import READ_FLAGS, grep, list_dir

__all__ = ["PROTECTED_FILES", "FsTools"]

PROTECTED_FILES = HOME_FILES
DEFAULT_READ_LIMIT = 1 << 20
IO_THREADS = 32  # above the largest sensible max_concurrency: one per running file call
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"%PDF-", "application/pdf"),
    (b"PK\x03\x04", "application/zip"),
    (b"\x7fELF", "application/x-executable"),
)
T = TypeVar("T")


def _failure(raw: str, exc: OSError) -> ToolFailure:
    if isinstance(exc, FileNotFoundError):
        return ToolFailure(f"{raw}: no such file or directory")
    if isinstance(exc, IsADirectoryError):
        return ToolFailure(f"{raw}: is a directory")
    if isinstance(exc, NotADirectoryError):
        return ToolFailure(f"{raw}: not a directory")
    if isinstance(exc, PermissionError):
        return ToolFailure(f"{raw}: permission denied")
    return ToolFailure(f"{raw}: {exc.strerror or exc}")


BIG_SLICE = 1024 * 1024
"""A read slice above this is decoded in a worker thread (decoding megabytes would stall other calls)."""


def _umask() -> int:
    # os.umask() can only be read by setting it, which races with other threads: ask /proc instead.
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _sniff_mime(real: Path, data: bytes) -> str:
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    return mimetypes.guess_type(real.name)[0] or "application/octet-stream"


def _read_stream(stop: threading.Event, fd: int, offset: int, limit: int) -> tuple[bytes, int]:
    """A named pipe, a slow source: wait for its writer and read to EOF (or `limit` bytes past `offset`).

    Polls in short slices so a cancel (`stop`) ends the wait even while no writer ever comes; on Linux a
    FIFO that never had a writer reports nothing (no POLLHUP), one whose writer left reports EOF.
    """
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP)
    chunks: list[bytes] = []
    kept = skipped = 0
    while kept < limit and not stop.is_set():
        if not poller.poll(100):
            continue
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            continue
        if not chunk:
            break
        if skipped < offset:
            cut = min(len(chunk), offset - skipped)
            skipped += cut
            chunk = chunk[cut:]
        chunk = chunk[: limit - kept]
        chunks.append(chunk)
        kept += len(chunk)
    data = b"".join(chunks)
    return data, offset + len(data)


def _slice_result(real: Path, data: bytes, offset: int, size: int) -> tuple[ToolResult, int]:
    """The content of a read slice (text, image or embedded resource) and the offset after it."""
    end = offset + len(data)
    if len(data) > BIG_SLICE:
        decoded = _decode_big_text(data, at_eof=end >= size)
        if decoded is not None:
            return ToolResult.text(decoded[0]), offset + decoded[1]
    else:
        text = _decode_text(data, at_eof=end >= size)
        if text is not None:
            return ToolResult.text(text), offset + len(text.encode("utf-8"))
    mime = _sniff_mime(real, data)
    b64 = base64.b64encode(data).decode("ascii")
    if mime.startswith("image/"):
        item: dict[str, Any] = {"type": "image", "data": b64, "mimeType": mime}
    else:
        item = {"type": "resource", "resource": {"uri": real.as_uri(), "mimeType": mime, "blob": b64}}
    return ToolResult(content=[item]), end


def _decode_big_text(data: bytes, at_eof: bool) -> tuple[str, int] | None:
    """`_decode_text` for megabytes, also returning the bytes the text covers — counted, not re-encoded
    (encoding 50 MB again holds the GIL for tens of ms, stalling the event loop even from a thread)."""
    if b"\x00" in data:
        return None
    try:
        return data.decode("utf-8"), len(data)
    except UnicodeDecodeError as exc:
        if not at_eof and exc.reason == "unexpected end of data" and exc.start >= len(data) - 3:
            return (data[: exc.start].decode("utf-8", "strict"), exc.start) if exc.start else None
        return None


def _decode_text(data: bytes, at_eof: bool) -> str | None:
    """UTF-8 text, tolerating a character cut by the slice end; None for binary data."""
    if b"\x00" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if not at_eof and exc.reason == "unexpected end of data" and exc.start >= len(data) - 3:
            return data[: exc.start].decode("utf-8", "strict") if exc.start else None
        return None


def _check_writable(raw: str, parent: Opened, name: str, conf: Confinement) -> os.stat_result | None:
    """The existing file `name` in `parent` may be replaced or written (rule 2); None when absent."""
    try:
        st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(st.st_mode):
        raise ToolFailure(f"{raw}: is a directory")
    conf.check(raw, st, os.path.join(parent.path, name))
    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
        raise ToolFailure(f"{raw}: has {st.st_nlink} hard links; never written through (confinement)")
    # Mode bits too: root passes os.access on a 0444 file, yet the owner marked it read-only.
    if (
        not stat.S_ISREG(st.st_mode)
        or st.st_mode & 0o222 == 0
        or not os.access(name, os.W_OK, dir_fd=parent.fd, follow_symlinks=False)
    ):
        raise ToolFailure(f"{raw}: file is read-only (or not a regular file); not written")
    return st


def _atomic_replace(parent: Opened, name: str, data: bytes, st: os.stat_result | None) -> None:
    """Rule 3 / confine rule 4: a new inode in the same directory fd, renamed over `name` within it."""
    tmp = f".{name[:200]}.{secrets.token_hex(6)}.cortex-tmp"
    fd = os.open(
        tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent.fd
    )
    try:
        _write_all(fd, data)
        os.fchmod(fd, stat.S_IMODE(st.st_mode) if st else 0o666 & ~_umask())
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.rename(tmp, name, src_dir_fd=parent.fd, dst_dir_fd=parent.fd)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=parent.fd)
        raise


def _write_file(
    stop: threading.Event, conf: Confinement, raw: str, data: bytes, mode: str
) -> tuple[int, str]:
    parent, name = conf.open_parent(raw)
    try:
        st = _check_writable(raw, parent, name, conf)
        where = os.path.join(parent.path, name)
        if mode == "overwrite":
            _atomic_replace(parent, name, data, st)
            return len(data), where
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
        flags |= os.O_APPEND if mode == "append" else os.O_EXCL
        try:
            fd = os.open(name, flags, 0o666, dir_fd=parent.fd)
        except FileExistsError:
            raise ToolFailure(f"{raw}: already exists (mode create)") from None
        try:
            fst = os.fstat(fd)  # what was really opened, whatever was swapped in since the check
            if not stat.S_ISREG(fst.st_mode) or fst.st_nlink > 1:
                raise ToolFailure(f"{raw}: not a regular file with a single link; not written")
            conf.check(raw, fst, where)
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        return len(data), where
    finally:
        os.close(parent.fd)


def _read_slice(
    stop: threading.Event, conf: Confinement, raw: str, offset: int, limit: int
) -> tuple[bytes, int, str]:
    opened = conf.open(raw, READ_FLAGS)
    fd, st = opened.fd, opened.st
    try:
        if stat.S_ISDIR(st.st_mode):
            raise ToolFailure(f"{raw}: is a directory (use fs_list)")
        if stat.S_ISFIFO(st.st_mode):
            data, size = _read_stream(stop, fd, offset, limit)
            return data, size, opened.path
        if not stat.S_ISREG(st.st_mode):
            raise ToolFailure(f"{raw}: not a regular file")
        if offset >= st.st_size:  # past the end: nothing to read (and an offset past 2**63 is no off_t)
            return b"", st.st_size, opened.path
        return os.pread(fd, min(limit, st.st_size - offset), offset), st.st_size, opened.path
    finally:
        os.close(fd)


class FsTools:
    """The five file tools with their per-path write locks (rule 3) and their thread pool (rule 4).

    `openat2=False` forces confinement's component walk (as on kernels without openat2), for tests.
    """

    def __init__(self, *, openat2: bool = True, io_threads: int = IO_THREADS) -> None:
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._opener = Openat2(enabled=openat2)
        self._pool = concurrent.futures.ThreadPoolExecutor(io_threads, thread_name_prefix="cortex-fs")

    @property
    def uses_openat2(self) -> bool:
        return self._opener.available

    def close(self) -> None:
        """Let the pool's threads go once their (stopped or finished) work is done."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def tools(self) -> dict[str, ToolFunc]:
        return {
            "fs_read": self.fs_read,
            "fs_write": self.fs_write,
            "fs_edit": self.fs_edit,
            "fs_list": self.fs_list,
            "fs_grep": self.fs_grep,
        }

    def _lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[key] = lock
        return lock

    def _confinement(self, ctx: ToolContext) -> Confinement:
        protected = tuple(ctx.policy.protected_paths)
        return Confinement(ctx.policy.allowed_roots, Guard(ctx.home, protected), self._opener)

    def _lock_key(self, raw: str, ctx: ToolContext) -> str:
        """The per-path lock's key: textual (no I/O on the event loop); the open decides the rest."""
        expanded = os.path.expanduser(raw)
        return os.path.normpath(os.path.join(ctx.policy.allowed_roots[0], expanded))

    async def _in_thread(self, raw: str, ctx: ToolContext, func: Callable[..., T], *args: Any) -> T:
        """Run blocking `func(stop, confinement, *args)` in the pool (rule 4), OSError -> ToolFailure."""
        stop = threading.Event()

        def work() -> T:
            with self._confinement(ctx) as conf:
                return func(stop, conf, *args)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, work)
        except asyncio.CancelledError:
            stop.set()
            raise
        except OSError as exc:
            raise _failure(raw, exc) from exc

    async def fs_read(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        raw, offset = arguments["path"], arguments.get("offset", 0)
        limit = arguments.get("limit", DEFAULT_READ_LIMIT)
        most = ctx.policy.limits.max_read_bytes
        if limit > most:
            raise ToolFailure(
                f"limit {limit} is above this node's read limit of {most} bytes; read in slices"
            )
        data, size, where = await self._in_thread(raw, ctx, _read_slice, raw, offset, limit)
        if len(data) > BIG_SLICE:  # decoding megabytes would stall the node's other calls
            result, end = await asyncio.to_thread(_slice_result, Path(where), data, offset, size)
        else:
            result, end = _slice_result(Path(where), data, offset, size)
        if offset >= size and size > 0:
            result.content.append(
                {"type": "text", "text": f"[fs_read: offset {offset} is past the end ({size} bytes)]"}
            )
        elif end < size:
            note = f"[fs_read: returned bytes {offset}-{end - 1} of {size}; continue with offset={end}]"
            result.content.append({"type": "text", "text": note})
        return result

    async def fs_write(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        raw, content = arguments["path"], arguments["content"]
        mode = arguments.get("mode", "overwrite")
        if arguments.get("encoding", "utf-8") == "base64":
            try:
                data = base64.b64decode(content, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ToolFailure(f"content is not valid base64: {exc}") from exc
        else:
            data = content.encode("utf-8", "surrogatepass")
        most = ctx.policy.limits.max_write_bytes
        if len(data) > most:
            raise ToolFailure(
                f"content of {len(data)} bytes is above this node's write limit of {most} bytes"
            )
        async with self._lock(self._lock_key(raw, ctx)):
            written, where = await self._in_thread(raw, ctx, _write_file, raw, data, mode)
        structured = {"path": where, "bytes_written": written}
        return ToolResult.text(f"wrote {written} bytes to {where} ({mode})", structured=structured)

    async def fs_edit(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        raw, old, new = arguments["path"], arguments["old_text"], arguments["new_text"]
        expected = arguments.get("expected_replacements", 1)
        most = ctx.policy.limits.max_write_bytes

        def edit(stop: threading.Event, conf: Confinement) -> tuple[int, str]:
            parent, name = conf.open_parent(raw)
            try:
                st = _check_writable(raw, parent, name, conf)
                if st is None:
                    raise FileNotFoundError(raw)
                if st.st_size > most:
                    raise ToolFailure(
                        f"{raw}: {st.st_size} bytes is above this node's write limit of {most} bytes"
                    )
                fd = os.open(name, READ_FLAGS | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent.fd)
                try:
                    fst = os.fstat(fd)
                    if not stat.S_ISREG(fst.st_mode) or fst.st_nlink > 1:
                        raise ToolFailure(f"{raw}: not a regular file with a single link; not edited")
                    blob = os.pread(fd, most + 1, 0)
                finally:
                    os.close(fd)
                try:
                    text = blob.decode("utf-8")
                except UnicodeDecodeError:
                    raise ToolFailure(f"{raw}: not a UTF-8 text file; not edited") from None
                found = text.count(old)
                if found != expected:
                    raise ToolFailure(
                        f"{raw}: old_text found {found} time(s), expected {expected}; nothing changed"
                        + (" (add surrounding lines to make it unique)" if found > expected else "")
                    )
                _atomic_replace(parent, name, text.replace(old, new).encode("utf-8", "surrogatepass"), fst)
                return found, os.path.join(parent.path, name)
            finally:
                os.close(parent.fd)

        async with self._lock(self._lock_key(raw, ctx)):
            count, where = await self._in_thread(raw, ctx, edit)
        return ToolResult.text(
            f"replaced {count} occurrence(s) in {where}", structured={"path": where, "replacements": count}
        )

    async def fs_list(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        raw = arguments["path"]
        recursive, most = arguments.get("recursive", False), arguments.get("max_entries", 1000)
        entries, truncated, where = await self._in_thread(raw, ctx, list_dir, raw, recursive, most)
        lines = [
            f"{e['name']}{'/' if e['type'] == 'directory' else ''}\t{e['size']}\t{e['mtime']}"
            for e in entries
        ]
        if truncated:
            lines.append(f"[stopped after {most} entries]")
        text = "\n".join(lines) if lines else "[empty directory]"
        structured = {"path": where, "entries": entries, "truncated": truncated}
        return ToolResult.text(text, structured=structured)

    async def fs_grep(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        raw = arguments["path"]
        pattern, ignore_case = arguments["pattern"], bool(arguments.get("ignore_case"))
        most = arguments.get("max_matches", 100)
        matches, truncated, searched = await self._in_thread(
            raw, ctx, grep, raw, pattern, ignore_case, arguments.get("glob"), most
        )
        lines = [f"{m['path']}:{m['line']}:{m['text']}" for m in matches]
        if truncated:
            lines.append(f"[stopped after {most} matches]")
        text = "\n".join(lines) if lines else f"[no matches in {searched} file(s)]"
        return ToolResult.text(
            text, structured={"matches": matches, "truncated": truncated, "files_searched": searched}
        )
