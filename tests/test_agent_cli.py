"""Tier (c): what `cortex-agent` says and which exit code it gives, against a real server process.

Every message a newcomer meets in the first hour (issue 19): login checks the credential, run says when
it is connected and why it is not, one agent per home, a replaced agent backs off, audit verify/show on a
missing home.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.support.procs import REPO, AgentProc, ServerProc, _env, refused_port


def _agent(
    *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "desktop_agent.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=_env(env),
        cwd=REPO,
        timeout=60,
        check=False,
    )


def test_login_checks_the_credential(server_proc: ServerProc, tmp_path: Path) -> None:
    credential = server_proc.enroll("laptop", "ws1")
    home = tmp_path / "home"
    refused = _agent(
        "login", "--server", server_proc.url, "--name", "laptop", "--home", str(home), stdin="nope\n"
    )
    assert refused.returncode == 3, refused.stderr
    assert "refused the credential" in refused.stderr and "nothing stored" in refused.stderr
    assert not (home / "credentials.json").exists()
    # A scheme-less --server is accepted; the workspace the server knows is named.
    host_port = server_proc.url.removeprefix("http://")
    ok = _agent(
        "login", "--server", host_port, "--name", "laptop", "--home", str(home), stdin=credential + "\n"
    )
    assert ok.returncode == 0, ok.stderr
    assert "credential checked" in ok.stderr and "workspace ws1" in ok.stderr
    assert (home / "credentials.json").stat().st_mode & 0o777 == 0o600
    assert credential not in ok.stdout + ok.stderr


def test_login_while_the_server_is_unreachable_stores_with_a_warning(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with refused_port() as port:
        url = f"http://127.0.0.1:{port}"
        done = _agent("login", "--server", url, "--name", "laptop", "--home", str(home), stdin="secret\n")
    assert done.returncode == 0, done.stderr
    assert "warning: could not reach" in done.stderr
    assert (home / "credentials.json").exists()


def test_login_without_a_credential_is_a_usage_error(tmp_path: Path) -> None:
    done = _agent("login", "--server", "127.0.0.1:1", "--name", "x", "--home", str(tmp_path / "h"))
    assert done.returncode == 2
    assert "no credential given" in done.stderr


def test_run_says_connected_with_server_node_and_workspace(
    server_proc: ServerProc, start_node: Callable[..., AgentProc]
) -> None:
    agent = start_node("laptop", "ws1")
    assert agent.wait_output("connected to", 20), "".join(agent.output[-20:])
    line = next(line for line in agent.output if "cortex-agent: connected to" in line)
    assert server_proc.url in line and "node laptop" in line and "workspace ws1" in line


def test_run_with_a_refused_credential_exits_3_without_retrying(
    server_proc: ServerProc, tmp_path: Path
) -> None:
    server_proc.enroll("laptop", "ws1")
    done = subprocess.run(
        [sys.executable, "-m", "desktop_agent.cli", "run", "--home", str(tmp_path / "h"), "--server",
         server_proc.url, "--name", "laptop", "--no-browser"],
        capture_output=True, text=True, env=_env({"CORTEX_NODE_CREDENTIAL": "wrong"}), cwd=REPO,
        timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert "refuses the credential of node laptop" in done.stderr
    assert "cortex-server enroll-node laptop" in done.stderr


def test_run_says_why_it_is_not_connected(tmp_path: Path) -> None:
    with refused_port() as port:
        url = f"http://127.0.0.1:{port}"
        agent = AgentProc(tmp_path / "h", url, "laptop", "secret", ["--no-browser"]).start()
        try:
            assert agent.wait_output("retrying in", 20), "".join(agent.output[-20:])
            line = next(line for line in agent.output if "retrying in" in line)
            assert f"not connected to {url}" in line
        finally:
            agent.stop()


def test_a_second_agent_on_the_same_home_exits_5_naming_the_first(
    server_proc: ServerProc, start_node: Callable[..., AgentProc], tmp_path: Path
) -> None:
    first = start_node("laptop", "ws1")
    second = subprocess.run(
        [sys.executable, "-m", "desktop_agent.cli", "run", "--home", str(first.home), "--no-browser"],
        capture_output=True, text=True, env=_env({"CORTEX_NODE_CREDENTIAL": first.credential}), cwd=REPO,
        timeout=30, check=False,
    )  # fmt: skip
    assert second.returncode == 5, second.stderr
    assert f"pid {first.pid}" in second.stderr
    # the tray takes the same lock
    tray = _agent("tray", "--home", str(first.home), env={"PYSTRAY_BACKEND": "dummy"})
    assert tray.returncode == 5, tray.stderr
    assert server_proc.node("laptop")["status"] == "connected"


def test_a_replaced_agent_says_so_and_backs_off(
    server_proc: ServerProc, start_node: Callable[..., AgentProc], tmp_path: Path
) -> None:
    first = start_node("laptop", "ws1")
    # Same credential, another home: the server replaces the first connection (4409).
    second = AgentProc(tmp_path / "other-home", server_proc.url, "laptop", first.credential, ["--no-browser"])
    second.start()
    try:
        assert first.wait_output("replaced by another connection of node laptop", 20), "".join(
            first.output[-20:]
        )
        assert second.wait_output("cortex-agent: connected to", 20)
        # Backing off the cap interval (30 s): the first does not take the node back, so the second is not
        # replaced in turn (without the back-off the two flap at once).
        assert not second.wait_output("replaced by another connection", 4)
    finally:
        second.stop()


def test_audit_verify_and_show_without_a_log_exit_2(tmp_path: Path) -> None:
    missing = str(tmp_path / "nonexistent")
    verify = _agent("audit", "verify", "--home", missing)
    assert verify.returncode == 2
    assert "no audit log" in verify.stderr and verify.stdout == ""
    show = _agent("audit", "show", "-n", "5", "--home", missing)
    assert show.returncode == 2


def test_audit_show_is_human_readable(server_proc: ServerProc, start_node: Callable[..., AgentProc]) -> None:
    agent = start_node("laptop", "ws1")
    agent.stop()
    done = _agent("audit", "show", "-n", "3", "--home", str(agent.home))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert 1 <= len(lines) <= 3
    assert all(line.startswith("#") for line in lines)
    verify = _agent("audit", "verify", "--home", str(agent.home))
    assert verify.returncode == 0 and verify.stdout.startswith("ok ")


def test_help_describes_options_and_exit_codes() -> None:
    for cmd in (["--help"], ["run", "--help"], ["login", "--help"], ["audit", "verify", "--help"]):
        done = _agent(*cmd)
        assert done.returncode == 0
        assert "exit codes" in done.stdout
    run_help = _agent("run", "--help").stdout
    assert "default 16777216" in run_help and "--allow-root DIR" in run_help
