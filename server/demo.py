"""Running the server process: uvicorn plus, with `--demo`, a local node named `local`.

The demo enrolls `local` in workspace `local` once (its credential kept 0600 in the agent home under the
data dir), starts `cortex-agent run` as a child process (credential in its home, never on the command
line), writes an admin token to `<data dir>/demo-token` (0600; the `cortex` command falls back to it)
and prints the dashboard link that signs in with that token.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path

import uvicorn

from desktop_agent.credentials import Credentials, load_credentials, save_credentials
from server import admin
from server.config import ServerConfig

__all__ = ["DEMO_NODE", "DEMO_TOKEN_FILE", "serve_with_extras"]

DEMO_NODE = "local"
DEMO_TOKEN_FILE = "demo-token"


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, 0o600)


def prepare_demo(config: ServerConfig, base_url: str) -> tuple[Path, str]:
    """Enroll the demo node if needed; returns (agent home, admin token)."""
    home = config.data_dir / "demo-agent"
    creds = load_credentials(home)
    if creds is None:
        credential = admin.enroll_node(config.data_dir, DEMO_NODE, DEMO_NODE)
        save_credentials(home, Credentials(server=base_url, name=DEMO_NODE, credential=credential))
    token = admin.issue_token(config.data_dir, "demo-admin", DEMO_NODE, "admin", 12 * 3600)
    _write_private(config.data_dir / DEMO_TOKEN_FILE, token + "\n")
    return home, token


def _die_with_parent() -> None:
    """In the demo agent's child, before exec: SIGTERM it when the server process dies.

    uvicorn re-raises a captured SIGTERM/SIGINT once it has shut down, which ends this process before any
    `finally` could stop the agent; without this the demo node outlives its server, reconnecting forever.
    """
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def ready_block(base_url: str, token: str, home: Path, data_dir: Path) -> str:
    """What `make run` shows once the server listens: the link, and the first commands to try."""
    server_flag = "" if base_url == "http://127.0.0.1:8765" else f" --server {base_url}"
    lines = [
        "",
        "  Cortex is ready.",
        "",
        f"  dashboard    {base_url}/#token={token}",
        f"  demo node    '{DEMO_NODE}' in workspace '{DEMO_NODE}' (agent home {home})",
        f"  admin token  {data_dir / DEMO_TOKEN_FILE} (the `cortex` command finds it by itself)",
        "",
        "  try, in another terminal:",
        *([] if data_dir == admin.default_data_dir() else [f"    export CORTEX_SERVER_HOME={data_dir}"]),
        f"    cortex{server_flag} nodes",
        f'    cortex{server_flag} call {DEMO_NODE} echo \'{{"text":"hi"}}\'',
        f"    cortex{server_flag} audit {DEMO_NODE}",
        "",
        "  Ctrl-C stops the server and the demo node.",
        "",
    ]
    return "\n".join(lines)


async def serve_with_extras(server: uvicorn.Server, config: ServerConfig, *, demo: bool) -> int:
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            return 1
        await asyncio.sleep(0.05)
    port = config.port
    for srv in getattr(server, "servers", []):
        for sock in srv.sockets:
            port = sock.getsockname()[1]
    scheme = "https" if config.tls_cert else "http"
    base_url = f"{scheme}://{config.host}:{port}"
    print(f"cortex-server listening on {base_url}", flush=True)
    agent: asyncio.subprocess.Process | None = None
    if demo:
        home, token = await asyncio.to_thread(prepare_demo, config, base_url)
        env = {**os.environ, "CORTEX_HOME": str(home)}
        env.pop("CORTEX_NODE_CREDENTIAL", None)
        agent = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "desktop_agent.cli",
            "run",
            "--home",
            str(home),
            "--server",
            base_url,
            "--name",
            DEMO_NODE,
            env=env,
            preexec_fn=_die_with_parent,
        )
        print(ready_block(base_url, token, home, config.data_dir), flush=True)
    try:
        await serving
    finally:
        if agent is not None and agent.returncode is None:
            agent.terminate()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await agent.wait()
            if agent.returncode is None:
                agent.kill()
    return 0
