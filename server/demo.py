"""Running the server process: uvicorn plus, with `--demo`, a local node named `local`.

The demo enrolls `local` in workspace `local` once (its credential kept 0600 in the agent home under the
data dir), starts `cortex-agent run` as a child process (credential in its home, never on the command
line), writes an admin token to `<data dir>/demo-token` (0600; the `cortex` command falls back to it)
and prints the dashboard link that signs in with that token.

The demo node must not be a way into the server (spec/security.md "Demo"):

1. Its only allowed root is its own demo root, ``<data dir>-demo-root`` beside the data dir — never the
   data dir or an ancestor of it. (Not inside the data dir either: the whole data dir is protected.)
2. Its agent.toml names the server's data dir in ``protected_paths``: the agent refuses that tree to
   every tool (the browser's ``file://`` included) even if an owner later widens ``allowed_roots``.
   An existing agent.toml is kept as the owner left it, except that ``protected_paths`` is put back.
3. ``shell_exec`` and ``process_start`` are off: a shell is not confined by roots and would read the
   signing key (it sits in the SQLite database and its WAL) as easily as ``cat``. The owner may turn
   them on in agent.toml — then the demo node should run as another OS user.
4. The agent dies with the server: uvicorn re-raises SIGTERM/SIGINT after its shutdown, which ends the
   process before any ``finally`` could stop the child, so on Linux the child asks the kernel for
   SIGTERM when its parent goes (``PR_SET_PDEATHSIG``) — a killed server leaves no orphan node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import tomllib
from pathlib import Path

import uvicorn

from desktop_agent.credentials import Credentials, load_credentials, save_credentials
from server import admin
from server.config import ServerConfig
from spec.manifest import load_manifest

__all__ = ["DEMO_NODE", "DEMO_TOKEN_FILE", "demo_root", "serve_with_extras", "write_demo_policy"]

DEMO_NODE = "local"
DEMO_TOKEN_FILE = "demo-token"


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, 0o600)


_UNCONFINED_TOOLS = frozenset({"shell_exec", "process_start"})


def _die_with_parent() -> None:
    """preexec_fn of the demo agent (rule 4): SIGTERM when the server process is gone."""
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() == 1:  # the server already died between fork and prctl
        os._exit(0)


def demo_root(data_dir: Path) -> Path:
    """The demo node's only allowed root: beside the data dir, neither inside it nor above it (rule 1)."""
    data_dir = Path(os.path.realpath(data_dir))
    return data_dir.with_name(data_dir.name + "-demo-root")


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def write_demo_policy(home: Path, data_dir: Path) -> Path:
    """Write (or repair) the demo node's agent.toml (rules 1-3); returns the demo root."""
    root = demo_root(data_dir)
    root.mkdir(mode=0o700, exist_ok=True)
    protected = os.path.realpath(data_dir)
    path = home / "agent.toml"
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    protected_line = f"protected_paths = [{_toml_str(protected)}]\n"
    if path.exists():
        text = path.read_text(encoding="utf-8")
        try:
            current = tomllib.loads(text).get("protected_paths")
        except tomllib.TOMLDecodeError:
            current = None  # the agent will report the file; still put the protection first
        if isinstance(current, list) and protected in current:
            return root
        # Top-level keys must come before any [table]: put it first, and drop an older value.
        kept = [line for line in text.splitlines(keepends=True) if not line.startswith("protected_paths")]
        _write_private(path, protected_line + "".join(kept))
        return root
    tools = [t["name"] for t in load_manifest()]  # the packaged manifest (works outside the checkout)
    enabled = ", ".join(_toml_str(t) for t in tools if t not in _UNCONFINED_TOOLS)
    _write_private(
        path,
        "# Written by `cortex-server serve --demo` (see server/demo.py for why each line is here).\n"
        + f"allowed_roots = [{_toml_str(str(root))}]\n"
        + "# The server's data dir holds its signing key: refused to every tool, whatever the roots say.\n"
        + protected_line
        + "\n[tools]\n"
        + "# No shell_exec / process_start: a shell is not confined and could read the signing key.\n"
        + f"enabled = [{enabled}]\n"
        + "\n[shell]\nenabled = false\n",
    )
    return root


def prepare_demo(config: ServerConfig, base_url: str) -> tuple[Path, str]:
    """Enroll the demo node if needed; returns (agent home, admin token)."""
    home = config.data_dir / "demo-agent"
    write_demo_policy(home, config.data_dir)
    creds = load_credentials(home)
    if creds is None:
        credential = admin.enroll_node(config.data_dir, DEMO_NODE, DEMO_NODE, config.database_url)
        save_credentials(home, Credentials(server=base_url, name=DEMO_NODE, credential=credential))
    token = admin.issue_token(
        config.data_dir, "demo-admin", DEMO_NODE, "admin", 12 * 3600, config.database_url
    )
    _write_private(config.data_dir / DEMO_TOKEN_FILE, token + "\n")
    return home, token


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
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
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
