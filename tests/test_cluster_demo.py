"""`make cluster`'s runner end to end: `python3 -m server.cluster_demo` as a user runs it (issue 15).

Real processes only: PostgreSQL, Redis, three replicas, HAProxy and the demo node, all started by the
runner. Checked: the ready block, the demo node listed connected (once) on every replica and through
HAProxy, a call through HAProxy, a clean stop on Ctrl-C with no process left, and no process left either
when the runner itself is killed with -9 (each child dies with its parent).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from server.cluster_demo import READY_LINE
from server.cluster_procs import postgres_bindir
from tests.support.pids import descendants_with, pids_with, wait_gone
from tests.support.procs import REPO, _env

pytestmark = pytest.mark.skipif(
    postgres_bindir() is None
    or shutil.which("redis-server") is None
    or not Path("/usr/sbin/haproxy").exists(),
    reason="make cluster needs postgresql, redis-server and haproxy (apt-get install, as .ci/run does)",
)


class Runner:
    def __init__(self, data_dir: Path, *args: str) -> None:
        self.data_dir = data_dir
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server.cluster_demo", "--data-dir", str(data_dir), "--port", "0", *args],
            env=_env(),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.pump = threading.Thread(target=self._pump, daemon=True)
        self.pump.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if "Ctrl-C stops" in line:
                self.ready.set()
        self.ready.set()

    def field(self, label: str) -> str:
        for line in self.lines:
            if line.strip().startswith(label):
                return line.split()[1]
        raise AssertionError(f"no {label} line in:\n{''.join(self.lines)}")

    def children(self) -> list[int]:
        """Every process descended from the runner (PostgreSQL's and Redis's included, whose command lines
        name no path of ours) and every process naming the data dir, other than the runner itself."""
        found = set(descendants_with(self.proc.pid, "")) | set(pids_with(str(self.data_dir)))
        return sorted(found - {self.proc.pid})


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[Runner]:
    run = Runner(tmp_path / "cluster")
    started: list[int] = []
    try:
        assert run.ready.wait(180), "".join(run.lines)
        assert any(READY_LINE in line for line in run.lines), "".join(run.lines)
        started = run.children()
        yield run
    finally:
        if run.proc.poll() is None:
            run.proc.send_signal(signal.SIGINT)
            try:
                run.proc.wait(60)
            except subprocess.TimeoutExpired:
                run.proc.kill()
        for pid in {*run.children(), *started}:  # a failed test leaves nothing behind either
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        run.pump.join(10)
        assert run.proc.stdout is not None
        run.proc.stdout.close()


def test_make_cluster_runs_stops_and_leaves_nothing(runner: Runner) -> None:
    dashboard = runner.field("dashboard")
    lb, token = re.fullmatch(r"(http://127\.0\.0\.1:\d+)/#token=(.+)", dashboard).groups()  # type: ignore[union-attr]
    assert (runner.data_dir / "demo-token").read_text().strip() == token
    assert (runner.data_dir / "demo-token").stat().st_mode & 0o777 == 0o600
    replicas = [runner.field(f"replica-{i}") for i in (1, 2, 3)]
    assert len(set(replicas)) == 3 and lb not in replicas
    headers = {"Authorization": f"Bearer {token}"}
    with httpx2.Client(headers=headers, timeout=30) as http:
        for url in [*replicas, lb]:
            nodes = http.get(f"{url}/api/v1/nodes").json()["nodes"]
            assert [(n["name"], n["status"]) for n in nodes] == [("local", "connected")], (url, nodes)
        call = http.post(f"{lb}/api/v1/nodes/local/tools/echo/call", json={"arguments": {"text": "through"}})
        assert call.status_code == 200, call.text
        assert call.json()["content"][0]["text"] == "through"
    children = runner.children()
    assert len(children) >= 6, children  # postgres, redis, 3 replicas, haproxy, the node
    # No secret on any command line: the database and Redis URLs travel in the environment.
    for pid in children:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        assert token not in cmdline and "postgresql://" not in cmdline and "redis://" not in cmdline
    runner.proc.send_signal(signal.SIGINT)
    assert runner.proc.wait(60) == 0, "".join(runner.lines[-20:])
    assert wait_gone(children, 30), [p for p in children if Path(f"/proc/{p}").exists()]
    assert pids_with(str(runner.data_dir)) == []


def test_children_die_with_a_killed_runner(runner: Runner) -> None:
    children = runner.children()
    assert len(children) >= 6, children
    runner.proc.kill()  # no clean-up of any kind: the kernel's parent-death signal must do it
    runner.proc.wait(10)
    assert wait_gone(children, 60), [p for p in children if Path(f"/proc/{p}").exists()]
