"""The browser's access to local files: `file://` pages, their subresources and frames, and uploads.

Sits between `settings` (roots, protected paths) and `core`, whose context-wide route for `file:` hands
every file request here; Chromium itself never opens a local file. Blocking file I/O runs in a worker
thread (callers use `asyncio.to_thread`).

Rules:
1. A file is served only when its resolved path lies under an allowed root and it is a regular file
   of at most `MAX_FILE_BYTES`; a directory there (navigation only, never an upload) is served as a
   small HTML index without the entries rule 3 hides.
2. It is opened component by component beneath the root's directory fd with O_NOFOLLOW, so a directory
   swapped for a symlink during the walk makes the open fail instead of leaving the root.
3. The opened fd's identity (st_dev, st_ino) must not be one of the agent's own files (agent.toml,
   credentials.json, audit.log in its home) nor a file under agent.toml's `protected_paths`; identity
   catches hard links and any other name for the same file. The path must not lie under a protected
   path either.
4. What is served is read from that same fd, never from the path again.
"""

from __future__ import annotations

import html
import mimetypes
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from desktop_agent.confine import HOME_FILES
from desktop_agent.tools.browser.settings import BrowserSettings, file_url_path

__all__ = ["AGENT_FILES", "MAX_FILE_BYTES", "FileGuard", "FileRefused", "LocalFile"]

AGENT_FILES = HOME_FILES  # one list of the agent's own files, shared with the file tools
MAX_FILE_BYTES = 64 << 20
_SCAN_LIMIT = 20_000  # files of protected directories whose identities are collected
_SCAN_TTL_S = 2.0
_LISTING_LIMIT = 1000


class FileRefused(Exception):
    """The browser may not see this file; the message says why (shown to the caller)."""


@dataclass(frozen=True)
class LocalFile:
    path: Path
    body: bytes
    mime: str


def _identity(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


class FileGuard:
    """Rules 1-4 for one node: which local files the browser may read, and reading them safely."""

    def __init__(self, home: Path | None) -> None:
        self.home = home
        self._scan_cache: tuple[float, tuple[Path, ...], frozenset[tuple[int, int]]] | None = None

    def _protected_identities(self, settings: BrowserSettings) -> frozenset[tuple[int, int]]:
        found: set[tuple[int, int]] = set()
        if self.home is not None:
            for name in AGENT_FILES:
                try:
                    found.add(_identity(os.stat(self.home / name)))
                except OSError:
                    continue
        return frozenset(found | self._protected_tree(settings.protected_paths))

    def _protected_tree(self, protected: tuple[Path, ...]) -> frozenset[tuple[int, int]]:
        cached = self._scan_cache
        now = time.monotonic()
        if cached is not None and cached[1] == protected and now - cached[0] < _SCAN_TTL_S:
            return cached[2]
        found: set[tuple[int, int]] = set()
        for top in protected:
            try:
                found.add(_identity(os.stat(top)))
            except OSError:
                continue
            for dirpath, dirs, files in os.walk(top):
                if len(found) >= _SCAN_LIMIT:
                    dirs.clear()  # bounded: a huge protected tree is still refused by path (rule 3)
                    break
                for name in files[: max(0, _SCAN_LIMIT - len(found))]:
                    try:
                        found.add(_identity(os.stat(os.path.join(dirpath, name), follow_symlinks=False)))
                    except OSError:
                        continue
        result = frozenset(found)
        self._scan_cache = (now, protected, result)
        return result

    def _check_path(self, target: Path, settings: BrowserSettings) -> Path:
        if "file" not in settings.allowed_schemes:
            raise FileRefused("file: URLs are off on this node")
        root = settings.root_of(target)
        if root is None:
            raise FileRefused("outside the node's allowed roots")
        for top in settings.protected_paths:
            real_top = Path(os.path.realpath(os.path.expanduser(top)))
            if target == real_top or target.is_relative_to(real_top):
                raise FileRefused("a protected path of this node")
        if self.home is not None and target.parent == Path(os.path.realpath(self.home)):
            if target.name in AGENT_FILES:
                raise FileRefused("one of the agent's own files")
        return root

    def check_url(self, url: str, settings: BrowserSettings) -> None:
        """A quick refusal before navigating (the route handler applies all the rules again)."""
        target = file_url_path(url)
        if target is None:
            raise FileRefused("not a local file URL")
        self._check_path(target, settings)

    def read_url(self, url: str, settings: BrowserSettings) -> LocalFile:
        """Rules 1-4; blocking (run it in a thread)."""
        target = file_url_path(url)
        if target is None:
            raise FileRefused("not a local file URL")
        return self.read_path(target, settings, listing=True)

    def read_named(self, raw: str, settings: BrowserSettings) -> LocalFile:
        """A file named by a caller (relative paths resolve against the first root); blocking."""
        path = Path(os.path.expanduser(raw))
        if not path.is_absolute():
            if not settings.allowed_roots:
                raise FileRefused("a relative path and no allowed root")
            path = Path(settings.allowed_roots[0]) / path
        return self.read_path(Path(os.path.realpath(path)), settings)

    def read_path(self, target: Path, settings: BrowserSettings, *, listing: bool = False) -> LocalFile:
        root = self._check_path(target, settings)
        fd = _open_beneath(root, target, directory_ok=listing)
        try:
            st = os.fstat(fd)
            if listing and stat.S_ISDIR(st.st_mode):
                return self._listing(fd, target, settings)
            if not stat.S_ISREG(st.st_mode):
                raise FileRefused("not a regular file")
            if _identity(st) in self._protected_identities(settings):
                raise FileRefused("one of the agent's own files or a protected file (by identity)")
            if st.st_size > MAX_FILE_BYTES:
                raise FileRefused(f"larger than {MAX_FILE_BYTES >> 20} MiB")
            chunks = []
            left = MAX_FILE_BYTES + 1
            while left > 0:
                chunk = os.read(fd, min(left, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
            if left <= 0:
                raise FileRefused(f"larger than {MAX_FILE_BYTES >> 20} MiB")
        finally:
            os.close(fd)
        mime = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        return LocalFile(target, b"".join(chunks), mime)

    def _listing(self, fd: int, target: Path, settings: BrowserSettings) -> LocalFile:
        """A directory under a root as a small HTML index, without the files the browser may not see."""
        hidden = self._protected_identities(settings)
        names: list[tuple[str, bool]] = []
        more = 0
        with os.scandir(fd) as entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if _identity(st) in hidden:
                    continue
                if len(names) >= _LISTING_LIMIT:
                    more += 1
                    continue
                names.append((entry.name, stat.S_ISDIR(st.st_mode)))
        names.sort()
        return LocalFile(target, _listing_html(target, names, more), "text/html")


def _listing_html(target: Path, names: list[tuple[str, bool]], more: int) -> bytes:
    title = html.escape(str(target))
    items = []
    for name, is_dir in names:
        slash = "/" if is_dir else ""
        items.append(f"<li><a href='{quote(name)}{slash}'>{html.escape(name)}{slash}</a></li>")
    tail = f"<p>… and {more} more</p>" if more else ""
    page = f"<!doctype html><title>Index of {title}</title><h1>Index of {title}</h1>"
    return (page + f"<ul>{''.join(items)}</ul>{tail}").encode()


def _open_beneath(root: Path, target: Path, *, directory_ok: bool = False) -> int:
    """Rule 2: open `target` walking down from `root` without following any symlink."""
    parts = target.relative_to(root).parts
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(root, flags | os.O_DIRECTORY)
    except OSError as exc:
        raise FileRefused(f"cannot open the root: {exc.strerror}") from None
    if not parts:
        if directory_ok:
            return fd
        os.close(fd)
        raise FileRefused("a directory")
    try:
        for part in parts[:-1]:
            try:
                next_fd = os.open(part, flags | os.O_DIRECTORY, dir_fd=fd)
            except OSError as exc:
                raise FileRefused(f"cannot open {part!r}: {exc.strerror}") from None
            os.close(fd)
            fd = next_fd
        try:
            return os.open(parts[-1], flags | os.O_NONBLOCK, dir_fd=fd)
        except OSError as exc:
            raise FileRefused(f"cannot open it: {exc.strerror}") from None
    finally:
        os.close(fd)
