"""`serve --demo`: the demo node cannot read the server's data dir (where the signing key lives).

Real processes: `cortex-server serve --demo` starts its own agent; the test calls that node's tools as
an admin and reads the files the demo wrote. Without the demo root the agent's default root is the
user's home, which holds the data dir, and `fs_read` of the SQLite WAL handed out the signing key.
"""

from __future__ import annotations

import json
import os
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.demo import demo_root, write_demo_policy
from tests.support.pids import descendants_with, wait_gone
from tests.support.procs import ServerProc


@pytest.fixture
def demo_server(tmp_path: Path) -> Iterator[ServerProc]:
    # HOME points at the tmp dir, as an operator's ~ would hold ~/.cortex-server.
    server = ServerProc(
        tmp_path / "home" / ".cortex-server",
        args=["--demo", "--heartbeat-interval", "1"],
        env={"HOME": str(tmp_path / "home")},
    ).start()
    agents: list[int] = []
    try:
        server.wait_status("local", "connected", timeout=40)
        # Started through the agent's public entry point: `python -m desktop_agent run ...`.
        agents = descendants_with(server.pid, "desktop_agent\0run")
        assert len(agents) == 1
        yield server
    finally:
        server.stop()
        # The demo node goes with its server (it used to be left running, orphaned).
        assert wait_gone(agents, 15), f"demo agent {agents} outlived its server"


def _call(server: ServerProc, tool: str, arguments: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    with server.http() as http:
        response = http.post(f"/api/v1/nodes/local/tools/{tool}/call", json={"arguments": arguments})
    return response.status_code, response.json()


def test_demo_node_is_confined_to_its_demo_root(demo_server: ServerProc) -> None:
    data_dir = Path(os.path.realpath(demo_server.data_dir))
    root = demo_root(data_dir)
    policy = tomllib.loads((data_dir / "demo-agent" / "agent.toml").read_text(encoding="utf-8"))
    assert policy["allowed_roots"] == [str(root)]
    assert policy["protected_paths"] == [str(data_dir)]
    # The root holds nothing of the server's: not the data dir, not above it, not inside it.
    assert not data_dir.is_relative_to(root) and not root.is_relative_to(data_dir)

    status, wrote = _call(demo_server, "fs_write", {"path": str(root / "hello.txt"), "content": "hi"})
    assert status == 200 and not wrote["isError"], wrote
    status, read = _call(demo_server, "fs_read", {"path": "hello.txt"})
    assert status == 200 and read["content"][0]["text"] == "hi"

    assert (data_dir / "cortex.db").exists()
    for name in ("cortex.db", "cortex.db-wal", "demo-token", "demo-agent/credentials.json"):
        status, refused = _call(demo_server, "fs_read", {"path": str(data_dir / name)})
        assert status == 200 and refused["isError"], (name, refused)
        assert "BEGIN" not in str(refused) and "jwk" not in str(refused)
    status, listing = _call(demo_server, "fs_list", {"path": str(data_dir)})
    assert listing["isError"]
    # A shell would read anything this OS user can (the key included): the demo node has none.
    for tool in ("shell_exec", "process_start"):
        status, body = _call(demo_server, tool, {"command": f"cat {data_dir / 'cortex.db'}"})
        assert status == 404 and body["error"] == "unknown_tool"


def test_demo_credential_reaches_the_agent_only_through_its_home(demo_server: ServerProc) -> None:
    # The demo logs its node in with `cortex-agent login --credential-file` (a 0600 file it removes at
    # once) and starts `python -m desktop_agent run`: the secret is never on a command line.
    home = Path(os.path.realpath(demo_server.data_dir)) / "demo-agent"
    stored = home / "credentials.json"
    assert stored.stat().st_mode & 0o777 == 0o600
    credential = json.loads(stored.read_text(encoding="utf-8"))["credential"]
    assert credential and not (home / ".demo-credential").exists()
    agents = descendants_with(demo_server.pid, "desktop_agent\0run")
    assert len(agents) == 1
    cmdline = Path(f"/proc/{agents[0]}/cmdline").read_bytes().decode()
    assert credential not in cmdline and "--home" in cmdline


def test_an_owners_agent_toml_is_kept_but_the_protection_is_restored(tmp_path: Path) -> None:
    home, data_dir = tmp_path / "demo-agent", tmp_path / "srv"
    data_dir.mkdir()
    home.mkdir()
    (home / "agent.toml").write_text(f'allowed_roots = ["{tmp_path}"]\n\n[shell]\nenabled = true\n')
    write_demo_policy(home, data_dir)
    policy = tomllib.loads((home / "agent.toml").read_text(encoding="utf-8"))
    assert policy["allowed_roots"] == [str(tmp_path)] and policy["shell"]["enabled"] is True
    assert policy["protected_paths"] == [os.path.realpath(data_dir)]
    assert (home / "agent.toml").stat().st_mode & 0o777 == 0o600


def test_widened_roots_still_refuse_the_data_dir(demo_server: ServerProc, tmp_path: Path) -> None:
    data_dir = Path(os.path.realpath(demo_server.data_dir))
    toml = data_dir / "demo-agent" / "agent.toml"
    (tmp_path / "elsewhere.txt").write_text("outside the demo root")
    # The owner widens the roots to a directory that holds the data dir.
    text = toml.read_text(encoding="utf-8")
    toml.write_text(
        text.replace(f'allowed_roots = ["{demo_root(data_dir)}"]', f'allowed_roots = ["{tmp_path}"]')
    )
    deadline = time.monotonic() + 15
    while True:  # the agent applies agent.toml edits live; bounded wait for that
        _, seen = _call(demo_server, "fs_read", {"path": str(tmp_path / "elsewhere.txt")})
        if not seen["isError"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not seen["isError"], seen
    for name in ("cortex.db", "cortex.db-wal", "demo-token"):
        _, refused = _call(demo_server, "fs_read", {"path": str(data_dir / name)})
        assert refused["isError"], (name, refused)
