"""Real processes for loopback tests: a `cortex-server serve` and `cortex-agent run` nodes.

Everything listens on 127.0.0.1 only. Waiting is event-driven: the server prints its address when it is
up, and node status changes are read from the server's own SSE stream (`/api/v1/events`), each wait
bounded by a timeout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
from websockets.asyncio.client import ClientConnection, connect

from server import admin

__all__ = ["AgentProc", "ServerProc", "free_port", "raw_node_socket", "refused_port"]

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A port free *now*. Racy for a listener (another process may take it before the bind): let the
    listener bind port 0 and read its port back instead; for a port that must refuse, `refused_port`."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections for as long as the block runs.

    The socket stays bound but never listens: Linux answers a connect with RST (ECONNREFUSED), and no
    other process can bind the port meanwhile — so "the server is unreachable" cannot turn into
    "something else answers"."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORTEX_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class _Child:
    """A child process whose output is collected line by line by a pump thread."""

    proc: subprocess.Popen[str] | None = None
    output: list[str]
    _pump: threading.Thread | None = None
    _new_output = threading.Condition()  # shared by all children: waiters re-check their own output

    def _spawn(self, cmd: list[str], env: dict[str, str], ready_marker: str | None = None) -> threading.Event:
        """Start `cmd`; the returned event fires when a line contains `ready_marker` (or output ends)."""
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO
        )
        ready = threading.Event()

        def pump(proc: subprocess.Popen[str]) -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                with self._new_output:
                    self.output.append(line)
                    self._new_output.notify_all()
                if ready_marker is not None and ready_marker in line:
                    ready.set()
            ready.set()

        self._pump = threading.Thread(target=pump, args=(self.proc,), daemon=True)
        self._pump.start()
        return ready

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_output(self, text: str, timeout: float) -> bool:
        """Block until a line containing `text` was printed (woken by each new line, bounded)."""
        deadline = time.monotonic() + timeout
        with self._new_output:
            while not any(text in line for line in self.output):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._new_output.wait(remaining):
                    return any(text in line for line in self.output)
        return True

    def kill(self) -> None:
        """kill -9: no shutdown of any kind."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._reap()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reap()

    def _reap(self) -> None:
        """After the child exited: let the output pump reach EOF, then close the pipe."""
        if self._pump is not None:
            self._pump.join(10)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


class ServerProc(_Child):
    """`cortex-server serve` in a child process, restartable on the same port.

    Without a `port` the server binds port 0 and the port is read back from its "listening on" line (a port
    picked here and bound later can be taken by another process in between); restarts reuse that port."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        database_url: str | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.database_url = database_url
        """``--database-url`` of the server and of its admin commands (None: SQLite in data_dir)."""
        self.port = port or 0
        self.args = args or []
        self.env = env or {}
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self._admin_token: str | None = None

    @property
    def url(self) -> str:
        scheme = "https" if "--tls-cert" in self.args else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> ServerProc:
        cmd = [
            sys.executable,
            "-m",
            "server.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            "--log-level",
            "info",
            *(["--database-url", self.database_url] if self.database_url else []),
            *self.args,
        ]
        ready = self._spawn(cmd, _env(self.env), "cortex-server listening on")
        assert self.proc is not None
        if not ready.wait(timeout) or self.proc.poll() is not None:
            raise RuntimeError("server did not start:\n" + "".join(self.output[-40:]))
        if not self.port:
            line = next(line for line in self.output if "cortex-server listening on" in line)
            self.port = int(line.rsplit(":", 1)[1].strip().rstrip("/"))
        return self

    def enroll(self, name: str, workspace: str = "ws1") -> str:
        return admin.enroll_node(self.data_dir, name, workspace, self.database_url)

    def token(self, sub: str = "alice", workspace: str = "ws1", role: str = "member", ttl: int = 3600) -> str:
        return admin.issue_token(self.data_dir, sub, workspace, role, ttl, self.database_url)

    @property
    def admin_token(self) -> str:
        if self._admin_token is None:
            self._admin_token = self.token("root", "ws1", "admin")
        return self._admin_token

    def http(self, token: str | None = None) -> httpx2.Client:
        headers = {"Authorization": f"Bearer {token or self.admin_token}"}
        return httpx2.Client(base_url=self.url, headers=headers, timeout=30)

    def node(self, name: str) -> dict[str, Any]:
        with self.http() as http:
            response = http.get(f"/api/v1/nodes/{name}")
            response.raise_for_status()
            data: dict[str, Any] = response.json()
            return data

    @contextmanager
    def events(self) -> Iterator[EventStream]:
        """The server's SSE stream of node events, seen by an admin."""
        with self.http() as http, http.stream("GET", "/api/v1/events", timeout=None) as response:
            yield EventStream(response)

    def wait_status(self, name: str, status: str, timeout: float = 20.0) -> dict[str, Any]:
        """Block until the server reports node `name` with `status` (read from SSE, bounded)."""
        result: dict[str, Any] = {}
        done = threading.Event()
        error: list[BaseException] = []

        def watch() -> None:
            try:
                with self.events() as stream:
                    for _event, data in stream.items(deadline=time.monotonic() + timeout):
                        if data.get("name") == name and data.get("status") == status:
                            result.update(data)
                            done.set()
                            return
            except BaseException as exc:  # surfaced below
                error.append(exc)
                done.set()

        threading.Thread(target=watch, daemon=True).start()
        if not done.wait(timeout) or not result:
            raise TimeoutError(f"node {name} did not become {status} in {timeout} s ({error})")
        return result


class EventStream:
    def __init__(self, response: httpx2.Response) -> None:
        self.response = response

    def items(self, deadline: float) -> Iterator[tuple[str, dict[str, Any]]]:
        event = "message"
        for line in self.response.iter_lines():
            if time.monotonic() > deadline:
                return
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                yield event, json.loads(line[5:].strip())


class AgentProc(_Child):
    """`cortex-agent run` in a child process; its credential travels in the environment only."""

    def __init__(
        self, home: Path, server_url: str, name: str, credential: str, args: list[str] | None = None
    ) -> None:
        self.home = home
        self.server_url = server_url
        self.name = name
        self.credential = credential
        self.args = args or []
        self.output: list[str] = []

    def start(self) -> AgentProc:
        self.home.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "desktop_agent.cli",
            "run",
            "--home",
            str(self.home),
            "--server",
            self.server_url,
            "--name",
            self.name,
            "--log-level",
            "debug",
            *self.args,
        ]
        self._spawn(cmd, _env({"CORTEX_NODE_CREDENTIAL": self.credential}))
        return self


async def raw_node_socket(
    server: ServerProc,
    name: str,
    workspace: str = "ws1",
    *,
    ping_interval: float | None = 20.0,
    subprotocols: tuple[str, ...] = ("cortex.v1",),
) -> ClientConnection:
    """A tunnel socket for a freshly enrolled node, driven by hand (for protocol-level tests)."""
    credential = server.enroll(name, workspace)
    async with httpx2.AsyncClient() as http:
        response = await http.post(
            server.url + "/oauth/token",
            data={"grant_type": "client_credentials", "client_id": name, "client_secret": credential},
        )
    return await connect(
        server.url.replace("http", "ws") + "/api/v1/nodes/connect",
        additional_headers={"Authorization": f"Bearer {response.json()['access_token']}"},
        subprotocols=list(subprotocols),  # type: ignore[arg-type]
        max_size=None,
        ping_interval=ping_interval,
    )
