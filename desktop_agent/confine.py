"""Race-proof confinement of file access to the allowed roots, and the agent's protected files.

Sits under the file tools (`desktop_agent.tools.fs`), which do all their opening through a `Confinement`,
and beside the browser, which asks `access_refusal` before it lets a page load a `file://` URL. Above the
operating system only: no asyncio, no tool knowledge.

Rules:
1. Nothing is opened by a path string that was checked earlier. Every path is opened from a file
   descriptor of its allowed root: `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` where the kernel
   has it (syscall 437, through ctypes), else a component walk with `O_NOFOLLOW` on directory fds that
   resolves each symlink itself. A concurrent process swapping a directory for a symlink to outside
   therefore gains nothing: the kernel (or the walk) refuses to leave the root at the moment of the open.
2. Symlinks that stay inside the root work, relative or absolute (openat2 refuses absolute ones with
   EXDEV; the walk then resolves them, mapping an absolute target back into the same root). `..` may
   not climb above the root.
3. The agent's own files are protected by identity (st_dev, st_ino), not by name: `agent.toml`,
   `credentials.json`, `audit.log` and the home's lock, pid and socket files, plus every file and
   directory under the policy's `protected_paths`. A protected file is refused to every tool, also
   through a hard link or a symlink under another name; a directory inside a protected tree is never
   listed or searched. Creating `agent.toml` (or another protected name) in the home is refused too,
   judged by the identity of the directory fd actually written to.
4. Writes never go through a file with more than one hard link (it is also someone else's file). An
   overwrite is a temporary file created in the same directory fd, fsync'd, then renamed over the name
   within that fd (`renameat`); the inode that was there before is never written.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from desktop_agent.tools.base import ToolFailure

__all__ = [
    "HOME_FILES",
    "Confinement",
    "Guard",
    "Openat2",
    "Opened",
    "access_refusal",
    "locate",
    "scan_dir",
    "stat_refusal",
]

HOME_FILES = ("agent.toml", "credentials.json", "audit.log", "audit.head")  # audit.head: the saved chain head
_HOME_SUFFIXES = (".lock", ".pid", ".sock")
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_BENEATH = 0x08
SYS_OPENAT2 = 437  # the same number on every Linux architecture (unified syscall table since 5.6)
MAX_SYMLINKS = 40
MAX_TREE_SCAN = 100_000  # files of protected trees looked at when a hard-linked file turns up
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
# Linux opens "just a handle" with O_PATH; elsewhere a non-blocking read-only open (no FIFO hang).
O_HANDLE = getattr(os, "O_PATH", os.O_RDONLY | os.O_NONBLOCK)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class Openat2:
    """`openat2(2)` through ctypes; `available` is False where the kernel (or a seccomp filter) lacks it."""

    def __init__(self, enabled: bool = True) -> None:
        self.available = False
        self._syscall = None
        if not enabled or not os.uname().sysname == "Linux":
            return
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            self._syscall = libc.syscall
            self._syscall.restype = ctypes.c_long
            fd = self.open(os.open("/", O_HANDLE | os.O_CLOEXEC), ".", O_HANDLE, 0, close_dir=True)
            os.close(fd)
            self.available = True

    def open(self, dir_fd: int, path: str, flags: int, mode: int, *, close_dir: bool = False) -> int:
        """An fd for `path` beneath `dir_fd`; OSError(EXDEV) if resolving it would leave `dir_fd`."""
        if self._syscall is None:
            raise OSError(errno.ENOSYS, "openat2 unavailable")
        how = _OpenHow(
            flags | os.O_CLOEXEC, mode if flags & os.O_CREAT else 0, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS
        )
        try:
            fd = self._syscall(
                ctypes.c_long(SYS_OPENAT2),
                ctypes.c_int(dir_fd),
                ctypes.c_char_p(os.fsencode(path)),
                ctypes.byref(how),
                ctypes.c_size_t(ctypes.sizeof(how)),
            )
            if fd < 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), path)
            return int(fd)
        finally:
            if close_dir:
                os.close(dir_fd)


def _identity(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


def _fd_path(fd: int, fallback: str) -> str:
    """Where the kernel says `fd` is now (Linux /proc), else `fallback`."""
    try:
        where = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return fallback
    return where if where.startswith("/") and not where.endswith(" (deleted)") else fallback


def _inside(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


@dataclass
class Guard:
    """Rule 3: which files and trees no tool may touch, by identity, looked up fresh for each call."""

    home: Path
    protected_paths: tuple[Path, ...] = ()
    _home_dir: tuple[int, int] | None = field(default=None, init=False)
    _files: set[tuple[int, int]] = field(default_factory=set, init=False)
    _trees: list[tuple[str, tuple[int, int]]] = field(default_factory=list, init=False)
    _tree_files: set[tuple[int, int]] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        with contextlib.suppress(OSError):
            self._home_dir = _identity(os.stat(self.home))
            with os.scandir(self.home) as it:
                for entry in it:
                    with contextlib.suppress(OSError):
                        st = entry.stat(follow_symlinks=False)
                        if self._home_name(entry.name) or stat.S_ISSOCK(st.st_mode):
                            self._files.add(_identity(st))
        for raw in self.protected_paths:
            real = os.path.realpath(raw)
            with contextlib.suppress(OSError):
                st = os.stat(real)
                if stat.S_ISDIR(st.st_mode):
                    self._trees.append((real, _identity(st)))
                else:
                    self._files.add(_identity(st))

    @staticmethod
    def _home_name(name: str) -> bool:
        return name in HOME_FILES or name.endswith(_HOME_SUFFIXES)

    def _in_tree_files(self, ident: tuple[int, int]) -> bool:
        if self._tree_files is None:
            self._tree_files = set()
            for top, _ in self._trees:
                for dirpath, _dirs, files in os.walk(top):
                    if len(self._tree_files) > MAX_TREE_SCAN:
                        break
                    for name in files:
                        with contextlib.suppress(OSError):
                            self._tree_files.add(_identity(os.lstat(os.path.join(dirpath, name))))
        return ident in self._tree_files

    def problem(self, st: os.stat_result, where: str) -> str | None:
        """Why a file or directory with this stat, now at `where`, is off limits; None when it is not."""
        ident = _identity(st)
        if ident in self._files:
            return "one of the agent's own files"
        if any(ident == tid or _inside(where, top) for top, tid in self._trees):
            return "inside a protected path"
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and self._trees and self._in_tree_files(ident):
            return "a hard link to a file inside a protected path"
        return None

    def skip_dir(self, st: os.stat_result) -> bool:
        """A directory met during a walk that must not be entered."""
        return any(_identity(st) == tid for _, tid in self._trees)

    def refuse_name(self, dir_st: os.stat_result, name: str) -> bool:
        """Creating or replacing `name` in this directory would change one of the agent's own files."""
        return self._home_dir is not None and _identity(dir_st) == self._home_dir and self._home_name(name)


@dataclass(frozen=True)
class Opened:
    """An open file or directory: its fd (the caller closes it), stat and where it is."""

    fd: int
    st: os.stat_result
    path: str


class Confinement:
    """Opens caller paths for one call: beneath the roots (rules 1-2), never a protected file (rule 3).

    Built per call from the policy snapshot; `close()` (or `with`) releases the roots' fds.
    """

    def __init__(self, roots: tuple[Path, ...], guard: Guard, opener: Openat2) -> None:
        self.roots = tuple(str(r) for r in roots)
        self.guard = guard
        self._opener = opener
        self._root_fds: dict[str, int] = {}

    def __enter__(self) -> Confinement:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for fd in self._root_fds.values():
            os.close(fd)
        self._root_fds.clear()

    # -- locating ----------------------------------------------------------------------------------
    def locate(self, raw: str) -> tuple[str, str]:
        return locate(raw, self.roots)

    def outside(self, raw: str) -> ToolFailure:
        return _outside(raw, self.roots)

    def _root_fd(self, root: str) -> int:
        fd = self._root_fds.get(root)
        if fd is None:
            fd = os.open(root, O_HANDLE | os.O_DIRECTORY | os.O_CLOEXEC)
            self._root_fds[root] = fd
        return fd

    # -- opening -----------------------------------------------------------------------------------
    def open(self, raw: str, flags: int, mode: int = 0o666) -> Opened:
        """Open `raw` beneath its root with `flags`; refuse protected files (ToolFailure)."""
        root, rel = self.locate(raw)
        fd = self._open_beneath(raw, root, rel, flags, mode)
        try:
            st = os.fstat(fd)
            where = _fd_path(fd, os.path.join(root, rel))
            self.check(raw, st, where)
        except BaseException:
            os.close(fd)
            raise
        return Opened(fd, st, where)

    def check(self, raw: str, st: os.stat_result, where: str) -> None:
        problem = self.guard.problem(st, where)
        if problem is not None:
            raise ToolFailure(f"{raw}: {problem}; it cannot be used by any tool")

    def _open_beneath(self, raw: str, root: str, rel: str, flags: int, mode: int) -> int:
        root_fd = self._root_fd(root)
        if self._opener.available:
            try:
                return self._opener.open(root_fd, rel, flags, mode)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ELOOP):
                    raise
                # EXDEV: an absolute symlink (or `..`) on the way; the walk decides whether it stays inside.
        return self._walk(raw, root, root_fd, rel, flags, mode)

    def _walk(self, raw: str, root: str, root_fd: int, rel: str, flags: int, mode: int) -> int:
        """Rule 1's fallback: one component at a time with O_NOFOLLOW, symlinks resolved here."""
        stack: list[int] = []  # fds of the directories below the root we are in
        todo = [p for p in rel.split("/") if p not in ("", ".")][::-1]
        links = 0
        try:
            while True:
                cur = stack[-1] if stack else root_fd
                if not todo:
                    if flags & os.O_CREAT:
                        raise IsADirectoryError(errno.EISDIR, "is a directory", raw)
                    return os.open(".", flags | os.O_CLOEXEC, mode, dir_fd=cur)
                name = todo.pop()
                if name == "..":
                    if not stack:
                        raise self.outside(raw)
                    os.close(stack.pop())
                    continue
                last = not todo
                try:
                    st = os.stat(name, dir_fd=cur, follow_symlinks=False)
                except FileNotFoundError:
                    if last and flags & os.O_CREAT:
                        return os.open(name, flags | _NOFOLLOW, mode, dir_fd=cur)
                    raise
                if stat.S_ISLNK(st.st_mode):
                    links += 1
                    if links > MAX_SYMLINKS:
                        raise OSError(errno.ELOOP, "too many levels of symbolic links", raw)
                    target = os.readlink(name, dir_fd=cur)
                    parts = [p for p in target.split("/") if p not in ("", ".")]
                    if target.startswith("/"):
                        if not _inside(target, root):
                            raise self.outside(raw)
                        while stack:
                            os.close(stack.pop())
                        parts = [p for p in target[len(root) :].split("/") if p not in ("", ".")]
                    todo.extend(parts[::-1])
                    continue
                if last:
                    return os.open(name, flags | _NOFOLLOW, mode, dir_fd=cur)
                stack.append(os.open(name, O_HANDLE | os.O_DIRECTORY | _NOFOLLOW, dir_fd=cur))
        finally:
            for fd in stack:
                os.close(fd)

    def open_parent(self, raw: str) -> tuple[Opened, str]:
        """The directory a write to `raw` goes into (opened beneath its root) and the final name.

        A final component that is a symlink staying inside the roots is followed (the write goes to its
        target, as a plain open would); one that points outside is refused.
        """
        root, rel = self.locate(raw)
        for _ in range(MAX_SYMLINKS):
            parent_rel, name = os.path.split(rel)
            if name in ("", ".", ".."):
                raise ToolFailure(f"{raw}: is a directory")
            try:
                parent = self._open_beneath(raw, root, parent_rel or ".", O_HANDLE | os.O_DIRECTORY, 0)
            except (FileNotFoundError, NotADirectoryError):
                raise ToolFailure(f"{raw}: parent directory does not exist") from None
            try:
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            except BaseException:
                os.close(parent)
                raise
            if st is None or not stat.S_ISLNK(st.st_mode):
                try:
                    dir_st = os.fstat(parent)
                    where = _fd_path(parent, os.path.join(root, parent_rel))
                    self.check(raw, dir_st, where)
                    if self.guard.refuse_name(dir_st, name):
                        raise ToolFailure(
                            f"{raw}: one of the agent's own files; it cannot be used by any tool"
                        )
                except BaseException:
                    os.close(parent)
                    raise
                return Opened(parent, dir_st, where), name
            try:
                target = os.readlink(name, dir_fd=parent)
            finally:
                os.close(parent)
            if target.startswith("/"):
                root, rel = self.locate(target)  # may be another root; outside -> refused
            else:
                rel = os.path.join(parent_rel, target)
                norm = os.path.normpath(rel)
                if norm == ".." or norm.startswith("../"):
                    raise self.outside(raw)
        raise ToolFailure(f"{raw}: too many levels of symbolic links")


def _outside(raw: str, roots: tuple[str, ...]) -> ToolFailure:
    return ToolFailure(f"{raw}: outside the allowed roots ({', '.join(roots)}); refused")


def locate(raw: str, roots: tuple[str, ...]) -> tuple[str, str]:
    """(root, path relative to it) for a caller's path; ToolFailure when it is not inside a root.

    The match is textual (the open that follows is what enforces rule 1); a path that names a root
    only through a symlink outside (e.g. `/tmp/link` -> root) is matched by its real path. A relative
    path joins the first root; a `..` that textually climbs above the root is refused here already.
    """
    if "\x00" in raw:
        raise ToolFailure("path contains a NUL character")
    expanded = os.path.expanduser(raw)
    absolute = expanded if os.path.isabs(expanded) else os.path.join(roots[0], expanded)
    for attempt in range(2):
        if attempt:
            try:
                absolute = os.path.realpath(absolute)
            except OSError:  # a concurrent change caught realpath mid-way: outside, as far as we know
                break
        for root in roots:
            if _inside(absolute, root):
                rel = absolute[len(root) :].lstrip("/")
                norm = os.path.normpath(rel) if rel else "."
                if norm == ".." or norm.startswith("../"):
                    raise _outside(raw, roots)
                return root, rel or "."
    raise _outside(raw, roots)


def scan_dir(fd: int) -> Iterator[os.DirEntry[str]]:
    """The entries of an open directory, sorted by name, each with its lstat already cached.

    `os.scandir(fd)` reads a duplicate of `fd` that is closed when the scan ends, so an entry's
    `stat()` must be fetched while it is open; entries that vanished meanwhile are left out.
    """
    found: list[os.DirEntry[str]] = []
    with os.scandir(fd) as it:
        for entry in it:
            with contextlib.suppress(OSError):
                entry.stat(follow_symlinks=False)
                found.append(entry)
    found.sort(key=lambda e: e.name)
    return iter(found)


def access_refusal(
    path: str | os.PathLike[str],
    roots: tuple[Path, ...],
    home: Path,
    protected_paths: tuple[Path, ...] = (),
    opener: Openat2 | None = None,
) -> str | None:
    """Why a tool may not read `path` (outside the roots, one of the agent's own files, inside a
    protected path, a hard link to one), or None when it may. For the browser's `file://` guard.

    The answer comes from really opening the path under rules 1-3 (then closing it), so a symlink or a
    hard link under an innocent name is judged by what it reaches. A missing file gets None only when it
    is inside the roots (the browser then shows its own not-found page).
    """
    with Confinement(roots, Guard(home, protected_paths), opener or Openat2()) as conf:
        try:
            opened = conf.open(os.fspath(path), O_HANDLE)
        except ToolFailure as exc:
            return str(exc)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return f"{os.fspath(path)}: {exc.strerror or exc}"
        os.close(opened.fd)
        return None


def stat_refusal(
    st: os.stat_result, where: str, home: Path, protected_paths: tuple[Path, ...] = ()
) -> str | None:
    """Why a file already opened (its `fstat` and its path `where`) is off limits under rule 3, or None.

    For a caller that holds the file itself (e.g. the browser intercepting a `file://` subresource it has
    opened): judged by identity, so a hard link or a symlink under another name is caught. Says nothing
    about the roots; `access_refusal` does both.
    """
    return Guard(home, protected_paths).problem(st, where)
