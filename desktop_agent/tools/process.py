"""Background processes: `process_start`, `process_read`, `process_write`, `process_kill`, `process_list`.

Sits under the engine (`desktop_agent.engine`), which validates arguments, checks the owner's policy
(these tools follow `[shell] enabled`) and writes `tool.requested` before any of them runs. The
`ProcessTable` belongs to the engine, i.e. to the agent process, not to a connection: a tunnel that
drops and reconnects (or a server restart) finds its processes where it left them.

Rules:
1. A process is `/bin/sh -c command` in its own session (process group), with the same environment
   allow-list as `shell_exec`; with `pty` its stdin, stdout and stderr are a new pseudo-terminal (its
   controlling terminal when util-linux `setsid --ctty` is there), else stdin is a pipe and stdout and
   stderr share one pipe, so the output is interleaved exactly as written.
2. Output goes into a ring buffer (`[processes] buffer_bytes`, default 4 MiB). Offsets are absolute
   (byte 0 is the first byte the process ever wrote); a read from an offset that fell out of the ring
   starts at the oldest byte kept and says how many bytes it skipped (`dropped_bytes`).
3. Reading never blocks the event loop: the output fd is non-blocking and read from a loop reader,
   at most `READS_PER_WAKEUP` chunks per wake-up so a flooding process cannot starve other calls.
4. `process_read` with `wait_s` returns as soon as there is output past its offset or the process has
   ended, and never later than `wait_s`.
5. At most `[processes] max` (default 16) processes run at once; a start beyond that is refused.
6. A process has ended when its leader exited and its output reached end of file (or `DRAIN_S` after
   the exit, when a left-over child holds the output open: then its group is killed). Its end is
   audited as `process.exited` with the digest of everything it wrote. Ended processes stay listed,
   the `EXITED_KEPT` most recent ones.
7. `process_kill` signals the whole group, and sends SIGKILL to the group when it has not ended
   `KILL_GRACE_S` later. When the agent stops every running group gets SIGTERM, then SIGKILL.
8. Writes to stdin wait at most `WRITE_TIMEOUT_S` for a process that does not read; what did not fit
   is reported, never queued without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import secrets
import shutil
import signal
import struct
import termios
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from desktop_agent.tools.base import ToolContext, ToolFailure, ToolFunc, ToolResult
from desktop_agent.tools.shell import _working_dir, child_environment

__all__ = ["OutputRing", "ProcessTable", "ProcessTools"]

KILL_GRACE_S = 2.0
DRAIN_S = 0.5
WRITE_TIMEOUT_S = 5.0
READ_CHUNK = 256 * 1024
READS_PER_WAKEUP = 4
EXITED_KEPT = 16
MAX_WAIT_S = 30.0
SIGNALS = {"INT": signal.SIGINT, "TERM": signal.SIGTERM, "KILL": signal.SIGKILL}
PTY_ENV = {"TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}

logger = logging.getLogger(__name__)

RecordFn = Callable[..., Awaitable[Any]]
"""record(event, **fields): appends a record to the node's audit log."""


class OutputRing:
    """The last `capacity` bytes of a stream, addressed by absolute offsets (rule 2)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._buf = bytearray()  # grows to capacity, then wraps: offset o lives at o % capacity
        self.total = 0

    @property
    def start(self) -> int:
        """The oldest absolute offset still kept."""
        return self.total - len(self._buf)

    def write(self, data: bytes) -> None:
        size = len(data)
        if size > self.capacity:
            data = data[size - self.capacity :]
        end = self.total + size
        if len(self._buf) < self.capacity:
            if end <= self.capacity:  # not wrapped yet: offsets are indexes
                self._buf += data
                self.total = end
                return
            self._buf.extend(bytes(self.capacity - len(self._buf)))  # every padded byte is overwritten now
        at = (end - len(data)) % self.capacity
        first = data[: self.capacity - at]
        self._buf[at : at + len(first)] = first
        rest = data[len(first) :]
        if rest:
            self._buf[: len(rest)] = rest
        self.total = end

    def read(self, offset: int, limit: int) -> tuple[int, bytes]:
        """(the offset actually read from, up to `limit` bytes from there)."""
        offset = min(max(offset, self.start), self.total)
        count = min(limit, self.total - offset)
        at = offset % self.capacity if self.capacity else 0
        piece = bytes(self._buf[at : at + count])
        if len(piece) < count:
            piece += bytes(self._buf[: count - len(piece)])
        return offset, piece


def _utf8_cut(data: bytes) -> int:
    """Length of `data` without a trailing incomplete UTF-8 sequence (so a read never splits a character)."""
    size = len(data)
    for back in range(1, min(4, size) + 1):
        byte = data[size - back]
        if byte & 0xC0 == 0x80:  # a continuation byte: look further back for the lead
            continue
        if byte < 0xC0:  # ASCII (or a stray byte that no later byte completes)
            return size
        need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
        return size if back >= need else size - back
    return size


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Process:
    """One background process and its output."""

    def __init__(self, process_id: str, name: str, command: str, pty: bool, capacity: int) -> None:
        self.process_id = process_id
        self.name = name
        self.command = command
        self.pty = pty
        self.ring = OutputRing(capacity)
        self.digest = hashlib.sha256()
        self.started_at = _now()
        self.pid = 0
        self.proc: asyncio.subprocess.Process | None = None
        self.out_fd = -1
        self.in_fd = -1
        self.read_pos = 0
        self.exit_code: int | None = None
        self.ended = asyncio.Event()
        self.eof = asyncio.Event()
        self.write_lock = asyncio.Lock()
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def running(self) -> bool:
        return not self.ended.is_set()

    def wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_change(self, timeout: float) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except TimeoutError:
            pass
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def on_readable(self, loop: asyncio.AbstractEventLoop) -> None:
        """Rule 3: a bounded number of non-blocking reads per wake-up."""
        got = False
        for _ in range(READS_PER_WAKEUP):
            try:
                chunk = os.read(self.out_fd, READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # EIO: the pty's last terminal end closed; anything else ends it as well
                chunk = b""
            if not chunk:
                self.close_output(loop)
                break
            self.ring.write(chunk)
            self.digest.update(chunk)
            got = True
            if len(chunk) < READ_CHUNK:
                break
        if got:
            self.wake()

    def close_output(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.out_fd >= 0:
            loop.remove_reader(self.out_fd)
            os.close(self.out_fd)
            self.out_fd = -1
        self.eof.set()
        self.wake()

    def close_input(self) -> None:
        if self.in_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.in_fd)
            self.in_fd = -1

    def signal_group(self, sig: int) -> None:
        if self.pid > 0:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)

    def describe(self) -> dict[str, Any]:
        return {
            "process_id": self.process_id,
            "name": self.name,
            "command": self.command,
            "pid": self.pid,
            "running": self.running,
            "exit_code": self.exit_code,
            "started_at": self.started_at,
            "output_bytes": self.ring.total,
        }


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _set_winsize(fd: int, rows: int, cols: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class ProcessTable:
    """The node's background processes (rules 1-8); one per engine, closed with it."""

    def __init__(self, record: RecordFn) -> None:
        self._record = record
        self._procs: dict[str, _Process] = {}
        self._starting = 0
        self._monitors: set[asyncio.Task[None]] = set()
        self._setsid = shutil.which("setsid")

    def running_count(self) -> int:
        return sum(1 for p in self._procs.values() if p.running)

    def get(self, process_id: str) -> _Process:
        proc = self._procs.get(process_id)
        if proc is None:
            raise ToolFailure(f"no background process {process_id!r} on this node (see process_list)")
        return proc

    def list(self) -> list[dict[str, Any]]:
        return [p.describe() for p in self._procs.values()]

    async def start(
        self,
        command: str,
        *,
        cwd: Any,
        env: dict[str, str],
        pty: bool,
        name: str | None,
        limit: int,
        capacity: int,
    ) -> _Process:
        if self.running_count() + self._starting >= limit:
            raise ToolFailure(
                f"too many background processes: {limit} already run on this node "
                "([processes] max in agent.toml); stop one with process_kill first"
            )
        self._starting += 1
        try:
            return await self._spawn(command, cwd, env, pty, name, capacity)
        finally:
            self._starting -= 1

    async def _spawn(
        self, command: str, cwd: Any, env: dict[str, str], pty: bool, name: str | None, capacity: int
    ) -> _Process:
        process_id = "p" + secrets.token_hex(4)
        proc = _Process(process_id, name or command[:128], command, pty, capacity)
        argv = ["/bin/sh", "-c", command]
        if pty:
            parent_fd, child_fd = os.openpty()
            _set_winsize(child_fd, 40, 120)
            child_in = child_out = child_fd
            in_fd, out_fd = os.dup(parent_fd), parent_fd
            env = {**env, **PTY_ENV}
            if self._setsid:  # a new session whose controlling terminal is the pty (rule 1)
                argv = [self._setsid, "--ctty", "--wait", *argv]
        else:
            child_in, in_fd = os.pipe()
            out_fd, child_out = os.pipe()
        child_fds = {child_in, child_out}
        try:
            os.set_blocking(out_fd, False)
            os.set_blocking(in_fd, False)
            child = await asyncio.create_subprocess_exec(
                *argv,
                stdin=child_in,
                stdout=child_out,
                stderr=child_out,
                cwd=cwd,
                env=env,
                start_new_session=not (pty and self._setsid),
            )
        except OSError as exc:
            for fd in (in_fd, out_fd, *child_fds):
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise ToolFailure(f"cannot start /bin/sh: {exc.strerror or exc}") from exc
        for fd in child_fds:
            os.close(fd)
        proc.proc, proc.pid, proc.in_fd, proc.out_fd = child, child.pid, in_fd, out_fd
        loop = asyncio.get_running_loop()
        loop.add_reader(out_fd, proc.on_readable, loop)
        self._procs[process_id] = proc
        self._forget_old()
        task = asyncio.create_task(self._monitor(proc), name=f"cortex-process-{process_id}")
        self._monitors.add(task)
        task.add_done_callback(self._monitors.discard)
        return proc

    def _forget_old(self) -> None:
        ended = [pid for pid, p in self._procs.items() if not p.running]
        for process_id in ended[: max(0, len(ended) - EXITED_KEPT)]:
            del self._procs[process_id]

    async def _monitor(self, proc: _Process) -> None:
        """Rule 6: the end of a process, its output drained, audited once."""
        assert proc.proc is not None
        loop = asyncio.get_running_loop()
        code = await proc.proc.wait()
        try:
            await asyncio.wait_for(proc.eof.wait(), DRAIN_S)
        except TimeoutError:
            proc.signal_group(signal.SIGKILL)  # a left-over child holds the output: it goes with its leader
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.eof.wait(), DRAIN_S)
            if not proc.eof.is_set():
                proc.on_readable(loop)
                proc.close_output(loop)
        proc.signal_group(signal.SIGKILL)  # nothing of the group outlives its leader
        proc.close_input()
        try:  # audited before anyone sees it ended: a reader that saw the end finds the record
            await self._record(
                "process.exited",
                process_id=proc.process_id,
                exit_code=code,
                output_bytes=proc.ring.total,
                output_sha256=proc.digest.hexdigest(),
            )
        except Exception:
            logger.exception("could not audit the end of %s", proc.process_id)
        proc.exit_code = code
        proc.ended.set()
        proc.wake()
        self._forget_old()

    async def kill(self, proc: _Process, sig: int) -> int | None:
        """Rule 7 for one process."""
        if proc.running:
            proc.signal_group(sig)
            try:
                await asyncio.wait_for(asyncio.shield(proc.ended.wait()), KILL_GRACE_S)
            except TimeoutError:
                proc.signal_group(signal.SIGKILL)
                await asyncio.wait_for(asyncio.shield(proc.ended.wait()), KILL_GRACE_S + 2 * DRAIN_S)
        return proc.exit_code

    async def write(self, proc: _Process, data: bytes, close: bool) -> int:
        """Rule 8: write what the process takes within WRITE_TIMEOUT_S."""
        async with proc.write_lock:
            if proc.in_fd < 0:
                raise ToolFailure(f"stdin of {proc.process_id} is closed")
            loop = asyncio.get_running_loop()
            written = 0
            deadline = time.monotonic() + WRITE_TIMEOUT_S
            while written < len(data):
                try:
                    written += os.write(proc.in_fd, data[written : written + 65536])
                    continue
                except BlockingIOError:
                    pass
                except OSError as exc:  # EPIPE / EIO: the reader is gone
                    if written == 0:
                        raise ToolFailure(
                            f"{proc.process_id} does not read its input: {exc.strerror}"
                        ) from exc
                    break
                left = deadline - time.monotonic()
                if left <= 0 or not proc.running:
                    break
                ready: asyncio.Future[None] = loop.create_future()
                loop.add_writer(proc.in_fd, _settle, ready)
                try:
                    await asyncio.wait_for(ready, min(left, 0.25))
                except TimeoutError:
                    pass
                finally:
                    loop.remove_writer(proc.in_fd)
            if close and written == len(data):
                if proc.pty:  # a terminal has no end of file to close: send its EOF character
                    with contextlib.suppress(OSError):
                        os.write(proc.in_fd, b"\x04")
                else:
                    proc.close_input()
            return written

    async def aclose(self) -> None:
        """Rule 7 for the agent's stop: TERM every running group, KILL what is left after the grace."""
        running = [p for p in self._procs.values() if p.running]
        for proc in running:
            proc.signal_group(signal.SIGTERM)
        if running:
            waits = [asyncio.ensure_future(p.ended.wait()) for p in running]
            _done, pending = await asyncio.wait(waits, timeout=KILL_GRACE_S)
            if pending:
                for proc in running:
                    if proc.running:
                        proc.signal_group(signal.SIGKILL)
                await asyncio.wait(pending, timeout=KILL_GRACE_S + 2 * DRAIN_S)
            for waiter in waits:
                waiter.cancel()
        if self._monitors:
            await asyncio.wait(list(self._monitors), timeout=2 * DRAIN_S)


def _read_result(proc: _Process, asked: int, max_bytes: int) -> ToolResult:
    offset, data = proc.ring.read(asked, max_bytes)
    cut = _utf8_cut(data) if proc.running or offset + len(data) < proc.ring.total else len(data)
    data = data[:cut] if cut > 0 else data
    next_offset = offset + len(data)
    proc.read_pos = next_offset
    output = data.decode("utf-8", "replace")
    structured: dict[str, Any] = {
        "output": output,
        "offset": offset,
        "next_offset": next_offset,
        "dropped_bytes": max(0, offset - asked),
        "running": proc.running,
        "exit_code": proc.exit_code,
    }
    notes = []
    if structured["dropped_bytes"]:
        notes.append(f"[{structured['dropped_bytes']} bytes before offset {offset} no longer kept]")
    if proc.running:
        notes.append(f"[running; next_offset {next_offset}]")
    else:
        notes.append(f"[exited with code {proc.exit_code}; next_offset {next_offset}]")
    text = output + ("\n" if output else "") + " ".join(notes)
    return ToolResult.text(text, structured=structured)


class ProcessTools:
    """The five process tools over one `ProcessTable`."""

    def __init__(self, table: ProcessTable) -> None:
        self.table = table

    def tools(self) -> dict[str, ToolFunc]:
        return {
            "process_start": self.process_start,
            "process_read": self.process_read,
            "process_write": self.process_write,
            "process_kill": self.process_kill,
            "process_list": self.process_list,
        }

    async def process_start(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        policy = ctx.policy
        proc = await self.table.start(
            arguments["command"],
            cwd=_working_dir(arguments, ctx),
            env=child_environment(dict(os.environ), arguments.get("env")),
            pty=bool(arguments.get("pty", False)),
            name=arguments.get("name"),
            limit=getattr(policy, "max_processes", 16),
            capacity=getattr(policy, "process_buffer_bytes", 4 << 20),
        )
        structured = {"process_id": proc.process_id, "pid": proc.pid}
        text = f"started {proc.process_id} (pid {proc.pid}); read its output with process_read"
        return ToolResult.text(text, structured=structured)

    async def process_read(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        proc = self.table.get(arguments["process_id"])
        asked = int(arguments.get("offset", proc.read_pos))
        max_bytes = int(arguments.get("max_bytes", 65536))
        wait_s = min(float(arguments.get("wait_s", 0)), MAX_WAIT_S)
        deadline = time.monotonic() + wait_s
        while proc.ring.total <= asked and proc.running:  # rule 4
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await proc.wait_change(left)
        return _read_result(proc, asked, max_bytes)

    async def process_write(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        proc = self.table.get(arguments["process_id"])
        if not proc.running:
            raise ToolFailure(f"{proc.process_id} has exited (code {proc.exit_code})")
        data = arguments["input"].encode("utf-8")
        written = await self.table.write(proc, data, bool(arguments.get("close_stdin", False)))
        structured = {"bytes_written": written}
        if written < len(data):
            text = f"only {written} of {len(data)} bytes written: the process is not reading its input"
            return ToolResult.text(text, structured=structured, is_error=True)
        return ToolResult.text(f"{written} bytes written", structured=structured)

    async def process_kill(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        proc = self.table.get(arguments["process_id"])
        sig = SIGNALS[arguments.get("signal", "TERM")]
        try:
            code = await self.table.kill(proc, sig)
        except TimeoutError:
            raise ToolFailure(f"{proc.process_id} did not end after SIGKILL of its group") from None
        return ToolResult.text(
            f"{proc.process_id} ended with exit code {code}", structured={"exit_code": code}, exit_code=code
        )

    async def process_list(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        processes = self.table.list()
        lines = [
            f"{p['process_id']} pid {p['pid']} "
            f"{'running' if p['running'] else 'exited ' + str(p['exit_code'])} "
            f"{p['output_bytes']} bytes  {p['name']}"
            for p in processes
        ]
        return ToolResult.text(
            "\n".join(lines) or "no background processes", structured={"processes": processes}
        )
