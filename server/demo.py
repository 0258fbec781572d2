"""`serve --demo`: prepares a local node named `local` for the serve runner (server.serve) to start.

Layering: beside server.serve, above server.admin. It reaches the agent only through its public command
line (`python -m desktop_agent`, the `cortex-agent` program) and the agent home's documented files
(agent.toml); it never imports desktop_agent. Once the server listens, the demo enrolls `local` in
workspace `local` (first start only) and hands the credential to `cortex-agent login --credential-file`
through a 0600 file in the agent home that is removed right after (never on a command line), writes an
admin token to `<data dir>/demo-token` (0600; the `cortex` command falls back to it), and returns the
`cortex-agent run` child for server.serve to start, with the dashboard link that signs in with that token.

The demo node must not be a way into the server (spec/security.md "Demo"):

1. Its only allowed root is its own demo root, ``<data dir>-demo-root`` beside the data dir — never the
   data dir or an ancestor of it. (Not inside the data dir either: the whole data dir is protected.)
2. Its agent.toml names the server's data dir in ``protected_paths``: the agent refuses that tree to
   every tool (the browser's ``file://`` included) even if an owner later widens ``allowed_roots``.
   An existing agent.toml is kept as the owner left it, except that ``protected_paths`` is put back.
3. ``shell_exec`` and ``process_start`` are off: a shell is not confined by roots and would read the
   signing key (it sits in the SQLite database and its WAL) as easily as ``cat``. The owner may turn
   them on in agent.toml — then the demo node should run as another OS user.
4. The agent dies with the server (server.serve rule 2: ``PR_SET_PDEATHSIG``) — a killed server leaves
   no orphan node.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tomllib
from pathlib import Path

from server import admin
from server.config import ServerConfig
from server.serve import ChildSetupError, ChildSpec, Extras
from spec.manifest import load_manifest

__all__ = [
    "DEMO_NODE",
    "DEMO_TOKEN_FILE",
    "DemoError",
    "demo_child",
    "demo_extras",
    "demo_root",
    "write_demo_policy",
]

DEMO_NODE = "local"
DEMO_TOKEN_FILE = "demo-token"
CREDENTIALS_FILE = "credentials.json"  # what `cortex-agent login` writes in the home (CONTRACT §1)
LOGIN_TIMEOUT_S = 60.0


class DemoError(ChildSetupError):
    """The demo node could not be set up (the message says why)."""


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, 0o600)


_UNCONFINED_TOOLS = frozenset({"shell_exec", "process_start"})


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


def _agent_command(*args: str) -> tuple[str, ...]:
    """The agent's public entry point, with this interpreter (the console script may not be on PATH)."""
    return (sys.executable, "-m", "desktop_agent", *args)


def _agent_env(home: Path) -> dict[str, str]:
    env = {**os.environ, "CORTEX_HOME": str(home)}
    env.pop("CORTEX_NODE_CREDENTIAL", None)  # the demo node uses its own home's credential
    return env


async def _login(home: Path, base_url: str, credential: str) -> None:
    """`cortex-agent login --credential-file` with a 0600 file in the home, removed whatever happens."""
    secret = home / ".demo-credential"
    _write_private(secret, credential + "\n")
    try:
        login = await asyncio.create_subprocess_exec(
            *_agent_command(
                "login",
                "--server",
                base_url,
                "--name",
                DEMO_NODE,
                "--home",
                str(home),
                "--credential-file",
                str(secret),
            ),
            env=_agent_env(home),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(LOGIN_TIMEOUT_S):
                _, err = await login.communicate()
        except TimeoutError:
            login.kill()
            await login.wait()
            raise DemoError(
                f"`cortex-agent login` for the demo node took over {LOGIN_TIMEOUT_S:.0f} s"
            ) from None
    finally:
        secret.unlink(missing_ok=True)
    if login.returncode != 0:
        detail = err.decode("utf-8", "replace").strip()
        raise DemoError(f"`cortex-agent login` for the demo node failed (exit {login.returncode}): {detail}")


async def demo_child(config: ServerConfig, base_url: str) -> ChildSpec:
    """Enroll and log in the demo node if needed; returns the `cortex-agent run` child to start."""
    home = config.data_dir / "demo-agent"
    await asyncio.to_thread(write_demo_policy, home, config.data_dir)
    # The admin token first: `cortex` finds it from the moment the server listens (the login takes a while).
    token = await asyncio.to_thread(
        admin.issue_token,
        config.data_dir,
        "demo-admin",
        DEMO_NODE,
        "admin",
        12 * 3600,
        config.database_url,
    )
    _write_private(config.data_dir / DEMO_TOKEN_FILE, token + "\n")
    if not (home / CREDENTIALS_FILE).exists():
        credential = await asyncio.to_thread(
            admin.enroll_node, config.data_dir, DEMO_NODE, DEMO_NODE, config.database_url
        )
        await _login(home, base_url, credential)
    return ChildSpec(
        argv=_agent_command("run", "--home", str(home), "--server", base_url, "--name", DEMO_NODE),
        env=_agent_env(home),
        banner=ready_block(base_url, token, home, config.data_dir),
    )


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


def demo_extras(config: ServerConfig) -> Extras:
    """What `serve --demo` starts beside the server once it listens: the demo node (`demo_child`)."""

    async def extras(base_url: str) -> ChildSpec | None:
        return await demo_child(config, base_url)

    return extras
