"""The file tools' directory walk and search: `fs_list`'s listing and `fs_grep`'s matching (worker thread).

Layering: under desktop_agent.tools.fs (which runs these functions in its thread pool, rule 4 there) and
over desktop_agent.confine (every open beneath a root fd). Rules 2, 5 and 6 of desktop_agent.tools.fs are
the ones that apply here: protected files and trees skipped, symlinks never followed and `.git` skipped
when searching, RE2 patterns (linear time).
"""

from __future__ import annotations

import fnmatch
import os
import stat
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import re2

from desktop_agent.confine import Confinement, scan_dir
from desktop_agent.tools.base import ToolFailure

__all__ = [
    "MAX_PATTERN_CHARS",
    "READ_FLAGS",
    "compile_pattern",
    "grep",
    "grep_file",
    "list_dir",
    "walk_entries",
]

GREP_LINE_CAP = 1 << 20
GREP_TEXT_CHARS = 500
MAX_PATTERN_CHARS = 64 * 1024
BINARY_SNIFF = 8192
MAX_WALK_DEPTH = 256  # deeper directories are not entered (each level holds one fd)
SKIP_DIRS = frozenset({".git"})
READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY  # O_NONBLOCK: a FIFO must not hang us


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def compile_pattern(pattern: str, ignore_case: bool) -> Any:
    """An RE2 regex (rule 6): linear-time matching, so no pattern can stall the node.

    Compiled in the worker thread (a large pattern takes RE2 a noticeable time to refuse), and refused
    outright above `MAX_PATTERN_CHARS`.
    """
    if len(pattern) > MAX_PATTERN_CHARS:
        raise ToolFailure(f"invalid regular expression: longer than {MAX_PATTERN_CHARS} characters")
    options = re2.Options()
    options.log_errors = False
    options.case_sensitive = not ignore_case
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        why = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else exc
        raise ToolFailure(
            f"invalid regular expression: {why} (fs_grep uses RE2 syntax: no backreferences or lookaround)"
        ) from None


def walk_entries(
    stop: threading.Event, conf: Confinement, top_fd: int, recursive: bool, skip_dirs: frozenset[str]
) -> Iterator[tuple[str, os.DirEntry[str], int]]:
    """(relative name, entry, fd of its directory) depth first, sorted by name (rule 5).

    Subdirectories are opened from their parent's fd with O_NOFOLLOW, so a directory swapped for a symlink
    mid-walk is skipped, never followed; protected trees are not entered (rule 2).
    """
    stack: list[tuple[Iterator[os.DirEntry[str]], int, str]] = [(scan_dir(top_fd), top_fd, "")]
    try:
        while stack and not stop.is_set():
            it, fd, rel = stack[-1]
            entry = next(it, None)
            if entry is None:
                stack.pop()
                if fd != top_fd:
                    os.close(fd)
                continue
            yield f"{rel}{entry.name}", entry, fd
            if (
                not recursive
                or entry.name in skip_dirs
                or len(stack) > MAX_WALK_DEPTH
                or not entry.is_dir(follow_symlinks=False)
            ):
                continue
            try:
                sub = os.open(
                    entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
                )
            except OSError:
                continue
            try:
                if conf.guard.skip_dir(os.fstat(sub)):
                    os.close(sub)
                    continue
                listing = scan_dir(sub)
            except OSError:
                os.close(sub)
                continue
            stack.append((listing, sub, f"{rel}{entry.name}/"))
    finally:
        for _, fd, _ in stack:
            if fd != top_fd:
                os.close(fd)


def list_dir(
    stop: threading.Event, conf: Confinement, raw: str, recursive: bool, max_entries: int
) -> tuple[list[dict[str, Any]], bool, str]:
    opened = conf.open(raw, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISDIR(opened.st.st_mode):
            raise NotADirectoryError(raw)
        out: list[dict[str, Any]] = []
        for rel, entry, _fd in walk_entries(stop, conf, opened.fd, recursive, frozenset()):
            if len(out) >= max_entries:
                return out, True, opened.path
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
        return out, False, opened.path
    finally:
        os.close(opened.fd)


def grep_file(
    stop: threading.Event, fd: int, path: str, rx: Any, matches: list[dict[str, Any]], max_matches: int
) -> bool:
    """Search one open file; True when `max_matches` was reached. Stops at the next line on `stop`."""
    with os.fdopen(os.dup(fd), "rb") as f:
        if b"\x00" in f.read(BINARY_SNIFF):
            return False
        f.seek(0)
        lineno = 1
        while not stop.is_set():
            piece = f.readline(GREP_LINE_CAP)
            if not piece:
                break
            text = piece.decode("utf-8", "replace").rstrip("\r\n")
            seen = matches and matches[-1]["path"] == path and matches[-1]["line"] == lineno
            if not seen and rx.search(text):
                if len(matches) >= max_matches:
                    return True
                matches.append({"path": path, "line": lineno, "text": text[:GREP_TEXT_CHARS]})
            if piece.endswith(b"\n"):
                lineno += 1
    return False


def grep(
    stop: threading.Event,
    conf: Confinement,
    raw: str,
    pattern: str,
    ignore_case: bool,
    glob: str | None,
    max_matches: int,
) -> tuple[list[dict[str, Any]], bool, int]:
    rx = compile_pattern(pattern, ignore_case)
    opened = conf.open(raw, READ_FLAGS)  # refuses a protected file or tree (rule 2)
    matches: list[dict[str, Any]] = []
    searched = 0
    try:
        if stat.S_ISREG(opened.st.st_mode):
            return matches, grep_file(stop, opened.fd, opened.path, rx, matches, max_matches), 1
        if not stat.S_ISDIR(opened.st.st_mode):
            raise ToolFailure(f"{raw}: not a regular file or directory")
        for rel, entry, dir_fd in walk_entries(stop, conf, opened.fd, True, SKIP_DIRS):
            if not entry.is_file(follow_symlinks=False):
                continue
            if glob and not (fnmatch.fnmatch(entry.name, glob) or fnmatch.fnmatch(rel, glob)):
                continue
            try:
                fd = os.open(entry.name, READ_FLAGS | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            except OSError:
                continue
            try:
                st = os.fstat(fd)
                path = os.path.join(opened.path, rel)
                if not stat.S_ISREG(st.st_mode) or conf.guard.problem(st, path) is not None:
                    continue
                searched += 1
                if grep_file(stop, fd, path, rx, matches, max_matches):
                    return matches, True, searched
            finally:
                os.close(fd)
        return matches, False, searched
    finally:
        os.close(opened.fd)
