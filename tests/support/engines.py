"""Real database engines for tests: a PostgreSQL 15 and a Redis from the Debian packages, as children.

Where it sits: test support beside `tests.support.procs` (which runs our own server and agent processes).
The scale-out tests run the server against these engines; nothing here fakes an engine.

Rules:

1. Each engine runs from a fresh temporary directory on a loopback port and is stopped (and its directory
   removed) at the end. A port is chosen free and may be taken before the engine binds it (it is a server
   we do not control, so it cannot bind port 0 and report back): a start that fails with "address in use"
   is retried on another port, a bounded number of times.
2. Waiting is bounded and event-driven: ``pg_ctl -w`` returns when PostgreSQL accepts connections; Redis
   is ready when it prints its "Ready to accept connections" line.
3. PostgreSQL refuses to run as root: under root it runs as the ``postgres`` user (its directory is
   chowned to it); otherwise as the current user. It runs with ``-F`` (no fsync): for tests only.
4. When an engine's binaries are absent the fixtures skip with a reason saying which package to install
   (CI installs both: ``.ci/run``).

Fixtures: ``postgres`` (session: one server) and ``pg_url`` (a fresh, empty database per test, dropped
after it); ``redis_server`` (session) and ``redis_url`` (the same server, emptied before each test);
``database``, parametrized over both store engines (``sqlite`` and ``postgresql``): a `Database` whose
`Database.open` gives a new `server.store.Store` on the same state (a second open is "another process").
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.procs import _Child, free_port

if TYPE_CHECKING:
    from server.store import Store

__all__ = [
    "Database",
    "PostgresServer",
    "RedisServer",
    "database",
    "pg_url",
    "postgres",
    "postgres_bindir",
    "redis_server",
    "redis_url",
]

_START_ATTEMPTS = 8
_REDIS_READY = "Ready to accept connections"
PG_USER = "cortex"
"""The superuser ``initdb`` creates (trust authentication on loopback: no password)."""


def postgres_bindir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` live (Debian keeps them out of PATH), or None if not installed."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    found = shutil.which("pg_ctl")
    if found:
        candidates.append(found)
    for pg_ctl in candidates:
        bindir = Path(pg_ctl).parent
        if (bindir / "initdb").exists() and (bindir / "postgres").exists():
            return bindir
    return None


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory, listening on 127.0.0.1 only (rules 1-3)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = 0
        self.root = Path(tempfile.mkdtemp(prefix="cortex-pg-"))
        self._user: str | None = "postgres" if os.geteuid() == 0 else None
        self._started = False
        self._names = 0
        self._lock = threading.Lock()

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
        return subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            user=self._user,
            env=env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self) -> PostgresServer:
        if self._user is not None:
            shutil.chown(self.root, self._user)
        os.chmod(self.root, 0o700)
        done = self._run(
            "initdb", "-D", str(self.data), "-A", "trust", "-U", PG_USER, "-E", "UTF8", "--no-locale"
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{done.stdout}{done.stderr}")
        log = self.root / "log"
        for _attempt in range(_START_ATTEMPTS):
            self.port = free_port()
            options = f"-k {self.root} -h 127.0.0.1 -p {self.port} -F -c max_connections=300"
            done = self._run(
                "pg_ctl", "-D", str(self.data), "-o", options, "-l", str(log), "-w", "-t", "90", "start"
            )
            if done.returncode == 0:
                self._started = True
                return self
            text = log.read_text(errors="replace") if log.exists() else ""
            if "already in use" not in text:
                raise RuntimeError(f"PostgreSQL did not start:\n{done.stdout}{done.stderr}\n{text[-3000:]}")
            log.unlink(missing_ok=True)
        raise RuntimeError(f"PostgreSQL found no free port in {_START_ATTEMPTS} attempts")

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        with self._lock:
            self._names += 1
            name = f"t{self._names}"
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=30) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        import psycopg

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=30) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        if self._started:
            self._started = False
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RedisServer(_Child):
    """``redis-server`` as a child on 127.0.0.1, no persistence, in a temporary directory (rules 1-2)."""

    def __init__(self, executable: str = "redis-server") -> None:
        self.executable = executable
        self.port = 0
        self.root = Path(tempfile.mkdtemp(prefix="cortex-redis-"))
        self.output: list[str] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30.0) -> RedisServer:
        for _attempt in range(_START_ATTEMPTS):
            self.port = free_port()
            self.output = []
            cmd = [self.executable, "--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
            cmd += ["--appendonly", "no", "--dir", str(self.root), "--protected-mode", "no"]
            ready = self._spawn(cmd, {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, _REDIS_READY)
            assert self.proc is not None
            # The event also fires when the output ends (the server died): only the line itself is ready.
            if ready.wait(timeout) and self.wait_output(_REDIS_READY, 0) and self.proc.poll() is None:
                return self
            self.stop()
            if not any("already in use" in line for line in self.output):
                raise RuntimeError("redis-server did not start:\n" + "".join(self.output[-30:]))
        raise RuntimeError(f"redis-server found no free port in {_START_ATTEMPTS} attempts")

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL 15 for the whole session (rule 4: skips only when the binaries are absent)."""
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL binaries absent: apt-get install postgresql (as .ci/run does)")
    server = PostgresServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(postgres: PostgresServer) -> Iterator[str]:
    """``postgresql://cortex@127.0.0.1:P/tN``: a database of this test's own."""
    url = postgres.create_database()
    try:
        yield url
    finally:
        with contextlib.suppress(Exception):
            postgres.drop_database(url)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One Redis for the whole session (rule 4: skips only when redis-server is absent)."""
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.skip("redis-server absent: apt-get install redis-server (as .ci/run does)")
    server = RedisServer(executable)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """``redis://127.0.0.1:P/0`` on the session's Redis, emptied (FLUSHALL) before this test."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=redis_server.port, socket_timeout=10)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url


@dataclasses.dataclass(frozen=True)
class Database:
    """One test's store state: *url* None means the SQLite file in *data_dir*."""

    engine: str
    data_dir: Path
    url: str | None

    async def open(self) -> Store:
        """A new `server.store.Store` on this state (the caller closes it)."""
        from server.stores import open_store

        return await open_store(self.url, self.data_dir)

    @property
    def cli_args(self) -> list[str]:
        """What to add to a ``cortex-server`` command line for this state."""
        return ["--database-url", self.url] if self.url else []


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    """The same test once on SQLite and once on a real PostgreSQL (skipped only without its binaries)."""
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    return Database(request.param, tmp_path / "server-home", url)
