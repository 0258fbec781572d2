"""agent.toml parsing, command-line overrides and the live watcher."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from desktop_agent.policy import (
    AgentConfig,
    ConfigError,
    Limits,
    Overrides,
    Policy,
    default_browser_executable,
    load_config,
    watch_config,
)

FULL = """
server = "https://cortex.example:8765"
name = "laptop"
allowed_roots = ["{a}", "{b}"]
max_concurrency = 3

[tls]
ca = "/etc/cortex/ca.pem"
client_cert = "~/node.pem"
client_key = "/etc/cortex/node.key"

[tools]
enabled = ["echo", "fs_read", "shell_exec"]

[shell]
enabled = false

[browser]
enabled = false
executable = "/opt/chrome"
idle_timeout_s = 10
allowed_schemes = ["HTTPS"]

[limits]
max_read_bytes = 1000
max_write_bytes = 2000
max_output_bytes = 3000
"""


def test_defaults_without_a_file(tmp_path: Path) -> None:
    config = load_config(tmp_path)
    policy = config.policy
    assert config.server is None and config.name is None and config.tls.ca is None
    assert policy.allowed_roots == (Path(os.path.realpath(Path.home())),)
    assert policy.enabled_tools is None and policy.shell_enabled and policy.browser_enabled
    assert policy.max_concurrency == 16
    assert policy.limits == Limits() and policy.limits.max_output_bytes == 1 << 20
    assert policy.browser_executable == default_browser_executable()
    assert policy.browser_idle_timeout_s == 300 and policy.browser_allowed_schemes == (
        "http",
        "https",
        "file",
    )


def test_full_file(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "link"
    a.mkdir()
    b.symlink_to(a)
    (tmp_path / "agent.toml").write_text(FULL.format(a=a, b=b))
    config = load_config(tmp_path)
    p = config.policy
    assert (config.server, config.name) == ("https://cortex.example:8765", "laptop")
    assert config.tls.client_cert == Path.home() / "node.pem" and config.tls.ca == Path("/etc/cortex/ca.pem")
    assert p.allowed_roots == (a.resolve(), a.resolve())  # symlinks resolved
    assert p.enabled_tools == frozenset({"echo", "fs_read", "shell_exec"})
    assert not p.shell_enabled and not p.browser_enabled and p.max_concurrency == 3
    assert p.browser_executable == Path("/opt/chrome") and p.browser_idle_timeout_s == 10
    assert p.browser_allowed_schemes == ("https",)
    assert p.limits == Limits(max_read_bytes=1000, max_write_bytes=2000, max_output_bytes=3000)
    assert not p.tool_enabled("shell_exec") and not p.tool_enabled("fs_write") and p.tool_enabled("echo")


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    (tmp_path / "agent.toml").write_text('allowed_roots = ["/srv"]\nmax_concurrency = 3\n')
    root = tmp_path / "r"
    root.mkdir()
    config = load_config(tmp_path, Overrides(allowed_roots=(root,), max_concurrency=7, browser_enabled=False))
    assert config.policy.allowed_roots == (root.resolve(),)
    assert config.policy.max_concurrency == 7 and not config.policy.browser_enabled
    assert not config.policy.tool_enabled("browser_navigate")


@pytest.mark.parametrize(
    "text",
    [
        "server = [",  # not TOML
        'max_concurrency = "many"',
        "max_concurrency = true",
        "max_concurrency = 0",
        'allowed_roots = ["relative/dir"]',
        "allowed_roots = []",
        "allowed_roots = [1]",
        'tools = "all"',
        "[shell]\nenabled = 1",
        "[limits]\nmax_read_bytes = -5",
    ],
)
def test_bad_file_is_a_clear_error(tmp_path: Path, text: str) -> None:
    (tmp_path / "agent.toml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert "agent.toml" in str(info.value)


def test_unknown_keys_are_tolerated(tmp_path: Path) -> None:
    (tmp_path / "agent.toml").write_text('future_key = 1\n[shell]\nenabled = false\nsandbox = "x"\n')
    assert not load_config(tmp_path).policy.shell_enabled


def test_policy_is_a_frozen_value() -> None:
    policy = Policy(allowed_roots=(Path("/tmp"),))
    with pytest.raises(AttributeError):
        policy.shell_enabled = False  # type: ignore[misc]


async def test_watcher_applies_edits_and_keeps_the_old_policy_on_a_bad_one(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("[shell]\nenabled = true\n")
    current = load_config(tmp_path)
    seen: asyncio.Queue[AgentConfig] = asyncio.Queue()
    stop = asyncio.Event()
    watcher = asyncio.create_task(
        watch_config(
            tmp_path, Overrides(max_concurrency=2), current, seen.put_nowait, stop_event=stop, poll_ms=100
        )
    )
    try:
        path.write_text("[shell]\nenabled = false\n")
        async with asyncio.timeout(10):
            first = await seen.get()
        assert not first.policy.shell_enabled and first.policy.max_concurrency == 2  # overrides re-applied

        path.write_text("[shell]\nenabled = 'maybe'\n")  # bad: logged, ignored
        path.write_text("[shell]\nenabled = true\nmax_concurrency = 1\n")  # unknown key in [shell]: a warning
        path.write_text("max_concurrency = 5\n")
        async with asyncio.timeout(10):
            second = await seen.get()
        while not seen.empty():
            second = seen.get_nowait()
        assert second.policy.shell_enabled and second.policy.max_concurrency == 2
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await watcher
    assert watcher.done()


class _Waiter(logging.Handler):
    def __init__(self, needle: str) -> None:
        super().__init__()
        self.needle = needle
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.needle in record.getMessage():
            self.seen.set()


async def test_watcher_logs_a_bad_edit_and_stays_quiet(tmp_path: Path) -> None:
    current = load_config(tmp_path)
    changed = asyncio.Event()
    stop = asyncio.Event()
    waiter = _Waiter("previous policy stays in force")
    logging.getLogger("desktop_agent.policy").addHandler(waiter)
    watcher = asyncio.create_task(
        watch_config(tmp_path, None, current, lambda c: changed.set(), stop_event=stop, poll_ms=100)
    )
    try:
        (tmp_path / "agent.toml").write_text("max_concurrency = 'x'")
        async with asyncio.timeout(10):
            await waiter.seen.wait()
        assert not changed.is_set()
    finally:
        logging.getLogger("desktop_agent.policy").removeHandler(waiter)
        stop.set()
        async with asyncio.timeout(10):
            await watcher
