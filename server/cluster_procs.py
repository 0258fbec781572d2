"""Child processes of `make cluster`: the engines (PostgreSQL, Redis), HAProxy, replicas and the demo node.

Where it sits: beside `server.cluster_demo` (the runner that composes them); nothing in the product's
request path imports it. It starts programs as children and never imports `desktop_agent` (the demo node
is `python3 -m desktop_agent.cli run`, a separate process).

Rules:

1. Every child dies with the runner: it asks the kernel for a signal when its parent goes
   (``PR_SET_PDEATHSIG``, set after any change of user, which would clear it) — a runner killed with -9
   leaves nothing behind. On a clean stop the runner stops them itself, newest first.
2. Every child's output goes to its own log file in the cluster directory; waiting for a child to be
   ready is bounded and woken by each new line (or by a successful connect, for HAProxy and PostgreSQL,
   which print nothing useful when ready).
3. A port is picked free and may be taken before a program that cannot bind port 0 binds it: such a
   start is retried on another port, a bounded number of times. Replicas bind port 0 and say theirs.
4. Secrets never travel on a command line: the database URL (which may hold a password) reaches the
   replicas in ``CORTEX_DATABASE_URL``, the Redis URL in ``CORTEX_REDIS_URL``.
5. PostgreSQL refuses to run as root: under root it runs as the ``postgres`` user.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "AgentChild",
    "Child",
    "ChildError",
    "HaproxyChild",
    "PostgresChild",
    "RedisChild",
    "ReplicaChild",
    "free_port",
    "postgres_bindir",
    "wait_connectable",
]

START_ATTEMPTS = 8
_PR_SET_PDEATHSIG = 1


class ChildError(RuntimeError):
    """A child did not start (its log's tail is in the message)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_connectable(port: int, timeout: float, alive: Callable[[], bool]) -> bool:
    """True once 127.0.0.1:port accepts a TCP connection (bounded; False if the child died first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            return False
        with socket.socket() as s:
            s.settimeout(1.0)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        threading.Event().wait(0.05)  # nothing to wake us: a connect is the only readiness signal
    return False


def _die_with_parent(sig: int) -> Callable[[], None]:
    def preexec() -> None:  # rule 1: runs in the child after fork (and after any setuid)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() == 1:  # the parent died between fork and prctl
            os._exit(0)

    return preexec


class Child:
    """One program as a child: output pumped to `log`, lines watched for readiness markers (rule 2)."""

    stop_signal = signal.SIGTERM

    def __init__(self, name: str, log: Path) -> None:
        self.name = name
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._pump: threading.Thread | None = None

    def spawn(
        self, cmd: list[str], env: dict[str, str], *, user: str | None = None, cwd: Path | None = None
    ) -> None:
        self.lines = []
        linux = sys.platform.startswith("linux")
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            user=user,
            cwd=cwd,
            process_group=0,  # a Ctrl-C reaches the runner only, which stops the children in order
            preexec_fn=_die_with_parent(int(self.stop_signal)) if linux else None,
        )
        self._pump = threading.Thread(target=self._pump_output, args=(self.proc,), daemon=True)
        self._pump.start()

    def _pump_output(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        fd = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with open(fd, "ab") as out:
            for raw in proc.stdout:
                out.write(raw)
                out.flush()
                with self._changed:
                    self.lines.append(raw.decode(errors="replace"))
                    self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_line(self, marker: str, timeout: float) -> str | None:
        """The first line containing `marker` within `timeout` (None: not seen, or the child ended)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if marker in line:
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.alive:
                    return None
                self._changed.wait(min(remaining, 0.5))

    def tail(self, n: int = 30) -> str:
        return "".join(self.lines[-n:])

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self._pump is not None:
            self._pump.join(timeout)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def kill(self) -> None:
        """kill -9: no shutdown of any kind (the fail-over test and benchmark)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.stop()


def _base_env() -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "TMPDIR", "DISPLAY", "XDG_RUNTIME_DIR")
    return {k: os.environ[k] for k in keep if k in os.environ}


class RedisChild(Child):
    """``redis-server`` on a loopback port, no persistence, in its own directory (rule 3)."""

    def __init__(self, root: Path, executable: str = "redis-server") -> None:
        super().__init__("redis", root / "redis.log")
        self.root = root
        self.executable = executable
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30.0) -> RedisChild:
        self.root.mkdir(parents=True, exist_ok=True)
        for _attempt in range(START_ATTEMPTS):
            self.port = free_port()
            cmd = [self.executable, "--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
            cmd += ["--appendonly", "no", "--dir", str(self.root), "--protected-mode", "yes"]
            self.spawn(cmd, _base_env())
            if self.wait_line("Ready to accept connections", timeout) and self.alive:
                return self
            self.stop()
            if "already in use" not in self.tail(100):
                raise ChildError(f"redis-server did not start:\n{self.tail()}")
        raise ChildError(f"redis-server found no free port in {START_ATTEMPTS} attempts")


def postgres_bindir() -> Path | None:
    """Where Debian keeps ``initdb``/``postgres`` (out of PATH), or None when PostgreSQL is not installed."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), reverse=True)
    found = shutil.which("postgres")
    if found:
        candidates.append(found)
    for binary in candidates:
        bindir = Path(binary).parent
        if (bindir / "initdb").exists():
            return bindir
    return None


class PostgresChild(Child):
    """A PostgreSQL cluster of its own in `root`, the postmaster a direct child (rules 1, 3, 5).

    Its superuser ``cortex`` has trust authentication on 127.0.0.1 only: this is the demo's throwaway
    database. A real deployment uses a password (in ``CORTEX_DATABASE_URL``) or certificates."""

    stop_signal = signal.SIGINT  # PostgreSQL's "fast" shutdown: roll back, disconnect, stop

    def __init__(self, root: Path, bindir: Path, *, fsync: bool = False) -> None:
        super().__init__("postgres", root / "postgres.log")
        self.temporary = False
        self.root = root
        self.bindir = bindir
        self.fsync = fsync
        self.port = 0
        self.user = "postgres" if os.geteuid() == 0 else None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://cortex@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 60.0) -> PostgresChild:
        if self.user is not None and not self._reachable(self.root.parent):
            # Another user cannot pass through the cluster directory (e.g. under /root, mode 0700): the
            # throwaway database goes to a temporary directory of its own instead, removed at stop.
            self.root = Path(tempfile.mkdtemp(prefix="cortex-cluster-pg-"))
            self.log = self.root / "postgres.log"
            self.temporary = True
        self.root.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            shutil.chown(self.root, self.user)
        os.chmod(self.root, 0o700)
        data = self.root / "data"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
        if not (data / "PG_VERSION").exists():
            done = subprocess.run(
                [str(self.bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "cortex", "-E", "UTF8",
                 "--no-locale"],
                user=self.user, env=env, cwd=self.root, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            if done.returncode != 0:
                raise ChildError(f"initdb failed:\n{done.stdout}{done.stderr}")
        for _attempt in range(START_ATTEMPTS):
            self.port = free_port()
            cmd = [str(self.bindir / "postgres"), "-D", str(data), "-k", str(self.root), "-h", "127.0.0.1"]
            cmd += ["-p", str(self.port), "-c", "max_connections=300"] + ([] if self.fsync else ["-F"])
            self.spawn(cmd, env, user=self.user, cwd=self.root)
            if self.wait_line("ready to accept connections", timeout) and self.alive:
                return self
            self.stop()
            if "already in use" not in self.tail(100):
                raise ChildError(f"PostgreSQL did not start:\n{self.tail()}")
        raise ChildError(f"PostgreSQL found no free port in {START_ATTEMPTS} attempts")

    def _reachable(self, directory: Path) -> bool:
        """Whether the postgres user can pass through `directory` (and every ancestor of it)."""
        done = subprocess.run(["test", "-x", str(directory)], user=self.user, capture_output=True, timeout=30)
        return done.returncode == 0

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        if self.temporary:
            shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self, name: str) -> str:
        """A database `name` (PostgreSQL's own ``createdb``: no driver here, the store owns that)."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
        cmd = [str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "cortex", name]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        if done.returncode != 0 and "already exists" not in done.stderr:
            raise ChildError(f"createdb failed:\n{done.stderr}")
        return self.url(name)


class HaproxyChild(Child):
    """Debian's ``haproxy`` in the foreground on a rendered config (see `server.haproxy`, rule 3)."""

    stop_signal = signal.SIGTERM  # a hard stop: open tunnels close at once (nodes reconnect elsewhere)

    def __init__(self, root: Path, render: Callable[[int], str], *, port: int = 0) -> None:
        super().__init__("haproxy", root / "haproxy.log")
        self.root = root
        self.render = render
        self.port = port
        self.config = root / "haproxy.cfg"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> HaproxyChild:
        executable = shutil.which("haproxy") or "/usr/sbin/haproxy"
        fixed = self.port != 0
        for _attempt in range(1 if fixed else START_ATTEMPTS):
            port = self.port if fixed else free_port()
            self.config.write_text(self.render(port), encoding="utf-8")
            self.spawn([executable, "-db", "-f", str(self.config)], _base_env())
            if wait_connectable(port, timeout, lambda: self.alive):
                self.port = port
                return self
            self.stop()
            if fixed or "cannot bind" not in self.tail(100).lower():
                raise ChildError(f"haproxy did not start on port {port}:\n{self.tail()}")
        raise ChildError(f"haproxy found no free port in {START_ATTEMPTS} attempts")


class ReplicaChild(Child):
    """``cortex-server serve`` bound to port 0 on loopback; its port is read from its first line (rule 3)."""

    stop_signal = signal.SIGTERM

    def __init__(self, name: str, root: Path, data_dir: Path, env: dict[str, str], args: list[str]) -> None:
        super().__init__(name, root / f"{name}.log")
        self.data_dir = data_dir
        self.env = env
        self.args = args
        self.url = ""

    def launch(self) -> None:
        cmd = [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", "0"]
        cmd += ["--data-dir", str(self.data_dir), *self.args]
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.spawn(cmd, {**_base_env(), **self.env})

    def wait_ready(self, timeout: float = 60.0) -> ReplicaChild:
        line = self.wait_line("cortex-server listening on", timeout)
        if line is None:
            self.stop()
            raise ChildError(f"replica {self.name} did not start:\n{self.tail()}")
        self.url = line.rsplit(" ", 1)[-1].strip()
        return self

    def start(self, timeout: float = 60.0) -> ReplicaChild:
        self.launch()
        return self.wait_ready(timeout)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


class AgentChild(Child):
    """``cortex-agent run`` (a separate program: this module never imports the agent)."""

    stop_signal = signal.SIGTERM

    def __init__(self, name: str, root: Path, home: Path, server_url: str, args: list[str]) -> None:
        super().__init__(f"node-{name}", root / f"node-{name}.log")
        self.node = name
        self.home = home
        self.server_url = server_url
        self.args = args

    def login(self, credential: str) -> None:
        """``cortex-agent login``: the credential on stdin, stored 0600 in the agent's home (rule 4)."""
        cmd = [sys.executable, "-m", "desktop_agent.cli", "login", "--server", self.server_url]
        cmd += ["--name", self.node, "--home", str(self.home)]
        done = subprocess.run(
            cmd, input=credential + "\n", env=_base_env(), capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            raise ChildError(f"cortex-agent login failed ({done.returncode}):\n{done.stderr}")

    def start(self) -> AgentChild:
        cmd = [sys.executable, "-m", "desktop_agent.cli", "run", "--home", str(self.home)]
        cmd += ["--server", self.server_url, "--name", self.node, *self.args]
        env = {k: v for k, v in _base_env().items() if not k.startswith("CORTEX_")}
        self.spawn(cmd, env)
        return self


def run_cli(args: list[str], env: dict[str, str], timeout: float = 60.0) -> str:
    """One ``cortex-server`` admin command (enroll-node, issue-token); returns its stdout, stripped."""
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        env={**_base_env(), **env}, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if done.returncode != 0:
        raise ChildError(f"cortex-server {args[0]} failed ({done.returncode}):\n{done.stderr}")
    with contextlib.suppress(IndexError):
        return done.stdout.strip().splitlines()[-1]
    return ""
