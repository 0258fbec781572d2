"""Agent assembly: from an agent home and the command line's overrides to a ready `ToolEngine` + `NodeAgent`.

Layering: the composition root of the node. The two front ends — `cortex-agent run` (desktop_agent.cli)
and `cortex-agent tray` (desktop_agent.tray) — build their agent here; neither imports the other. Below
it: policy (agent.toml), credentials, the engine (tools, audit, approval) and the connection.

Rules:
1. Precedence, for the server and the node name: the command line, then what `cortex-agent login`
   stored, then agent.toml, then (server only) `DEFAULT_SERVER`.
2. TLS files: the command line, then agent.toml's `[tls]`.
3. No credential, or no node name from any source: nothing is built (`build_agent` returns None); the
   caller says how to log in. `node_identity` still names the server and node the front end shows.
4. Once the engine has started, `settle_collector` moves everything built so far (modules, the tool
   table, schemas) out of the garbage collector's sight (``gc.freeze``) and lets the youngest
   generation grow to `GC_YOUNG_THRESHOLD` tracked allocations instead of 700, as the server does
   (server.serve rule 5). Nearly everything a call allocates is freed by reference counting, yet at 64
   calls in flight the default collected about 80 times a second, and every 1.5 s or so a full
   collection stopped the loop for 14-37 ms (every call in flight waited); at 10,000 no collection ran
   under that load. Young garbage left for the collector (reference cycles) stays bounded by the
   threshold.
"""

from __future__ import annotations

import argparse
import gc
from dataclasses import dataclass, field
from pathlib import Path

from desktop_agent.connection import ConnectSettings, NodeAgent
from desktop_agent.credentials import load_credentials
from desktop_agent.engine import ToolEngine
from desktop_agent.policy import Overrides, load_config
from spec.urls import normalize_server_url

__all__ = [
    "DEFAULT_FRAME_BYTES",
    "DEFAULT_SERVER",
    "GC_YOUNG_THRESHOLD",
    "AgentOptions",
    "build_agent",
    "node_identity",
    "settle_collector",
]

DEFAULT_SERVER = "http://127.0.0.1:8765"
DEFAULT_FRAME_BYTES = 16 * 1024 * 1024
GC_YOUNG_THRESHOLD = 10_000
"""Tracked allocations between collections of the youngest generation (rule 4)."""


@dataclass(frozen=True)
class AgentOptions:
    """What the command line may override; None/empty: take it from the home (rules 1-2)."""

    server: str | None = None
    name: str | None = None
    allowed_roots: tuple[Path, ...] = field(default_factory=tuple)
    max_concurrency: int | None = None
    no_browser: bool = False
    ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    max_frame_bytes: int = DEFAULT_FRAME_BYTES

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AgentOptions:
        """From `run`'s or `tray`'s parsed arguments (tray has no root, browser or TLS flags)."""
        return cls(
            server=getattr(args, "server", None),
            name=getattr(args, "name", None),
            allowed_roots=tuple(Path(p) for p in getattr(args, "allow_roots", None) or ()),
            max_concurrency=getattr(args, "max_concurrency", None),
            no_browser=bool(getattr(args, "no_browser", False)),
            ca=getattr(args, "ca", None),
            client_cert=getattr(args, "client_cert", None),
            client_key=getattr(args, "client_key", None),
            max_frame_bytes=getattr(args, "max_frame_bytes", None) or DEFAULT_FRAME_BYTES,
        )

    @property
    def overrides(self) -> Overrides:
        return Overrides(
            allowed_roots=self.allowed_roots,
            max_concurrency=self.max_concurrency,
            browser_enabled=False if self.no_browser else None,
        )


def node_identity(home: Path, options: AgentOptions) -> tuple[str, str]:
    """(server URL, node name) as the agent would use them (rule 1); the name may be empty."""
    config = load_config(home, options.overrides)
    creds = load_credentials(home)
    server = normalize_server_url(
        options.server or (creds.server if creds else None) or config.server or DEFAULT_SERVER
    )
    name = options.name or (creds.name if creds else None) or config.name or ""
    return server, name


def build_agent(
    options: AgentOptions | argparse.Namespace, home: Path
) -> tuple[ToolEngine, NodeAgent] | None:
    """The engine and agent for `run` and `tray`; None when there is no credential or name (rule 3)."""
    if isinstance(options, argparse.Namespace):
        options = AgentOptions.from_args(options)
    overrides = options.overrides
    config = load_config(home, overrides)
    creds = load_credentials(home)
    server = normalize_server_url(
        options.server or (creds.server if creds else None) or config.server or DEFAULT_SERVER
    )
    name = options.name or (creds.name if creds else None) or config.name
    if creds is None or not name:
        return None
    settings = ConnectSettings(
        server=server,
        name=name,
        credential=creds.credential,
        ca=options.ca or config.tls.ca,
        client_cert=options.client_cert or config.tls.client_cert,
        client_key=options.client_key or config.tls.client_key,
        max_frame_bytes=options.max_frame_bytes,
    )
    engine = ToolEngine(home, overrides)
    return engine, NodeAgent(settings, engine)


def settle_collector() -> None:
    """Rule 4: called once the engine has started, before the agent serves calls."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
