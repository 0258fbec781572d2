"""`cortex-agent`: the node daemon's command line (run, login, tray, audit, approvals).

Layering: a front end. It parses arguments and hands over: `run` builds its agent through
desktop_agent.assembly (as `tray` does, in desktop_agent.tray, which it loads by name and never the
other way round), `login` goes to desktop_agent.login, `audit` and the approval answers to their modules.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from desktop_agent.assembly import DEFAULT_FRAME_BYTES, AgentOptions, build_agent, settle_collector
from desktop_agent.connection import AgentState, AgentStatus, NodeAgent
from desktop_agent.credentials import Credentials, default_home, save_credentials
from spec.urls import normalize_server_url
from spec.version import VERSION

__all__ = ["StatusReporter", "main"]

EXIT_OK, EXIT_USAGE, EXIT_AUTH, EXIT_LOCKED = 0, 2, 3, 5

_EPILOG = """\
examples:
  cortex-server enroll-node laptop --workspace me | cortex-agent login --server 127.0.0.1:8765 --name laptop
  cortex-agent run                      # headless; says on stderr when it is connected and why it is not
  cortex-agent tray                     # the system-tray agent
  cortex-agent audit verify             # check the hash chain of this node's audit log
  cortex-agent audit show -n 50         # the last 50 audit records
  cortex-agent approvals                # tool calls waiting for your approval; approve ID / deny ID

exit codes (run): 0 clean stop, 2 usage, 3 the server refuses the credential, 5 another agent runs on
this home. The agent home is $CORTEX_HOME or ~/.cortex.
"""


def _sub(sub: Any, name: str, help_text: str, epilog: str = "") -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_text,
        description=help_text[0].upper() + help_text[1:] + ".",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cortex-agent",
        description="The Cortex agent node: connects out to a Cortex server and runs its tools here.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def home_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--home",
            type=Path,
            default=None,
            metavar="DIR",
            help="agent home: credential, agent.toml, audit log, lock (default $CORTEX_HOME or ~/.cortex)",
        )

    def log_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--log-level",
            default=os.environ.get("CORTEX_LOG_LEVEL", "INFO"),
            metavar="LEVEL",
            help="DEBUG, INFO, WARNING or ERROR (default $CORTEX_LOG_LEVEL or INFO)",
        )

    login = _sub(
        sub,
        "login",
        "store this node's credential, after checking it with the server",
        "The credential is read from stdin (or --credential-file), never from the command line.\n"
        "example:\n  cortex-agent login --server 127.0.0.1:8765 --name laptop < credential.txt\n\n"
        "exit codes: 0 stored, 2 usage (no credential given), 3 the server refused the credential\n"
        "(nothing stored). An unreachable server stores it with a warning.",
    )
    login.add_argument(
        "--server", required=True, metavar="URL", help="the server, e.g. http://host:8765 or host:8765"
    )
    login.add_argument("--name", required=True, help="the node name given to `cortex-server enroll-node`")
    login.add_argument(
        "--credential-file",
        type=Path,
        metavar="FILE",
        help="read the credential from this file instead of stdin",
    )
    home_arg(login)

    run = _sub(
        sub,
        "run",
        "run the node daemon (headless)",
        "example:\n  cortex-agent run --allow-root ~/src --no-browser\n\n"
        "exit codes: 0 clean stop (SIGINT/SIGTERM), 2 usage, 3 the server refuses the credential\n"
        "(permanent: no retrying), 5 another agent already runs on this home.",
    )
    run.add_argument(
        "--server", metavar="URL", help="server (default: the one given to login, then agent.toml)"
    )
    run.add_argument("--name", help="node name (default: the one given to login, then agent.toml)")
    run.add_argument(
        "--allow-root",
        action="append",
        type=Path,
        default=[],
        dest="allow_roots",
        metavar="DIR",
        help="a directory the file tools may use; repeat for more (default: agent.toml's roots)",
    )
    run.add_argument(
        "--max-concurrency",
        type=int,
        metavar="N",
        help="tool calls run at once (default: agent.toml, else 16)",
    )
    run.add_argument("--no-browser", action="store_true", help="do not offer the browser_* tools")
    run.add_argument("--ca", type=Path, metavar="FILE", help="CA bundle to trust for an https server")
    run.add_argument("--client-cert", type=Path, metavar="FILE", help="client certificate for mTLS (PEM)")
    run.add_argument("--client-key", type=Path, metavar="FILE", help="client certificate's key (PEM)")
    run.add_argument(
        "--max-frame-bytes",
        type=int,
        default=DEFAULT_FRAME_BYTES,
        metavar="BYTES",
        help="largest WebSocket frame accepted (default 16777216 = 16 MiB)",
    )
    log_arg(run)
    home_arg(run)

    tray = _sub(
        sub,
        "tray",
        "the system-tray desktop agent",
        "On Linux the menu needs PyGObject: apt-get install libgirepository1.0-dev libcairo2-dev\n"
        "pkg-config gir1.2-gtk-3.0 && pip install 'PyGObject<3.51'. Without it a click on the icon\n"
        "opens a small menu window.\n\nexit codes: 0 quit, 5 another agent already runs on this home.",
    )
    tray.add_argument("--server", metavar="URL", help="server (default: the one given to login)")
    tray.add_argument("--name", help="node name (default: the one given to login)")
    tray.add_argument("--autostart", choices=["on", "off"], help="start the tray at login (XDG autostart)")
    tray.add_argument(
        "--dashboard-url", metavar="URL", help="what 'Open dashboard' opens (default: the server)"
    )
    log_arg(tray)
    home_arg(tray)

    audit = _sub(sub, "audit", "inspect this node's audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    verify = _sub(
        audit_sub,
        "verify",
        "check the audit log's hash chain",
        "exit codes: 0 intact (prints `ok N records`), 1 broken (prints the first bad seq),\n"
        "2 no audit log at this home.",
    )
    home_arg(verify)
    show = _sub(
        audit_sub,
        "show",
        "print the last records, one line each",
        "example:\n  cortex-agent audit show -n 50\n\nexit codes: 0 ok, 2 no audit log at this home.",
    )
    show.add_argument("-n", type=int, default=20, metavar="N", help="how many records (default 20)")
    home_arg(show)
    _approval_parsers(sub, home_arg)
    return parser


def _approval_parsers(sub: Any, home_arg: Any) -> None:
    """`approvals`, `approve ID [--for MINUTES]`, `deny ID`: the owner's answers (desktop_agent.approval)."""
    codes = "exit codes: 0 ok, 1 no agent running on this home or no call waits under that id, 2 usage."
    approvals = _sub(sub, "approvals", "list the tool calls waiting for your approval", codes)
    approvals.add_argument("--json", action="store_true", help="print JSON instead of one line each")
    home_arg(approvals)
    approve = _sub(
        sub,
        "approve",
        "let a waiting tool call run",
        "example:\n  cortex-agent approve 3f2a9c1b --for 15   # and this caller's later calls to that tool,"
        " for 15 minutes\n\n" + codes,
    )
    approve.add_argument("id", metavar="ID", help="the approval id shown by `cortex-agent approvals`")
    approve.add_argument(
        "--for",
        dest="minutes",
        type=float,
        metavar="MINUTES",
        help="also allow this caller's later calls to this tool for MINUTES (default: this call only)",
    )
    home_arg(approve)
    deny = _sub(sub, "deny", "refuse a waiting tool call (it returns an error, the tool never runs)", codes)
    deny.add_argument("id", metavar="ID", help="the approval id shown by `cortex-agent approvals`")
    home_arg(deny)


def _login(args: argparse.Namespace, home: Path) -> int:
    from desktop_agent.login import CredentialVerdict, check_credential

    try:
        server = normalize_server_url(args.server)
    except ValueError as exc:
        print(f"cortex-agent: --server: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.credential_file is not None:
        try:
            secret = args.credential_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            print(f"cortex-agent: cannot read {args.credential_file}: {exc.strerror}", file=sys.stderr)
            return EXIT_USAGE
    else:
        secret = sys.stdin.readline().strip()
    if not secret:
        print(
            "cortex-agent: no credential given: pipe the output of `cortex-server enroll-node NAME "
            "--workspace W` on stdin, or use --credential-file FILE",
            file=sys.stderr,
        )
        return EXIT_USAGE
    check = check_credential(server, args.name, secret)
    if check.verdict is CredentialVerdict.REFUSED:
        print(
            f"cortex-agent: {server} refused the credential for node {args.name!r} ({check.detail}); "
            "nothing stored. Check the name, or enroll again: cortex-server enroll-node "
            f"{args.name} --workspace W",
            file=sys.stderr,
        )
        return EXIT_AUTH
    path = save_credentials(home, Credentials(server=server, name=args.name, credential=secret))
    if check.verdict is CredentialVerdict.UNREACHABLE:
        print(
            f"cortex-agent: warning: could not reach {server} to check the credential ({check.detail}); "
            "stored it unchecked",
            file=sys.stderr,
        )
    else:
        where = f" in workspace {check.workspace}" if check.workspace else ""
        print(f"credential checked: {server} knows node {args.name}{where}", file=sys.stderr)
    print(f"credential for node {args.name} stored in {path}")
    print(f"next: cortex-agent run{'' if args.home is None else f' --home {args.home}'}", file=sys.stderr)
    return EXIT_OK


class StatusReporter:
    """Says on stderr what the agent is doing: one line per change, never the credential.

    `run` stops on a refused credential (exit 3): it is permanent until someone enrolls the node again,
    so retrying would only hide the problem.
    """

    def __init__(self, agent: NodeAgent, *, stop_on_auth_failure: bool = True) -> None:
        self.agent = agent
        self.stop_on_auth_failure = stop_on_auth_failure
        self.auth_failed = False
        self._last: tuple[AgentState, str] | None = None

    def __call__(self, status: AgentStatus) -> None:
        key = (status.state, status.detail)
        if key == self._last:
            return
        self._last = key
        line = self.describe(status)
        if line:
            print(f"cortex-agent: {line}", file=sys.stderr, flush=True)
        if status.state is AgentState.AUTH_FAILED and self.stop_on_auth_failure:
            self.auth_failed = True
            self.agent.stop()

    def describe(self, status: AgentStatus) -> str:
        name = self.agent.settings.name
        if status.state is AgentState.CONNECTED:
            ws = f", workspace {self.agent.workspace}" if self.agent.workspace else ""
            return f"connected to {status.server} as node {name}{ws}"
        if status.state is AgentState.CONNECTING:
            return f"connecting to {status.server} as node {name} ..."
        if status.state is AgentState.BACKOFF:
            wait = max(0.0, (status.next_retry_at or time.time()) - time.time())
            return f"not connected to {status.server} ({status.detail}); retrying in {wait:.1f} s"
        if status.state is AgentState.AUTH_FAILED:
            return (
                f"{status.server} refuses the credential of node {name} (revoked, or enrolled again since); "
                f"get a new one with `cortex-server enroll-node {name} --workspace W` and "
                "`cortex-agent login`"
            )
        if status.state is AgentState.DISCONNECTED and status.detail == "stopped":
            return "stopped"
        return ""


async def _run(args: argparse.Namespace, home: Path) -> int:
    built = build_agent(AgentOptions.from_args(args), home)
    if built is None:
        print(
            "cortex-agent: no node credential in "
            f"{home}: run `cortex-agent login --server URL --name NAME` (credential on stdin) "
            "or set CORTEX_NODE_CREDENTIAL",
            file=sys.stderr,
        )
        return EXIT_AUTH
    engine, agent = built
    reporter = StatusReporter(agent)
    agent.add_listener(reporter)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, agent.stop)
    await engine.start()
    settle_collector()  # assembly rule 4
    try:
        await agent.run()
    finally:
        await engine.aclose()
    return EXIT_AUTH if reporter.auth_failed else EXIT_OK


def _locked_main(args: argparse.Namespace, home: Path, body: Any) -> int:
    """Run `body()` holding the home's lock; exit 5 naming the holder when another agent has it."""
    from desktop_agent.home_lock import HomeLock, HomeLocked

    try:
        lock = HomeLock(home)
        lock.acquire()
    except HomeLocked as exc:
        print(
            f"cortex-agent: {exc}; stop it first (kill {exc.pid}) or use another --home"
            if exc.pid is not None
            else f"cortex-agent: {exc}; stop it first or use another --home",
            file=sys.stderr,
        )
        return EXIT_LOCKED
    try:
        return int(body())
    finally:
        lock.release()


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
    if args.command in ("approvals", "approve", "deny"):
        from desktop_agent import approval_socket

        if args.command == "approvals":
            return approval_socket.cli_list(home, args.json)
        return approval_socket.cli_answer(
            home, args.id, approve=args.command == "approve", minutes=getattr(args, "minutes", None)
        )
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

        if getattr(args, "autostart", None):
            return int(tray_main(args, home))
        return _locked_main(args, home, lambda: tray_main(args, home))
    try:
        return _locked_main(args, home, lambda: asyncio.run(_run(args, home)))
    except ValueError as exc:  # a bad --server or agent.toml value
        print(f"cortex-agent: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
