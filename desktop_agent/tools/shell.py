"""The `shell_exec` tool: one non-interactive /bin/sh command with a hard deadline and bounded output.

Sits under the engine, which has already validated the arguments, checked the owner's policy (the shell
can be switched off in agent.toml) and written `tool.requested`. The shell is not confined to the allowed
roots; it only starts in one by default.

Rules:
1. The child runs in its own session (process group); a timeout or a cancelled call kills the whole
   group: SIGTERM, up to `KILL_GRACE_S` for it to go, then SIGKILL.
2. Non-interactive: stdin is /dev/null unless `stdin` is given; no controlling terminal (new session);
   prompts, pagers and colours are switched off through the environment.
3. The child's environment is an allow-list of the agent's own (never CORTEX_NODE_CREDENTIAL or any
   other secret of the agent) plus the non-interactive settings plus the call's `env`.
4. Memory is bounded whatever the command prints: per stream only the first and last halves of
   `limits.max_output_bytes` are kept (`truncated` says when the middle was dropped).
5. The call ends when the command exits: a grandchild that keeps the pipes open gets `DRAIN_S` to let
   go, then its group is killed.
6. Output goes out as progress messages at most every `PROGRESS_INTERVAL_S`, each at most
   `PROGRESS_MAX_BYTES` (the latest lines win), so a flood does not become a flood of notifications.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

from desktop_agent.tools.base import ToolContext, ToolFailure, ToolResult

__all__ = ["ENV_ALLOW", "NON_INTERACTIVE_ENV", "child_environment", "shell_exec"]

KILL_GRACE_S = 1.0
DRAIN_S = 0.5
READ_CHUNK = 1 << 20
PROGRESS_INTERVAL_S = 0.25
PROGRESS_MAX_BYTES = 8192
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"

ENV_ALLOW = frozenset(
    {
        "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "SHELL", "TMPDIR", "TEMP", "TMP",
        "DISPLAY", "WAYLAND_DISPLAY", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME",
        "DBUS_SESSION_BUS_ADDRESS", "HOSTNAME",
    }
)  # fmt: skip
"""Variables of the agent's environment a command inherits (plus every LC_*)."""

NON_INTERACTIVE_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_PAGER": "cat",
    "PAGER": "cat",
    "MANPAGER": "cat",
    "SYSTEMD_PAGER": "",
    "DEBIAN_FRONTEND": "noninteractive",
    "TERM": "dumb",
    "NO_COLOR": "1",
    "CI": "1",
    "PIP_NO_INPUT": "1",
    "SSH_ASKPASS_REQUIRE": "never",
}
"""Set for every command so that nothing waits for a human (rule 2)."""


def child_environment(agent_env: dict[str, str], extra: dict[str, str] | None) -> dict[str, str]:
    """The command's environment (rule 3)."""
    env = {k: v for k, v in agent_env.items() if k in ENV_ALLOW or k.startswith("LC_")}
    env.setdefault("PATH", DEFAULT_PATH)
    env.update(NON_INTERACTIVE_ENV)
    if extra:
        env.update(extra)
    return env


class _Capture:
    """Keeps the head and tail of one stream within `limit` bytes (rule 4)."""

    def __init__(self, limit: int) -> None:
        self.head_cap = limit - limit // 2
        self.tail_cap = limit // 2
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.head_cap - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data and self.tail_cap:
            self.tail += data
            if len(self.tail) > 2 * self.tail_cap:
                del self.tail[: len(self.tail) - self.tail_cap]

    @property
    def truncated(self) -> bool:
        return self.total > self.head_cap + self.tail_cap

    def text(self) -> str:
        tail = bytes(self.tail[-self.tail_cap :]) if self.tail_cap else b""
        if not self.truncated:
            return (bytes(self.head) + tail).decode("utf-8", "replace")
        dropped = self.total - len(self.head) - len(tail)
        marker = f"\n[... {dropped} bytes not shown ...]\n"
        return self.head.decode("utf-8", "replace") + marker + tail.decode("utf-8", "replace")


class _ProgressFeed:
    """Coalesces output for progress messages (rule 6): bounded bytes, bounded rate."""

    def __init__(self) -> None:
        self.pending = bytearray()
        self.skipped = 0
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        self.pending += data
        if len(self.pending) > 2 * PROGRESS_MAX_BYTES:
            cut = len(self.pending) - PROGRESS_MAX_BYTES
            self.skipped += cut
            del self.pending[:cut]

    def take(self, final: bool) -> str | None:
        if len(self.pending) > PROGRESS_MAX_BYTES:  # the latest output wins
            cut = len(self.pending) - PROGRESS_MAX_BYTES
            newline = self.pending.find(b"\n", cut)
            if 0 <= newline < len(self.pending) - 1:
                cut = newline + 1  # start at a line
            self.skipped += cut
            del self.pending[:cut]
        data = bytes(self.pending)
        if not final:
            newline = data.rfind(b"\n")
            data = data[: newline + 1] if newline >= 0 else b""
        if not data:
            return None
        del self.pending[: len(data)]
        text = data.decode("utf-8", "replace")
        if self.skipped:
            text = f"[... {self.skipped} bytes not shown ...]\n{text}"
            self.skipped = 0
        return text


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class _ExitAwareProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """Knows when the command itself exited.

    `Process.wait()` (Python 3.11) only returns once every pipe is closed too, so a grandchild holding
    stdout would hold the call (rule 5); `process_exited` is called at exit time.
    """

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=limit, loop=loop)
        self.exited = asyncio.Event()

    def process_exited(self) -> None:
        super().process_exited()
        self.exited.set()


async def _spawn(command: str, stdin: int, cwd: Path, env: dict[str, str]) -> tuple[Any, _ExitAwareProtocol]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.subprocess_exec(
        lambda: _ExitAwareProtocol(READ_CHUNK, loop),
        "/bin/sh",
        "-c",
        command,
        stdin=stdin,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env=env,
        start_new_session=True,
    )
    return transport, protocol


async def _terminate(pid: int, exited: asyncio.Event) -> None:
    """Rule 1: SIGTERM the group, wait up to KILL_GRACE_S, SIGKILL the group."""
    _kill_group(pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(exited.wait(), KILL_GRACE_S)
    except TimeoutError:
        pass
    finally:
        _kill_group(pid, signal.SIGKILL)
    await exited.wait()


async def _pump(stream: asyncio.StreamReader, capture: _Capture, feed: _ProgressFeed) -> None:
    while chunk := await stream.read(READ_CHUNK):
        capture.add(chunk)
        feed.add(chunk)


async def _feed_stdin(proc: asyncio.subprocess.Process, data: bytes) -> None:
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        proc.stdin.write(data)
        await proc.stdin.drain()
    proc.stdin.close()


async def _report(ctx: ToolContext, feed: _ProgressFeed, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), PROGRESS_INTERVAL_S)
        text = feed.take(final=stop.is_set())
        if text is not None:
            await ctx.progress(feed.total, None, text)


def _working_dir(arguments: dict[str, Any], ctx: ToolContext) -> Path:
    roots = ctx.policy.allowed_roots
    raw = arguments.get("cwd")
    if raw is None:
        return Path(roots[0])
    cwd = Path(os.path.expanduser(raw))
    if not cwd.is_absolute():
        cwd = Path(roots[0]) / cwd
    if not cwd.is_dir():
        raise ToolFailure(f"cwd {raw!r} is not a directory")
    return cwd


def _summary(code: int | None, out: str, err: str, timed_out: bool, truncated: bool, timeout: float) -> str:
    parts = [out] if out else []
    if err:
        parts.append(f"[stderr]\n{err}")
    if timed_out:
        parts.append(f"[timed out after {timeout:g} s; process group killed]")
    elif code:
        parts.append(f"[exit code {code}]")
    if truncated:
        parts.append("[output truncated]")
    return "\n".join(parts) if parts else "[no output]"


async def shell_exec(arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
    """Run `command` with /bin/sh -c under rules 1-6."""
    timeout = float(arguments.get("timeout_s", DEFAULT_TIMEOUT_S))
    cwd = _working_dir(arguments, ctx)
    stdin_data = arguments.get("stdin")
    limit = ctx.policy.limits.max_output_bytes
    out_cap, err_cap, feed = _Capture(limit), _Capture(limit), _ProgressFeed()
    started = time.monotonic()
    try:
        transport, protocol = await _spawn(
            arguments["command"],
            asyncio.subprocess.PIPE if stdin_data is not None else asyncio.subprocess.DEVNULL,
            cwd,
            child_environment(dict(os.environ), arguments.get("env")),
        )
    except OSError as exc:
        raise ToolFailure(f"cannot start /bin/sh: {exc.strerror or exc}") from exc
    proc = asyncio.subprocess.Process(transport, protocol, asyncio.get_running_loop())
    exited = protocol.exited
    assert proc.stdout is not None and proc.stderr is not None
    readers = [
        asyncio.ensure_future(_pump(proc.stdout, out_cap, feed)),
        asyncio.ensure_future(_pump(proc.stderr, err_cap, feed)),
    ]
    helpers: list[asyncio.Future[None]] = []
    if stdin_data is not None:
        helpers.append(asyncio.ensure_future(_feed_stdin(proc, stdin_data.encode("utf-8"))))
    stop_reporting = asyncio.Event()
    reporter = asyncio.ensure_future(_report(ctx, feed, stop_reporting))
    timed_out = False
    try:
        try:
            await asyncio.wait_for(exited.wait(), timeout)
        except TimeoutError:
            timed_out = True
            await asyncio.shield(_terminate(proc.pid, exited))
        # Rule 5: the command is gone; whatever still holds the pipes gets DRAIN_S, then its group dies.
        _done, pending = await asyncio.wait(readers, timeout=DRAIN_S)
        if pending:
            _kill_group(proc.pid, signal.SIGKILL)
            await asyncio.wait(pending, timeout=DRAIN_S)
    except asyncio.CancelledError:
        await asyncio.shield(_terminate(proc.pid, exited))
        raise
    finally:
        for task in [*readers, *helpers]:
            task.cancel()
        stop_reporting.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(reporter), DRAIN_S)
        reporter.cancel()
        transport.close()
    duration_ms = int((time.monotonic() - started) * 1000)
    code = proc.returncode
    stdout, stderr = out_cap.text(), err_cap.text()
    truncated = out_cap.truncated or err_cap.truncated
    structured = {
        "exit_code": code,
        "stdout": stdout,
        "stderr": stderr,
        "timed_out": timed_out,
        "truncated": truncated,
        "duration_ms": duration_ms,
    }
    text = _summary(code, stdout, stderr, timed_out, truncated, timeout)
    return ToolResult.text(text, structured=structured, is_error=timed_out or code != 0, exit_code=code)
