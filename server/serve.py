"""Running the server process: uvicorn, then the child processes that live and die with it.

Layering: the runner under `cortex-server serve` (server.cli builds the uvicorn server and calls
`serve` with the extras it wants, e.g. `server.demo.demo_extras`). It knows processes, not what they
are: the demo prepares its node and hands back a `ChildSpec`; nothing here imports the demo or the
agent.

Rules:
1. A child starts only once uvicorn listens, with the port read back from the bound socket (port 0
   works), so it can reach the server at once.
2. A child dies with the server: uvicorn re-raises SIGTERM/SIGINT after its shutdown, which ends the
   process before any ``finally`` could stop the child, so on Linux the child asks the kernel for
   SIGTERM when its parent goes (``PR_SET_PDEATHSIG``) — a killed server leaves no orphan.
3. On a clean stop the children get SIGTERM, then SIGKILL after `CHILD_STOP_S`.
4. Secrets reach a child through its environment or its files, never its command line.
5. Once listening, everything built so far (modules, routes, the state) is moved out of the garbage
   collector's sight (``gc.freeze``), and the youngest generation is collected every
   `GC_YOUNG_THRESHOLD` tracked allocations instead of 700. Nearly everything a call allocates is freed
   by reference counting; the collections the default ran every call or two were about a tenth of the
   server's CPU at 64 calls in flight (`bench/agent_bench.py`: 70 -> 61 µs per call). The young
   garbage left for the collector (reference cycles) stays bounded by the threshold.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from server.config import ServerConfig

if TYPE_CHECKING:  # `cortex-server enroll-node` and friends never load uvicorn
    import uvicorn

__all__ = ["CHILD_STOP_S", "ChildSetupError", "ChildSpec", "Extras", "base_url_of", "serve", "spawn_child"]

CHILD_STOP_S = 5.0
GC_YOUNG_THRESHOLD = 10_000
"""Tracked allocations between collections of the youngest generation (rule 5)."""
STARTED_CHECK_S = 0.05  # uvicorn has no "started" event to wait on: its `started` flag is polled


class ChildSetupError(RuntimeError):
    """A child could not be prepared (the message says why); the server stops, `cortex-server` exits 1."""


@dataclass(frozen=True)
class ChildSpec:
    """A process to run beside the server (rule 4: no secret in `argv`)."""

    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)  # the whole environment of the child
    banner: str = ""  # printed once the child is started


# What to start once the server listens, given its base URL: None starts nothing.
Extras = Callable[[str], Awaitable[ChildSpec | None]]


def _die_with_parent() -> None:
    """preexec_fn of a child (rule 2): SIGTERM when the server process is gone."""
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() == 1:  # the server already died between fork and prctl
        os._exit(0)


async def spawn_child(spec: ChildSpec) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *spec.argv,
        env=spec.env or None,
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )


async def _stop_child(child: asyncio.subprocess.Process) -> None:
    """Rule 3: SIGTERM, then SIGKILL."""
    if child.returncode is not None:
        return
    child.terminate()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(CHILD_STOP_S):
            await child.wait()
    if child.returncode is None:
        child.kill()
        await child.wait()


def base_url_of(server: uvicorn.Server, config: ServerConfig) -> str:
    """The URL the server answers on, with the port it really bound (rule 1)."""
    port = config.port
    for srv in getattr(server, "servers", []):
        for sock in srv.sockets:
            port = sock.getsockname()[1]
    scheme = "https" if config.tls_cert else "http"
    return f"{scheme}://{config.host}:{port}"


async def serve(server: uvicorn.Server, config: ServerConfig, extras: Extras | None = None) -> int:
    """Run `server` until it stops, and the child `extras` names once it listens (rules 1-3)."""
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            return 1
        await asyncio.sleep(STARTED_CHECK_S)
    base_url = base_url_of(server, config)
    app = server.config.app
    state = getattr(app.state, "cortex", None) if hasattr(app, "state") else None
    cluster = state.cluster if state is not None else None
    if cluster is not None:  # other replicas dial this address for calls to nodes held here
        await cluster.advertise(config.advertise_url or base_url)
    gc.freeze()  # rule 5
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    print(f"cortex-server listening on {base_url}", flush=True)
    child: asyncio.subprocess.Process | None = None
    try:
        spec = await extras(base_url) if extras is not None else None
        if spec is not None:
            child = await spawn_child(spec)
            if spec.banner:
                print(spec.banner, flush=True)
        await serving
    finally:
        if not serving.done():  # the extras failed: stop the server too
            server.should_exit = True
            with contextlib.suppress(Exception):
                await serving
        if child is not None:
            await _stop_child(child)
    return 0
