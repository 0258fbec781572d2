"""`cortex-agent`: the node daemon's command line (run, login, tray, audit)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from desktop_agent.connection import ConnectSettings, NodeAgent
from desktop_agent.credentials import Credentials, default_home, load_credentials, save_credentials
from desktop_agent.engine import ToolEngine
from desktop_agent.policy import Overrides, load_config
from spec.version import VERSION

__all__ = ["main"]

DEFAULT_SERVER = "http://127.0.0.1:8765"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cortex-agent", description="The Cortex agent node.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True)

    def home_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--home", type=Path, default=None, help="agent home (default $CORTEX_HOME or ~/.cortex)"
        )

    login = sub.add_parser("login", help="store the node credential (read from stdin)")
    login.add_argument("--server", required=True)
    login.add_argument("--name", required=True)
    login.add_argument(
        "--credential-file", type=Path, help="read the credential from this file instead of stdin"
    )
    home_arg(login)

    run = sub.add_parser("run", help="run the node daemon (headless)")
    run.add_argument("--server")
    run.add_argument("--name")
    run.add_argument("--allow-root", action="append", type=Path, default=[], dest="allow_roots")
    run.add_argument("--max-concurrency", type=int)
    run.add_argument("--no-browser", action="store_true")
    run.add_argument("--ca", type=Path)
    run.add_argument("--client-cert", type=Path)
    run.add_argument("--client-key", type=Path)
    run.add_argument("--max-frame-bytes", type=int, default=16 * 1024 * 1024)
    run.add_argument("--log-level", default=os.environ.get("CORTEX_LOG_LEVEL", "INFO"))
    home_arg(run)

    tray = sub.add_parser("tray", help="the system-tray desktop agent")
    tray.add_argument("--server")
    tray.add_argument("--name")
    tray.add_argument("--autostart", choices=["on", "off"])
    tray.add_argument("--dashboard-url")
    tray.add_argument("--log-level", default=os.environ.get("CORTEX_LOG_LEVEL", "INFO"))
    home_arg(tray)

    audit = sub.add_parser("audit", help="inspect the audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser("verify")
    home_arg(verify)
    show = audit_sub.add_parser("show")
    show.add_argument("-n", type=int, default=20)
    home_arg(show)
    return parser


def _login(args: argparse.Namespace, home: Path) -> int:
    if args.credential_file is not None:
        secret = args.credential_file.read_text(encoding="utf-8").strip()
    else:
        secret = sys.stdin.readline().strip()
    if not secret:
        print("no credential given (pipe it on stdin or use --credential-file)", file=sys.stderr)
        return 2
    path = save_credentials(home, Credentials(server=args.server, name=args.name, credential=secret))
    print(f"credential for node {args.name} stored in {path}")
    return 0


def build_agent(args: argparse.Namespace, home: Path) -> tuple[ToolEngine, NodeAgent] | None:
    """The engine and agent for `run` and `tray`; None when there is no credential."""
    overrides = Overrides(
        allowed_roots=tuple(Path(p) for p in getattr(args, "allow_roots", []) or []),
        max_concurrency=getattr(args, "max_concurrency", None),
        browser_enabled=False if getattr(args, "no_browser", False) else None,
    )
    config = load_config(home, overrides)
    creds = load_credentials(home)
    server = args.server or (creds.server if creds else None) or config.server or DEFAULT_SERVER
    name = args.name or (creds.name if creds else None) or config.name
    if creds is None or not name:
        return None
    settings = ConnectSettings(
        server=server,
        name=name,
        credential=creds.credential,
        ca=getattr(args, "ca", None) or config.tls.ca,
        client_cert=getattr(args, "client_cert", None) or config.tls.client_cert,
        client_key=getattr(args, "client_key", None) or config.tls.client_key,
        max_frame_bytes=getattr(args, "max_frame_bytes", 16 * 1024 * 1024),
    )
    engine = ToolEngine(home, overrides)
    return engine, NodeAgent(settings, engine)


async def _run(args: argparse.Namespace, home: Path) -> int:
    built = build_agent(args, home)
    if built is None:
        print(
            "no node credential: run `cortex-agent login --server URL --name NAME` (credential on stdin) "
            "or set CORTEX_NODE_CREDENTIAL",
            file=sys.stderr,
        )
        return 3
    engine, agent = built
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, agent.stop)
    await engine.start()
    try:
        await agent.run()
    finally:
        await engine.aclose()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    home: Path = (args.home or default_home()).expanduser()
    if args.command == "login":
        return _login(args, home)
    if args.command == "audit":
        from desktop_agent import audit

        if args.audit_command == "verify":
            return audit.cli_verify(home)
        return audit.cli_show(home, args.n)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # websockets' DEBUG log dumps the handshake headers, Authorization: Bearer <token> included; the HTTP
    # client's DEBUG log is transport chatter, and its INFO line per token request is noise every renewal.
    logging.getLogger("websockets").setLevel(max(logging.getLogger().level, logging.INFO))
    for noisy in ("httpx2", "httpcore2"):
        logging.getLogger(noisy).setLevel(max(logging.getLogger().level, logging.WARNING))
    if args.command == "tray":
        from desktop_agent.tray import tray_main

        return int(tray_main(args, home))
    return asyncio.run(_run(args, home))


if __name__ == "__main__":
    sys.exit(main())
