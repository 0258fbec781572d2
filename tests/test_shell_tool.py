"""shell_exec: non-interactive, bounded, killed as a process group on timeout and cancellation."""

from __future__ import annotations

import asyncio
import re
import resource
import time
from pathlib import Path
from typing import Any

import pytest

from desktop_agent.policy import Policy
from desktop_agent.tools.base import ToolContext, ToolFailure, ToolResult
from desktop_agent.tools.shell import shell_exec
from tests.support.pids import wait_gone


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (nobody may reap it in a container)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


async def gone(pid: int) -> bool:
    """Whether `pid` dies within 5 s (SIGKILL is delivered asynchronously: the pipe closes first)."""
    return await asyncio.to_thread(wait_gone, [pid], 5.0) and not alive(pid)


class Progress:
    def __init__(self) -> None:
        self.messages: list[str] = []
        self.values: list[float] = []
        self.changed = asyncio.Event()

    async def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        self.values.append(progress)
        self.messages.append(message or "")
        self.changed.set()

    async def wait_for(self, pattern: str) -> re.Match[str]:
        async with asyncio.timeout(10):
            while True:
                found = re.search(pattern, "".join(self.messages))
                if found:
                    return found
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    return r


def context(root: Path, progress: Progress | None = None, **policy: Any) -> ToolContext:
    ctx = ToolContext(
        request_id=1, caller={}, home=root.parent / "home", policy=Policy(allowed_roots=(root,), **policy)
    )
    if progress is not None:
        ctx.progress = progress
    return ctx


async def run(root: Path, progress: Progress | None = None, **arguments: Any) -> ToolResult:
    return await shell_exec(arguments, context(root, progress))


async def test_success_and_structured_result(root: Path) -> None:
    result = await run(root, command="echo hello; echo oops >&2; pwd")
    s = result.structured
    assert s is not None
    assert (s["exit_code"], s["timed_out"], s["truncated"]) == (0, False, False)
    assert s["stdout"] == f"hello\n{root}\n" and s["stderr"] == "oops\n"
    assert isinstance(s["duration_ms"], int) and not result.is_error and result.exit_code == 0
    assert "hello" in result.content[0]["text"] and "oops" in result.content[0]["text"]


async def test_nonzero_exit_is_an_error_result(root: Path) -> None:
    result = await run(root, command="echo no >&2; exit 3")
    assert result.is_error and result.exit_code == 3 and result.structured
    assert result.structured["exit_code"] == 3 and "exit code 3" in result.content[0]["text"]


async def test_cwd_relative_to_first_root_and_bad_cwd(root: Path) -> None:
    (root / "sub").mkdir()
    result = await run(root, command="pwd", cwd="sub")
    assert result.structured and result.structured["stdout"].strip() == str(root / "sub")
    with pytest.raises(ToolFailure):
        await run(root, command="pwd", cwd="missing")


async def test_stdin_is_fed_when_given(root: Path) -> None:
    result = await run(root, command="tr a-z A-Z", stdin="hello")
    assert result.structured and result.structured["stdout"] == "HELLO"


async def test_waiting_for_a_password_fails_fast(root: Path) -> None:
    started = time.monotonic()
    result = await run(root, command='read -r pw && echo "got $pw"', timeout_s=30)
    assert result.is_error and result.structured and not result.structured["timed_out"]
    tty = await run(root, command="python3 -c 'import getpass; getpass.getpass()'", timeout_s=30)
    assert tty.is_error and tty.structured and not tty.structured["timed_out"]
    assert time.monotonic() - started < 10


async def test_environment_is_an_allow_list(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORTEX_NODE_CREDENTIAL", "node-secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    monkeypatch.setenv("LC_TIME", "C")
    result = await run(root, command="env", env={"FOO": "bar"})
    assert result.structured
    env = dict(line.split("=", 1) for line in result.structured["stdout"].splitlines() if "=" in line)
    assert "CORTEX_NODE_CREDENTIAL" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert "node-secret" not in result.structured["stdout"]
    assert env["FOO"] == "bar" and env["LC_TIME"] == "C" and "PATH" in env
    assert env["GIT_TERMINAL_PROMPT"] == "0" and env["DEBIAN_FRONTEND"] == "noninteractive"
    assert env["PAGER"] == "cat" and env["TERM"] == "dumb" and env["CI"] == "1" and "SSH_ASKPASS" not in env


async def test_timeout_kills_the_whole_process_group(root: Path) -> None:
    started = time.monotonic()
    result = await run(root, command="sleep 1000 & echo $! > child.pid; sleep 1000", timeout_s=0.5)
    assert time.monotonic() - started < 5
    assert result.is_error and result.structured and result.structured["timed_out"] is True
    assert "timed out" in result.content[0]["text"]
    assert await gone(int((root / "child.pid").read_text()))


async def test_a_term_ignoring_command_gets_killed(root: Path) -> None:
    started = time.monotonic()
    result = await run(root, command="trap '' TERM; while :; do sleep 0.05; done", timeout_s=0.3)
    assert result.structured and result.structured["timed_out"] and result.structured["exit_code"] == -9
    assert time.monotonic() - started < 5


async def test_huge_output_is_bounded_and_truncated(root: Path) -> None:
    progress = Progress()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = await run(root, progress, command="yes 0123456789 | head -c 200000000; echo done >&2")
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    s = result.structured
    assert s and s["exit_code"] == 0 and s["truncated"] is True and s["stderr"] == "done\n"
    assert len(s["stdout"]) < (1 << 20) + 200 and "bytes not shown" in s["stdout"]
    assert s["stdout"].startswith("0123456789\n") and s["stdout"].endswith("\n01")  # the real last bytes
    assert grown_kib < 64 * 1024  # far below the 200 MB printed
    assert len(progress.messages) < 100 and all(len(m) < 8300 for m in progress.messages)


async def test_grandchild_holding_the_pipe_does_not_hang(root: Path) -> None:
    started = time.monotonic()
    result = await run(root, command="sleep 1000 & echo $! > child.pid; echo started", timeout_s=60)
    assert time.monotonic() - started < 5
    assert result.structured and result.structured["stdout"] == "started\n" and result.exit_code == 0
    assert await gone(int((root / "child.pid").read_text()))


async def test_output_streams_as_progress_while_running(root: Path) -> None:
    progress = Progress()
    command = "echo line-one; while [ ! -e go ]; do sleep 0.02; done; echo line-two"
    task = asyncio.ensure_future(run(root, progress, command=command, timeout_s=30))
    await progress.wait_for("line-one")
    assert not task.done()
    (root / "go").touch()
    async with asyncio.timeout(10):
        result = await task
    assert "line-two" in "".join(progress.messages)
    assert progress.values == sorted(progress.values)
    assert result.structured and result.structured["stdout"] == "line-one\nline-two\n"


async def test_cancellation_kills_the_group_and_propagates(root: Path) -> None:
    progress = Progress()
    task = asyncio.ensure_future(run(root, progress, command="sleep 1000 & echo child=$!; sleep 1000"))
    pid = int((await progress.wait_for(r"child=(\d+)")).group(1))
    assert alive(pid)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(10):
            await task
    assert await gone(pid)
