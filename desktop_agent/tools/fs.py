"""The file tools: `fs_read`, `fs_write`, `fs_edit`, `fs_list`, `fs_grep`, confined to the allowed roots.

Sits under the engine, which has validated the arguments against the manifest and checked the owner's
policy; the engine builds one `FsTools` per agent and takes its functions from `tools()`.

Rules:
1. Every path is confined: `~` expanded, a relative path joined to the first allowed root, then
   `os.path.realpath` (symlinks resolved) must lie inside a root by `os.path.commonpath` (so `/home/ab`
   is not inside `/home/a`). Anything else is a `ToolFailure` (an isError result), never touched.
2. No tool can change the node's policy: writes to the agent's own `agent.toml`, `credentials.json` and
   `audit.log` (or a hard link to them) are refused, and `credentials.json` is never read or searched.
3. Writes to one path are serialised by a per-path asyncio lock, so concurrent writes never interleave;
   an overwrite is atomic (temporary file in the same directory, fsync, `os.replace`).
4. Blocking file I/O runs in threads; a cancelled call tells its thread to stop at the next step.
5. Directory walks never follow symlinks (no escapes, no loops) and skip `.git` when searching.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import fnmatch
import mimetypes
import os
import re
import select
import stat
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from desktop_agent.tools.base import ToolContext, ToolFailure, ToolFunc, ToolResult

__all__ = ["PROTECTED_FILES", "FsTools", "resolve_in_roots"]

PROTECTED_FILES = ("agent.toml", "credentials.json", "audit.log")
SECRET_FILES = ("credentials.json",)
DEFAULT_READ_LIMIT = 1 << 20
GREP_LINE_CAP = 1 << 20
GREP_TEXT_CHARS = 500
BINARY_SNIFF = 8192
SKIP_DIRS = frozenset({".git"})
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"%PDF-", "application/pdf"),
    (b"PK\x03\x04", "application/zip"),
    (b"\x7fELF", "application/x-executable"),
)
T = TypeVar("T")


def resolve_in_roots(raw: str, roots: tuple[Path, ...]) -> Path:
    """The real path of `raw` if it lies inside one of `roots` (rule 1), else ToolFailure."""
    if "\x00" in raw:
        raise ToolFailure("path contains a NUL character")
    expanded = os.path.expanduser(raw)
    joined = expanded if os.path.isabs(expanded) else os.path.join(roots[0], expanded)
    real = os.path.realpath(joined)
    for root in roots:
        root_s = str(root)
        if os.path.commonpath([real, root_s]) == root_s:
            return Path(real)
    allowed = ", ".join(str(r) for r in roots)
    raise ToolFailure(f"{raw}: outside the allowed roots ({allowed}); refused")


def _protected(home: Path, names: tuple[str, ...]) -> list[Path]:
    return [Path(os.path.realpath(home / name)) for name in names]


def _check_not_protected(real: Path, home: Path, names: tuple[str, ...], raw: str, verb: str) -> None:
    for guarded in _protected(home, names):
        same = real == guarded
        if not same and real.exists() and guarded.exists():
            with contextlib.suppress(OSError):
                same = os.path.samefile(real, guarded)
        if same:
            raise ToolFailure(f"{raw}: the agent's own {guarded.name} cannot be {verb} by a tool")


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


async def _in_thread(raw: str, func: Callable[..., T], *args: Any) -> T:
    """Run blocking `func(stop, *args)` in a thread (rule 4), mapping OSError to ToolFailure."""
    stop = threading.Event()
    try:
        return await asyncio.to_thread(func, stop, *args)
    except asyncio.CancelledError:
        stop.set()
        raise
    except OSError as exc:
        raise _failure(raw, exc) from exc


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


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


def _check_writable(real: Path, raw: str) -> os.stat_result | None:
    try:
        st = os.stat(real)
    except FileNotFoundError:
        if not real.parent.is_dir():
            raise ToolFailure(f"{raw}: parent directory does not exist") from None
        return None
    if stat.S_ISDIR(st.st_mode):
        raise ToolFailure(f"{raw}: is a directory")
    # Mode bits too: root passes os.access on a 0444 file, yet the owner marked it read-only.
    if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o222 == 0 or not os.access(real, os.W_OK):
        raise ToolFailure(f"{raw}: file is read-only (or not a regular file); not written")
    return st


def _atomic_replace(real: Path, data: bytes, st: os.stat_result | None) -> None:
    fd, tmp = tempfile.mkstemp(dir=real.parent, prefix=f".{real.name}.", suffix=".cortex-tmp")
    try:
        _write_all(fd, data)
        os.fchmod(fd, stat.S_IMODE(st.st_mode) if st else 0o666 & ~_umask())
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, real)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_file(stop: threading.Event, real: Path, raw: str, data: bytes, mode: str) -> int:
    st = _check_writable(real, raw)
    if mode == "overwrite":
        _atomic_replace(real, data, st)
        return len(data)
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    flags |= os.O_APPEND if mode == "append" else os.O_EXCL
    try:
        fd = os.open(real, flags, 0o666)
    except FileExistsError:
        raise ToolFailure(f"{raw}: already exists (mode create)") from None
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(data)


def _sniff_mime(real: Path, data: bytes) -> str:
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    return mimetypes.guess_type(real.name)[0] or "application/octet-stream"


def _read_slice(stop: threading.Event, real: Path, raw: str, offset: int, limit: int) -> tuple[bytes, int]:
    fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # O_NONBLOCK: a FIFO must not hang us
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ToolFailure(f"{raw}: is a directory (use fs_list)")
        if stat.S_ISFIFO(st.st_mode):
            return _read_stream(stop, fd, offset, limit)
        if not stat.S_ISREG(st.st_mode):
            raise ToolFailure(f"{raw}: not a regular file")
        return os.pread(fd, min(limit, max(0, st.st_size - offset)), offset), st.st_size
    finally:
        os.close(fd)


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


def _entries(
    stop: threading.Event, top: Path, recursive: bool, skip_dirs: frozenset[str]
) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """(relative name, entry) depth first, sorted by name, never following symlinks (rule 5)."""

    def listing(path: Path | str, rel: str) -> Iterator[tuple[str, os.DirEntry[str]]]:
        try:
            with os.scandir(path) as it:
                found = sorted(it, key=lambda e: e.name)
        except OSError:
            if rel == "":
                raise
            return iter(())
        return iter([(f"{rel}{e.name}", e) for e in found])

    stack = [listing(top, "")]
    while stack and not stop.is_set():
        try:
            rel, entry = next(stack[-1])
        except StopIteration:
            stack.pop()
            continue
        yield rel, entry
        if recursive and entry.is_dir(follow_symlinks=False) and entry.name not in skip_dirs:
            stack.append(listing(entry.path, rel + "/"))


def _list_dir(
    stop: threading.Event, real: Path, recursive: bool, max_entries: int
) -> tuple[list[dict[str, Any]], bool]:
    if not real.is_dir():
        raise NotADirectoryError(str(real))
    out: list[dict[str, Any]] = []
    for rel, entry in _entries(stop, real, recursive, frozenset()):
        if len(out) >= max_entries:
            return out, True
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        kind = (
            "symlink" if stat.S_ISLNK(st.st_mode)
            else "directory" if stat.S_ISDIR(st.st_mode)
            else "file" if stat.S_ISREG(st.st_mode)
            else "other"
        )  # fmt: skip
        out.append({"name": rel, "type": kind, "size": st.st_size, "mtime": _rfc3339(st.st_mtime)})
    return out, False


def _grep(
    stop: threading.Event,
    real: Path,
    rx: re.Pattern[str],
    glob: str | None,
    max_matches: int,
    hidden: list[Path],
) -> tuple[list[dict[str, Any]], bool, int]:
    if real.is_file():
        files: Iterator[tuple[str, str]] = iter([(real.name, str(real))])
    else:
        files = (
            (rel, entry.path)
            for rel, entry in _entries(stop, real, True, SKIP_DIRS)
            if entry.is_file(follow_symlinks=False)
        )
    matches: list[dict[str, Any]] = []
    searched = 0
    for rel, path in files:
        if glob and not (fnmatch.fnmatch(os.path.basename(rel), glob) or fnmatch.fnmatch(rel, glob)):
            continue
        if Path(path) in hidden:
            continue
        try:
            f = open(path, "rb")
        except OSError:
            continue
        with f:
            if b"\x00" in f.read(BINARY_SNIFF):
                continue
            f.seek(0)
            searched += 1
            lineno = 1
            while not stop.is_set():
                piece = f.readline(GREP_LINE_CAP)
                if not piece:
                    break
                text = piece.decode("utf-8", "replace").rstrip("\r\n")
                seen = matches and matches[-1]["path"] == path and matches[-1]["line"] == lineno
                if not seen and rx.search(text):
                    if len(matches) >= max_matches:
                        return matches, True, searched
                    matches.append({"path": path, "line": lineno, "text": text[:GREP_TEXT_CHARS]})
                if piece.endswith(b"\n"):
                    lineno += 1
    return matches, False, searched


class FsTools:
    """The five file tools with their per-path write locks (rule 3)."""

    def __init__(self) -> None:
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def tools(self) -> dict[str, ToolFunc]:
        return {
            "fs_read": self.fs_read,
            "fs_write": self.fs_write,
            "fs_edit": self.fs_edit,
            "fs_list": self.fs_list,
            "fs_grep": self.fs_grep,
        }

    def _lock(self, real: Path) -> asyncio.Lock:
        lock = self._locks.get(str(real))
        if lock is None:
            lock = asyncio.Lock()
            self._locks[str(real)] = lock
        return lock

    async def fs_read(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        raw, offset = arguments["path"], arguments.get("offset", 0)
        limit = arguments.get("limit", DEFAULT_READ_LIMIT)
        most = ctx.policy.limits.max_read_bytes
        if limit > most:
            raise ToolFailure(
                f"limit {limit} is above this node's read limit of {most} bytes; read in slices"
            )
        real = resolve_in_roots(raw, ctx.policy.allowed_roots)
        _check_not_protected(real, ctx.home, SECRET_FILES, raw, "read")
        data, size = await _in_thread(raw, _read_slice, real, raw, offset, limit)
        if len(data) > BIG_SLICE:  # decoding megabytes would stall the node's other calls
            result, end = await asyncio.to_thread(_slice_result, real, data, offset, size)
        else:
            result, end = _slice_result(real, data, offset, size)
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
        real = resolve_in_roots(raw, ctx.policy.allowed_roots)
        _check_not_protected(real, ctx.home, PROTECTED_FILES, raw, "written")
        async with self._lock(real):
            written = await _in_thread(raw, _write_file, real, raw, data, mode)
        structured = {"path": str(real), "bytes_written": written}
        return ToolResult.text(f"wrote {written} bytes to {real} ({mode})", structured=structured)

    async def fs_edit(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        raw, old, new = arguments["path"], arguments["old_text"], arguments["new_text"]
        expected = arguments.get("expected_replacements", 1)
        real = resolve_in_roots(raw, ctx.policy.allowed_roots)
        _check_not_protected(real, ctx.home, PROTECTED_FILES, raw, "edited")
        most = ctx.policy.limits.max_write_bytes

        def edit(stop: threading.Event) -> int:
            st = _check_writable(real, raw)
            if st is None:
                raise FileNotFoundError(str(real))
            if st.st_size > most:
                raise ToolFailure(
                    f"{raw}: {st.st_size} bytes is above this node's write limit of {most} bytes"
                )
            try:
                text = real.read_bytes().decode("utf-8")
            except UnicodeDecodeError:
                raise ToolFailure(f"{raw}: not a UTF-8 text file; not edited") from None
            found = text.count(old)
            if found != expected:
                raise ToolFailure(
                    f"{raw}: old_text found {found} time(s), expected {expected}; nothing changed"
                    + (" (add surrounding lines to make it unique)" if found > expected else "")
                )
            _atomic_replace(real, text.replace(old, new).encode("utf-8", "surrogatepass"), st)
            return found

        async with self._lock(real):
            count = await _in_thread(raw, edit)
        return ToolResult.text(
            f"replaced {count} occurrence(s) in {real}", structured={"path": str(real), "replacements": count}
        )

    async def fs_list(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        raw = arguments["path"]
        real = resolve_in_roots(raw, ctx.policy.allowed_roots)
        recursive, most = arguments.get("recursive", False), arguments.get("max_entries", 1000)
        entries, truncated = await _in_thread(raw, _list_dir, real, recursive, most)
        lines = [
            f"{e['name']}{'/' if e['type'] == 'directory' else ''}\t{e['size']}\t{e['mtime']}"
            for e in entries
        ]
        if truncated:
            lines.append(f"[stopped after {most} entries]")
        text = "\n".join(lines) if lines else "[empty directory]"
        structured = {"path": str(real), "entries": entries, "truncated": truncated}
        return ToolResult.text(text, structured=structured)

    async def fs_grep(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        raw = arguments["path"]
        try:
            rx = re.compile(arguments["pattern"], re.IGNORECASE if arguments.get("ignore_case") else 0)
        except re.error as exc:
            raise ToolFailure(f"invalid regular expression: {exc}") from exc
        real = resolve_in_roots(raw, ctx.policy.allowed_roots)
        hidden = _protected(ctx.home, SECRET_FILES)
        if real in hidden:
            raise ToolFailure(f"{raw}: the agent's own credentials cannot be searched by a tool")
        if not real.exists():
            raise ToolFailure(f"{raw}: no such file or directory")
        most = arguments.get("max_matches", 100)
        matches, truncated, searched = await _in_thread(
            raw, _grep, real, rx, arguments.get("glob"), most, hidden
        )
        lines = [f"{m['path']}:{m['line']}:{m['text']}" for m in matches]
        if truncated:
            lines.append(f"[stopped after {most} matches]")
        text = "\n".join(lines) if lines else f"[no matches in {searched} file(s)]"
        return ToolResult.text(
            text, structured={"matches": matches, "truncated": truncated, "files_searched": searched}
        )
