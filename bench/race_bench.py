"""Swap-race benchmark: file tools against a real concurrent process swapping a directory for a symlink.

Where it sits: outside the product, run by ``python3 -m bench`` (``main(quick)``) and, smaller, by
tests/test_confine.py. A child process keeps exchanging ``<root>/sw`` (a real directory) with a symlink
to a directory outside the root (`renameat2(RENAME_EXCHANGE)`, so ``sw`` always exists and is a symlink
about half of the time). Meanwhile `fs_read`s of ``sw/f.txt`` and `fs_write`s of ``sw/w<N>.txt`` run
through the agent's real `FsTools`. An escape is a read that returns the outside file's content or a
write that lands outside. The reference, measured in the same run against the same swapper, is the
check-then-open a path-string implementation does (realpath inside the root, then open by name), which
is what the file tools did before issue 13.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from desktop_agent.policy import Policy
from desktop_agent.tools.base import ToolContext, ToolFailure
from desktop_agent.tools.fs import FsTools

__all__ = ["RaceResult", "main", "naive_race", "race"]

INSIDE = "inside-content"
OUTSIDE = "OUTSIDE-SECRET"
_SWAPPER = textwrap.dedent(
    """
    import ctypes, os, sys
    a, b, ready = sys.argv[1], sys.argv[2], sys.argv[3]
    libc = ctypes.CDLL(None, use_errno=True)
    exchange = getattr(libc, "renameat2", None)
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    n = 0
    open(ready, "w").close()
    while True:
        if exchange is not None:
            if exchange(AT_FDCWD, a.encode(), AT_FDCWD, b.encode(), RENAME_EXCHANGE) != 0:
                exchange = None
                continue
        else:  # no renameat2: the slower two-step swap
            os.rename(a, a + ".tmp"); os.rename(b, a); os.rename(a + ".tmp", b)
        n += 1
        if n % 100 == 0:  # published atomically: a reader never sees a half-written count
            with open(ready + ".tmp", "w") as f:
                f.write(str(n))
            os.replace(ready + ".tmp", ready)
    """
)


@dataclass
class RaceResult:
    reads: int
    read_escapes: int
    writes: int
    write_escapes: int
    swaps: int
    seconds: float
    reads_ok: int = 0  # reads that returned the inside file: the tools keep working during the race

    @property
    def escapes(self) -> int:
        return self.read_escapes + self.write_escapes


class _Scene:
    """root/sw (directory with f.txt) exchanged with root/sw.link -> outside (with its own f.txt)."""

    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "root"
        self.outside = tmp / "outside"
        self.home = self.root / ".cortex"
        for d in (self.root / "sw", self.outside, self.home):
            d.mkdir(parents=True, exist_ok=True)
        (self.root / "sw" / "f.txt").write_text(INSIDE)
        (self.outside / "f.txt").write_text(OUTSIDE)
        link = self.root / "sw.link"
        if not link.is_symlink():
            link.symlink_to(self.outside)
        self.ready = tmp / "swaps"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> _Scene:
        self.ready.unlink(missing_ok=True)
        sw, link = str(self.root / "sw"), str(self.root / "sw.link")
        cmd = [sys.executable, "-c", _SWAPPER, sw, link, str(self.ready)]
        self.proc = subprocess.Popen(cmd)
        deadline = time.monotonic() + 15
        while self.swaps() < 100 and time.monotonic() < deadline:  # bounded: the swapper is racing
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
        # Leave sw as the real directory again, whichever way round the swapper stopped.
        sw, link = self.root / "sw", self.root / "sw.link"
        if sw.is_symlink():
            tmp = self.root / "sw.swap"
            sw.rename(tmp)
            link.rename(sw)
            tmp.rename(link)

    def swaps(self) -> int:
        with contextlib.suppress(OSError, ValueError):
            return int(self.ready.read_text() or 0)
        return 0

    def landed_outside(self) -> int:
        return sum(1 for p in self.outside.iterdir() if p.name != "f.txt") + (
            (self.outside / "f.txt").read_text() != OUTSIDE
        )


async def race(tmp: Path, reads: int, writes: int, *, openat2: bool = True) -> RaceResult:
    """Run `reads` fs_read and `writes` fs_write calls through the real FsTools during the swap race."""
    scene = _Scene(tmp)
    tools = FsTools(openat2=openat2)
    funcs = tools.tools()
    policy = Policy(allowed_roots=(scene.root.resolve(),))
    ctx = ToolContext(request_id=1, caller={}, home=scene.home, policy=policy)
    read_escapes = reads_ok = 0
    started = time.monotonic()
    try:
        with scene:
            for _ in range(reads):
                try:
                    result = await funcs["fs_read"]({"path": "sw/f.txt"}, ctx)
                except ToolFailure:
                    continue
                read_escapes += OUTSIDE in str(result.content)
                reads_ok += INSIDE in str(result.content)
            for i in range(writes):
                with contextlib.suppress(ToolFailure):
                    await funcs["fs_write"]({"path": f"sw/w{i}.txt", "content": "x", "mode": "create"}, ctx)
                with contextlib.suppress(ToolFailure):
                    await funcs["fs_write"]({"path": "sw/f.txt", "content": INSIDE}, ctx)
            swaps = scene.swaps()
    finally:
        tools.close()
    elapsed = time.monotonic() - started
    return RaceResult(reads, read_escapes, writes, scene.landed_outside(), swaps, elapsed, reads_ok)


async def naive_race(tmp: Path, reads: int, writes: int) -> RaceResult:
    """The reference: check the real path on the event loop, then open by name in a thread, as the
    file tools did before (a time-of-check/time-of-use gap)."""
    scene = _Scene(tmp)
    root = str(scene.root.resolve())

    def checked(rel: str) -> str | None:
        path = os.path.join(root, rel)
        try:
            real = os.path.realpath(path)
        except OSError:  # the swap caught realpath between its lstat and its readlink
            return None
        return path if os.path.commonpath([real, root]) == root else None

    read_escapes = 0
    started = time.monotonic()
    with scene:
        for _ in range(reads):
            path = checked("sw/f.txt")
            if path is None:
                continue
            with contextlib.suppress(OSError):
                read_escapes += OUTSIDE in await asyncio.to_thread(Path(path).read_text)
        for i in range(writes):
            path = checked(f"sw/w{i}.txt")
            if path is not None:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(Path(path).write_text, "x")
        swaps = scene.swaps()
    return RaceResult(reads, read_escapes, writes, scene.landed_outside(), swaps, time.monotonic() - started)


def _rows(ours: RaceResult, ref: RaceResult, mode: str) -> list[dict[str, Any]]:
    return [
        {
            "scenario": f"swap race: escapes in {ours.reads} reads + {ours.writes} writes ({mode})",
            "ours": ours.escapes,
            "reference": ref.escapes,
            "unit": "escapes",
            "higher_is_better": False,
            "target": "0",
            "note": f"reference = realpath check then open by name; {ours.swaps} swaps during ours",
        }
    ]


async def _run(quick: bool) -> list[dict[str, Any]]:
    n = 150
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="race-bench-") as tmp:
        ref = await naive_race(Path(tmp) / "naive", n, n)
        modes = [("openat2", True)] if quick else [("openat2", True), ("O_NOFOLLOW walk", False)]
        for mode, use in modes:
            ours = await race(Path(tmp) / mode.replace(" ", "_"), n, n, openat2=use)
            rows += _rows(ours, ref, mode)
    return rows


def main(quick: bool = False) -> list[dict[str, Any]]:
    return asyncio.run(_run(quick))


if __name__ == "__main__":
    for row in main("--quick" in sys.argv):
        print(f"{row['scenario']}: ours {row['ours']}, reference {row['reference']} ({row['note']})")
