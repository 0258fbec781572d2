"""`make cluster`: three `cortex-server serve` replicas on PostgreSQL and Redis behind HAProxy, on loopback.

Where it sits: a runner above the product, like `server.demo` is for `make run`; it composes programs
(`server.cluster_procs`) and never imports the agent. ``python3 -m server.cluster_demo [--data-dir DIR]``.

What it starts, under ``<data dir>/run`` (emptied at every start: each run is a fresh cluster):

1. PostgreSQL (the shared store: nodes, credentials, signing keys, revocations) and Redis (the live
   registry, events and calls between replicas), each in its own directory on a free loopback port.
2. N replicas (default 3) on port 0 of 127.0.0.1, each told the database and Redis URLs in its
   environment only (``CORTEX_DATABASE_URL``, ``CORTEX_REDIS_URL``: never on a command line).
3. HAProxy on ``--port`` (default 8765, the address `cortex` uses by default), config rendered from
   ``server/templates/haproxy.cfg`` into the run directory (`server.haproxy`): round-robin, WebSockets
   as tunnels, health checks on ``/healthz``, MCP sessions sticky on ``Mcp-Session-Id``.
4. The demo node ``local`` (workspace ``local``), enrolled through the CLI and logged in with
   ``cortex-agent login`` (credential on stdin), connecting *through HAProxy*; confined like the
   `make run` demo node (its own root beside the data dir, the data dir protected, no shell).
5. An admin token in ``<data dir>/demo-token`` (0600) for the dashboard link and the `cortex` command.

Ctrl-C (or SIGTERM) stops everything, newest first; every child also dies with the runner if the runner
is killed (``PR_SET_PDEATHSIG``, `server.cluster_procs` rule 1). Children run in their own process
groups so that one Ctrl-C is the runner's to handle in order.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import httpx2

from server.cluster_procs import (
    AgentChild,
    Child,
    ChildError,
    HaproxyChild,
    PostgresChild,
    RedisChild,
    ReplicaChild,
    postgres_bindir,
    run_cli,
)
from server.haproxy import Backend, render_config
from spec.manifest import load_manifest

__all__ = ["DEMO_NODE", "Cluster", "main"]

DEMO_NODE = "local"
DEMO_TOKEN_FILE = "demo-token"
READY_LINE = "Cortex cluster is ready"
_UNCONFINED_TOOLS = frozenset({"shell_exec", "process_start"})


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, 0o600)


def _write_node_policy(home: Path, root: Path, protected: Path) -> None:
    """The demo node's agent.toml: the same confinement as `make run`'s node (spec/security.md "Demo")."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    enabled = ", ".join(json.dumps(t["name"]) for t in load_manifest() if t["name"] not in _UNCONFINED_TOOLS)
    _write_private(
        home / "agent.toml",
        "# Written by `make cluster` (server/cluster_demo.py): confined like the `make run` demo node.\n"
        + f"allowed_roots = [{json.dumps(str(root))}]\n"
        + f"protected_paths = [{json.dumps(os.path.realpath(protected))}]\n"
        + f"\n[tools]\nenabled = [{enabled}]\n\n[shell]\nenabled = false\n",
    )


def _haproxy_maxconn() -> int:
    """As many connections as HAProxy's files allow (two per proxied connection), the limit raised first."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        soft = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return max(256, min(50_000, (soft - 200) // 2))


class Cluster:
    """The whole loopback cluster; `start` brings it up (rules 1-5), `stop` takes it down newest first."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 8765,
        replicas: int = 3,
        sticky_mcp: bool = True,
        node: bool = True,
        replica_args: list[str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.run_dir = data_dir / "run"
        self.port = port
        self.replica_count = replicas
        self.sticky_mcp = sticky_mcp
        self.with_node = node
        self.replica_args = replica_args or []
        self.children: list[Child] = []
        self.postgres: PostgresChild | None = None
        self.redis: RedisChild | None = None
        self.replicas: list[ReplicaChild] = []
        self.haproxy: HaproxyChild | None = None
        self.agent: AgentChild | None = None
        self.env: dict[str, str] = {}
        self.token = ""

    @property
    def url(self) -> str:
        assert self.haproxy is not None
        return self.haproxy.url

    def _started(self, child: Child) -> None:
        self.children.append(child)

    def start(self) -> Cluster:
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.run_dir.mkdir(parents=True, mode=0o700)
        os.chmod(self.data_dir, 0o700)
        bindir = postgres_bindir()
        if bindir is None:
            raise ChildError("PostgreSQL is not installed: apt-get install postgresql (as .ci/run does)")
        redis_server = shutil.which("redis-server")
        if redis_server is None:
            raise ChildError("redis-server is not installed: apt-get install redis-server")
        if shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists():
            raise ChildError("haproxy is not installed: apt-get install haproxy")
        self.postgres = PostgresChild(self.run_dir / "postgres", bindir)
        self._started(self.postgres)
        self.postgres.start()
        self.redis = RedisChild(self.run_dir / "redis", redis_server)
        self._started(self.redis)
        self.redis.start()
        database_url = self.postgres.create_database("cortex")
        self.env = {"CORTEX_DATABASE_URL": database_url, "CORTEX_REDIS_URL": self.redis.url}
        store_dir = self.run_dir / "replica-data"  # a replica's own files (artifacts spill); state is shared
        args = ["--log-level", "warning", *self.replica_args]
        # The first replica migrates the database and creates the signing key; the others join it.
        for i in range(self.replica_count):
            replica = ReplicaChild(f"replica-{i + 1}", self.run_dir, store_dir / str(i + 1), self.env, args)
            self._started(replica)
            self.replicas.append(replica)
            if i == 0:
                replica.start()
        for replica in self.replicas[1:]:
            replica.launch()
        for replica in self.replicas[1:]:
            replica.wait_ready()
        backends = [Backend(r.name, "127.0.0.1", r.port) for r in self.replicas]
        pidfile = str(self.run_dir / "haproxy.pid")
        maxconn = _haproxy_maxconn()
        self.haproxy = HaproxyChild(
            self.run_dir,
            lambda port: render_config(
                port, backends, pidfile=pidfile, sticky_mcp=self.sticky_mcp, maxconn=maxconn
            ),
            port=self.port,
        )
        self._started(self.haproxy)
        self.haproxy.start()
        issue = ["issue-token", "demo-admin", "--workspace", DEMO_NODE, "--role", "admin", "--ttl", "43200"]
        self.token = run_cli([*issue, "--data-dir", str(store_dir / "1")], self.env)
        _write_private(self.data_dir / DEMO_TOKEN_FILE, self.token + "\n")
        if self.with_node:
            self._start_node(store_dir / "1")
        return self

    def _start_node(self, data_dir: Path) -> None:
        credential = run_cli(
            ["enroll-node", DEMO_NODE, "--workspace", DEMO_NODE, "--data-dir", str(data_dir)], self.env
        )
        home = self.run_dir / "demo-agent"
        _write_node_policy(home, self.data_dir.with_name(self.data_dir.name + "-demo-root"), self.data_dir)
        self.agent = AgentChild(DEMO_NODE, self.run_dir, home, self.url, ["--no-browser"])
        self.agent.login(credential)  # through HAProxy: the credential is checked, then stored 0600
        self._started(self.agent)
        self.agent.start()
        self.wait_listed(DEMO_NODE, timeout=60)

    def wait_listed(self, name: str, timeout: float) -> None:
        """Until every replica lists `name` connected (bounded): the node is callable from each of them."""
        deadline = time.monotonic() + timeout
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx2.Client(headers=headers, timeout=10) as http:
            for replica in self.replicas:
                while True:
                    try:
                        node = http.get(f"{replica.url}/api/v1/nodes/{name}")
                        if node.status_code == 200 and node.json()["status"] == "connected":
                            break
                    except httpx2.HTTPError:
                        pass
                    if time.monotonic() > deadline:
                        tail = self.agent.tail() if self.agent else ""
                        raise ChildError(f"{name} not connected on {replica.name} in {timeout} s\n{tail}")
                    threading.Event().wait(0.1)

    def stop(self) -> None:
        for child in reversed(self.children):
            try:
                child.stop()
            except Exception as exc:  # keep stopping the others
                print(f"cortex cluster: stopping {child.name}: {exc}", file=sys.stderr)
        self.children.clear()

    def ready_block(self) -> str:
        """What `make cluster` shows once everything is up: the link, the parts, commands to try."""
        assert self.haproxy is not None and self.postgres is not None and self.redis is not None
        server_flag = "" if self.url == "http://127.0.0.1:8765" else f" --server {self.url}"
        lines = [
            "",
            f"  {READY_LINE}: {len(self.replicas)} replicas behind HAProxy.",
            "",
            f"  dashboard    {self.url}/#token={self.token}",
            *[f"  {r.name:<12} {r.url}" for r in self.replicas],
            f"  haproxy      {self.url} (config {self.haproxy.config})",
            f"  postgresql   127.0.0.1:{self.postgres.port} (database cortex)",
            f"  redis        127.0.0.1:{self.redis.port}",
            *(
                [f"  demo node    '{DEMO_NODE}' in workspace '{DEMO_NODE}', connected through HAProxy"]
                if self.agent
                else []
            ),
            f"  admin token  {self.data_dir / DEMO_TOKEN_FILE} (the `cortex` command finds it by itself)",
            f"  logs         {self.run_dir}/*.log",
            "",
            "  try, in another terminal:",
            f"    export CORTEX_SERVER_HOME={self.data_dir}",
            f"    cortex{server_flag} nodes",
            f'    cortex{server_flag} call {DEMO_NODE} echo \'{{"text":"hi"}}\'',
            "",
            "  Ctrl-C stops the replicas, PostgreSQL, Redis, HAProxy and the demo node.",
            "",
        ]
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m server.cluster_demo", description=__doc__.split("\n")[0]
    )
    default_dir = Path(os.environ.get("CORTEX_SERVER_HOME", "~/.cortex-server")).expanduser()
    parser.add_argument("--data-dir", type=Path, default=Path(str(default_dir) + "-cluster"))
    parser.add_argument("--port", type=int, default=8765, help="HAProxy's port (0: a free one)")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--no-sticky-mcp", action="store_true", help="plain round-robin for /mcp too")
    args = parser.parse_args(argv)
    if not 1 <= args.replicas <= 16:
        print("--replicas must be between 1 and 16", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(_sig: int, _frame: FrameType | None) -> None:
        stop.set()

    def on_early_signal(sig: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(sig)  # while starting: unwind, and stop what already runs

    signal.signal(signal.SIGTERM, on_early_signal)
    data_dir = args.data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    cluster = Cluster(data_dir, port=args.port, replicas=args.replicas, sticky_mcp=not args.no_sticky_mcp)
    try:
        cluster.start()
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        print(cluster.ready_block(), flush=True)
        reported: set[str] = set()
        while not stop.wait(1.0):
            for child in cluster.children:
                if not child.alive and child.name not in reported:
                    reported.add(child.name)
                    print(
                        f"cortex cluster: {child.name} exited; see {child.log}", file=sys.stderr, flush=True
                    )
    except ChildError as exc:
        print(f"cortex cluster: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        print("cortex cluster: stopping", file=sys.stderr, flush=True)
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
