"""Shared plumbing of the benchmark suite: real server and agent processes, /proc readings, figures.

Where it sits: outside the product, under every `bench` scenario module. It starts `cortex-server serve`
and `cortex-agent run` as child processes on 127.0.0.1 (port 0), enrolls nodes and mints tokens straight
from the server's data directory (the same `ServerStore` / `TokenAuthority` the server uses), raises file
descriptor limits for thousands of sockets, and reads RSS and CPU time of a process from /proc.
Every wait is bounded by a deadline.
"""

from __future__ import annotations

import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.auth import TokenAuthority
from server.store import ServerStore

__all__ = [
    "AgentProcess",
    "Row",
    "ServerProcess",
    "cpu_seconds",
    "percentile",
    "raise_fd_limit",
    "rss_kib",
]

REPO = Path(__file__).resolve().parents[1]
_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Row:
    """One line of the result table: our figure beside the reference measured in the same run."""

    scenario: str
    ours: float | None
    reference: float | None
    unit: str
    higher_is_better: bool = True
    note: str = ""
    target: str = ""

    @property
    def ratio(self) -> float | None:
        if self.ours is None or self.reference is None or self.reference == 0:
            return None
        return self.ours / self.reference

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "ours": self.ours,
            "reference": self.reference,
            "unit": self.unit,
            "ratio": self.ratio,
            "note": self.note,
            "target": self.target,
        }


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_kib(pid: int) -> int:
    """VmRSS of *pid* in KiB, from /proc/<pid>/status."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of *pid* in seconds, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        text = f.read()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def percentile(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=100, method="inclusive")[max(0, min(98, int(q) - 1))]


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORTEX_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def _raise_child_fd_limit() -> None:  # preexec_fn: runs in the child between fork and exec
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _wait_for_line(path: Path, needle: str, proc: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                if needle in line:
                    return line
        if proc.poll() is not None:
            break
        time.sleep(0.05)  # polling a log file: no event to wait on
    tail = path.read_text(errors="replace")[-3000:] if path.exists() else ""
    raise RuntimeError(f"{needle!r} did not appear within {timeout} s:\n{tail}")


@dataclass
class ServerProcess:
    """`cortex-server serve` on 127.0.0.1, port 0, output to a log file (a full pipe would stall it)."""

    data_dir: Path
    heartbeat_interval: float = 15.0
    log_level: str = "warning"
    extra_args: list[str] = field(default_factory=list)
    log_name: str = "server.log"  # in data_dir; replicas sharing a data dir each name their own
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def ws_base(self) -> str:
        return "ws://" + self.url.removeprefix("http://")

    def start(self, timeout: float = 30.0) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.data_dir / self.log_name
        cmd = [
            sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", "0",
            "--data-dir", str(self.data_dir), "--log-level", self.log_level,
            "--heartbeat-interval", str(self.heartbeat_interval), *self.extra_args,
        ]  # fmt: skip
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                cmd, env=_env(), stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                preexec_fn=_raise_child_fd_limit,
            )  # fmt: skip
        line = _wait_for_line(log, "cortex-server listening on", self.proc, timeout)
        self.url = line.rsplit(" ", 1)[-1].strip()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    # -- identity straight from the data dir (as `cortex-server enroll-node / issue-token` do) -------
    def enroll(self, names: list[str], workspace: str) -> dict[str, str]:
        store = ServerStore(self.data_dir)
        try:
            return {name: store.enroll_node(name, workspace) for name in names}
        finally:
            store.close()

    def authority(self) -> TokenAuthority:
        store = ServerStore(self.data_dir)
        try:
            return TokenAuthority(store.load_or_create_signing_key())
        finally:
            store.close()

    def user_token(self, sub: str = "bench", workspace: str = "bench", role: str = "admin") -> str:
        return self.authority().mint_user_token(sub, workspace, role=role, ttl=3600)


@dataclass
class AgentProcess:
    """`cortex-agent run` as a child process; the credential travels in its environment only."""

    home: Path
    server_url: str
    name: str
    credential: str
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        self.home.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "desktop_agent.cli", "run", "--home", str(self.home),
            "--server", self.server_url, "--name", self.name, "--log-level", "warning", *self.args,
        ]  # fmt: skip
        with open(self.home / "agent.out", "wb") as out:
            self.proc = subprocess.Popen(
                cmd, env=_env({"CORTEX_NODE_CREDENTIAL": self.credential}), stdout=out,
                stderr=subprocess.STDOUT, cwd=REPO,
            )  # fmt: skip
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
