"""Tier (c): what `cortex` and `cortex-server` say, run as real commands against a real server process.

The messages of a newcomer's first hour (issue 19): tables with headers, --json, near-miss suggestions,
`cortex whoami`, a scheme-less --server, one readable line per error, the issue-token warning and the
demo's ready block.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from tests.support.procs import REPO, AgentProc, ServerProc, _env, refused_port


def _cortex(
    *args: str, token: str | None = None, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    extra = {"CORTEX_SERVER_HOME": "/nonexistent-cortex-home", **(env or {})}
    if token is not None:
        extra["CORTEX_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "sdk.cli", *args],
        capture_output=True,
        text=True,
        env=_env(extra),
        cwd=REPO,
        timeout=timeout,
        check=False,
    )


def _server_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=REPO,
        timeout=60,
        check=False,
    )


def _one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text and "ExceptionGroup" not in text
    return lines[0]


def test_nodes_table_has_headers_on_a_terminal_and_json_for_scripts(
    server_proc: ServerProc, start_node: Callable[..., AgentProc]
) -> None:
    start_node("laptop")
    token = server_proc.token()
    tty = _cortex("--server", server_proc.url, "nodes", token=token, env={"CORTEX_FORCE_TTY": "1"})
    assert tty.returncode == 0, tty.stderr
    header, row = tty.stdout.splitlines()[:2]
    assert header.split()[:3] == ["NAME", "WORKSPACE", "STATUS"]
    assert row.split()[:3] == ["laptop", "ws1", "connected"]
    piped = _cortex("--server", server_proc.url, "nodes", token=token)
    assert piped.stdout.splitlines()[0].split("\t")[:3] == ["laptop", "ws1", "connected"]
    as_json = _cortex("--server", server_proc.url, "nodes", "--json", token=token)
    assert [n["name"] for n in json.loads(as_json.stdout)] == ["laptop"]
    tools = _cortex("--server", server_proc.url, "tools", "laptop", "--json", token=token)
    assert "echo" in {t["name"] for t in json.loads(tools.stdout)}


def test_near_miss_names_get_suggestions(
    server_proc: ServerProc, start_node: Callable[..., AgentProc]
) -> None:
    start_node("laptop")
    token = server_proc.token()
    tool = _cortex("--server", server_proc.url, "call", "laptop", "ecoh", '{"text":"x"}', token=token)
    assert tool.returncode == 2
    assert "did you mean echo" in _one_line(tool.stderr)
    node = _cortex("--server", server_proc.url, "call", "lapton", "echo", '{"text":"x"}', token=token)
    assert node.returncode == 4
    assert "did you mean laptop" in _one_line(node.stderr)
    tools = _cortex("--server", server_proc.url, "tools", "laptp", token=token)
    assert tools.returncode == 4 and "did you mean laptop" in tools.stderr


def test_audit_is_human_readable_with_tail_and_follow(
    server_proc: ServerProc, start_node: Callable[..., AgentProc]
) -> None:
    start_node("laptop")
    token = server_proc.token()
    for i in range(3):
        assert _cortex("--server", server_proc.url, "call", "laptop", "echo", json.dumps({"text": f"t{i}"}),
                       token=token).returncode == 0  # fmt: skip
    tail = _cortex("--server", server_proc.url, "audit", "laptop", "-n", "2", token=token)
    assert tail.returncode == 0, tail.stderr
    lines = tail.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith("#") for line in lines)
    seqs = [int(line.split()[0][1:]) for line in lines]
    assert seqs[1] == seqs[0] + 1  # the newest two, oldest first
    as_json = _cortex("--server", server_proc.url, "audit", "laptop", "--tail", "3", "--json", token=token)
    assert len([json.loads(line) for line in as_json.stdout.splitlines()]) == 3

    follow = subprocess.Popen(
        [sys.executable, "-m", "sdk.cli", "--server", server_proc.url, "audit", "laptop", "-n", "1",
         "--follow", "--poll-interval", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_env({"CORTEX_TOKEN": token}),
        cwd=REPO,
    )  # fmt: skip
    started, seen = threading.Event(), threading.Event()

    def read() -> None:
        assert follow.stdout is not None
        for line in follow.stdout:
            started.set()  # the last record is shown: following from here on
            if "follow-me" in line:
                seen.set()
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert started.wait(20)
        called = _cortex(
            "--server", server_proc.url, "call", "laptop", "echo", '{"text":"follow-me"}', token=token
        )
        assert called.returncode == 0
        assert seen.wait(20), "the followed audit log did not show the new call"
    finally:
        follow.terminate()
        follow.wait(10)
        reader.join(10)
        assert follow.stdout is not None
        follow.stdout.close()


def test_whoami_names_the_identity_and_where_the_token_came_from(
    server_proc: ServerProc, tmp_path: Path
) -> None:
    token = server_proc.token("alice", "ws1", "member", ttl=3600)
    from_env = _cortex("--server", server_proc.url, "whoami", token=token)
    assert from_env.returncode == 0, from_env.stderr
    assert "subject:    alice" in from_env.stdout and "workspace:  ws1" in from_env.stdout
    assert "role:       member" in from_env.stdout and "UTC (in 59 min)" in from_env.stdout
    assert "token from: $CORTEX_TOKEN" in from_env.stdout and "accepts the token" in from_env.stdout
    from_flag = _cortex("--server", server_proc.url, "--token", token, "whoami", "--json")
    assert json.loads(from_flag.stdout)["token_source"] == "--token"
    home = tmp_path / "srv-home"
    home.mkdir()
    (home / "demo-token").write_text(token + "\n")
    from_file = _cortex("--server", server_proc.url, "whoami", env={"CORTEX_SERVER_HOME": str(home)})
    assert f"the demo-token file {home / 'demo-token'}" in from_file.stdout
    other = ServerProc(tmp_path / "other").token("mallory", "ws1", "admin")  # signed by another key
    refused = _cortex("--server", server_proc.url, "whoami", token=other)
    assert refused.returncode == 3
    assert "REFUSES the token" in refused.stdout and "issue-token" in refused.stderr


def test_errors_are_one_line_saying_what_to_do(server_proc: ServerProc, tmp_path: Path) -> None:
    host_port = server_proc.url.removeprefix("http://")
    ok = _cortex("--server", host_port, "nodes", token=server_proc.token())
    assert ok.returncode == 0, ok.stderr  # a scheme-less --server is accepted
    bad_token = _cortex("--server", server_proc.url, "nodes", token="garbage")
    assert bad_token.returncode == 3
    line = _one_line(bad_token.stderr)
    assert "$CORTEX_TOKEN" in line and "issue-token" in line
    no_token = _cortex("--server", server_proc.url, "nodes")
    assert no_token.returncode == 3 and "no token" in _one_line(no_token.stderr)
    bad_scheme = _cortex("--server", "ftp://x", "nodes", token="t")
    assert bad_scheme.returncode == 2 and "not a server address" in _one_line(bad_scheme.stderr)
    with refused_port() as port:
        down = _cortex("--server", f"127.0.0.1:{port}", "nodes", token="t")
    assert down.returncode == 4 and "cortex-server serve" in _one_line(down.stderr)
    nested = _cortex("--server", server_proc.url, "call", "n", "echo", "[" * 3000, token="t")
    assert nested.returncode == 2 and "not valid JSON" in _one_line(nested.stderr)  # was a traceback
    bridge = _cortex("--server", server_proc.url, "mcp-stdio", token="garbage")
    assert bridge.returncode == 3
    assert "refused the token" in _one_line(bridge.stderr)


def test_issue_token_warns_about_a_workspace_without_nodes(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    empty = _server_cli("issue-token", "alice", "--workspace", "me", "--data-dir", data)
    assert empty.returncode == 0 and empty.stdout.count(".") == 2  # the JWT, alone on stdout
    assert "workspace 'me' has no nodes yet" in _one_line(empty.stderr)
    assert _server_cli("enroll-node", "laptop", "--workspace", "me", "--data-dir", data).returncode == 0
    again = _server_cli("issue-token", "alice", "--workspace", "me", "--data-dir", data)
    assert again.returncode == 0 and again.stderr == ""
    typo = _server_cli("issue-token", "alice", "--workspace", "mee", "--data-dir", data)
    assert "workspaces with nodes: me" in typo.stderr


def test_help_has_descriptions_examples_and_exit_codes() -> None:
    for done in (
        _cortex("--help"),
        _cortex("audit", "--help"),
        _server_cli("--help"),
        _server_cli("serve", "--help"),
    ):
        assert done.returncode == 0
        assert "exit codes" in done.stdout and "example" in done.stdout
    serve = _server_cli("serve", "--help").stdout
    assert "(default 15)" in serve and "(default 300)" in serve and "16 MiB" in serve
    audit = _cortex("audit", "--help").stdout
    assert "-n N, --tail N" in audit and "--follow" in audit


def test_serve_demo_prints_a_ready_block(tmp_path: Path) -> None:
    server = ServerProc(tmp_path / "demo", args=["--demo"]).start()
    try:
        assert server.wait_output("Cortex is ready.", 20), "".join(server.output[-20:])
        assert server.wait_output("  try, in another terminal:", 5)
        out = "".join(server.output)
        assert f"dashboard    {server.url}/#token=" in out
        assert "cortex --server" in out and "call local echo" in out
        assert f"export CORTEX_SERVER_HOME={tmp_path / 'demo'}" in out
    finally:
        server.stop()
