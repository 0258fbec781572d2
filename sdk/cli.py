"""`cortex`: the SDK's command line.

Layering: argparse → `sdk.Client` (the public SDK, nothing private) → the server's `/api/v1/rpc`; the
`mcp-stdio` bridge lives in `sdk.mcp_stdio`. Human-facing text goes to stdout as tables on a terminal;
scripts get `--json` on every listing command.

Rules (the habits of `gh`):
1. Exit codes: 0 ok, 1 the tool reported an error, 2 usage, 3 auth, 4 node unknown or disconnected
   (or the server cannot be reached).
2. Every error is one line on stderr saying what to do next; a refused token says where it came from.
3. The token comes from `--token`, else `CORTEX_TOKEN`, else the demo server's token file
   (`$CORTEX_SERVER_HOME/demo-token`, written 0600 by `cortex-server serve --demo`).
4. Tables have a header row on a terminal (or with `CORTEX_FORCE_TTY=1`); piped, they are tab-separated
   without one. `--json` is the stable form for scripts.
5. A node or tool name that does not exist gets "did you mean" suggestions (difflib).
"""

from __future__ import annotations

import argparse
import base64
import difflib
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sdk.client import DEFAULT_URL, CallResult, Client
from sdk.exceptions import (
    AuthError,
    ConnectionLost,
    CortexError,
    InvalidArguments,
    NodeDisconnected,
    NodeNotFound,
)
from spec import json_limits
from spec.protocol import clamp_audit_limit
from spec.urls import normalize_server_url
from spec.version import VERSION

__all__ = ["main"]

EXIT_OK, EXIT_TOOL_ERROR, EXIT_USAGE, EXIT_AUTH, EXIT_NODE = 0, 1, 2, 3, 4

_EPILOG = """\
examples:
  cortex nodes                                  # the nodes of your workspace
  cortex tools laptop                           # what laptop can do
  cortex call laptop echo '{"text":"hi"}'
  cortex call laptop browser_screenshot '{"full_page":true}' --out shot.png
  cortex audit laptop -n 50 --follow            # the node's own record of every request, live
  cortex whoami                                 # which token is used, whose it is, when it expires

exit codes: 0 ok, 1 the tool reported an error, 2 usage, 3 auth (no, bad or expired token),
4 node unknown or disconnected, or the server cannot be reached.

environment: CORTEX_SERVER (default server), CORTEX_TOKEN (user token), CORTEX_SERVER_HOME (where the
demo token file is looked for, default ~/.cortex-server), CORTEX_FORCE_TTY=1 (tables with headers).
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        print(f"cortex: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


_COMMON_EXIT_CODES = (
    "exit codes: 0 ok, 2 usage, 3 auth, 4 node unknown or disconnected, or server unreachable."
)


def _sub(sub: Any, name: str, help_text: str, epilog: str = "") -> argparse.ArgumentParser:
    if "exit codes" not in epilog:
        epilog = (epilog + "\n\n" if epilog else "") + _COMMON_EXIT_CODES
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_text,
        description=help_text[0].upper() + help_text[1:] + ".",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def _json_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON (for scripts)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cortex",
        description="Script tasks against Cortex agent nodes.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    parser.add_argument(
        "--server",
        default=os.environ.get("CORTEX_SERVER", DEFAULT_URL),
        metavar="URL",
        help=f"the Cortex server, e.g. host:8765 or https://host (default $CORTEX_SERVER or {DEFAULT_URL})",
    )
    parser.add_argument(
        "--token",
        default=None,
        metavar="T",
        help="user token (default $CORTEX_TOKEN, then the demo server's token file)",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")
    nodes = _sub(sub, "nodes", "list the nodes of your workspace")
    _json_flag(nodes, "the nodes")
    tools = _sub(sub, "tools", "list a node's tools", "example:\n  cortex tools laptop --json")
    tools.add_argument("node", help="node name")
    _json_flag(tools, "the tools with their input schemas")
    call = _sub(
        sub,
        "call",
        "call a tool on a node",
        'examples:\n  cortex call laptop shell_exec \'{"command":"uname -a"}\'\n'
        "  cortex call laptop browser_screenshot --out shot.png\n\n"
        "exit codes: 0 ok, 1 the tool reported an error (isError), 2 bad JSON_ARGS or arguments that\n"
        "fail the tool's schema, 3 auth, 4 node unknown or disconnected or server unreachable.",
    )
    call.add_argument("node", help="node name")
    call.add_argument("tool", help="tool name (see `cortex tools NODE`)")
    call.add_argument(
        "json_args", nargs="?", default="{}", help="the arguments as a JSON object (default {})"
    )
    call.add_argument(
        "--out", type=Path, metavar="FILE", help="write the result's first image (or its text) to this file"
    )
    call.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="S",
        help="seconds to wait; the node's work is cancelled after (default: the server's)",
    )
    _json_flag(call, "the whole CallToolResult")
    _sub(
        sub,
        "mcp-stdio",
        "serve MCP on stdin/stdout, relayed to the server's /mcp",
        "For MCP clients that only launch local stdio servers; the token comes from --token or\n"
        "$CORTEX_TOKEN.\n\nexit codes: 0 the client closed stdin, 1 the relay failed,\n"
        "3 the token is refused, 4 the server cannot be reached.",
    )
    audit = _sub(
        sub,
        "audit",
        "read a node's audit log (newest last)",
        "examples:\n  cortex audit laptop              # the last 20 records\n"
        "  cortex audit laptop -n 100 --follow\n  cortex audit laptop --after 40 --json",
    )
    audit.add_argument("node", help="node name")
    audit.add_argument(
        "-n", "--tail", type=int, default=20, metavar="N", help="show the last N records (default 20)"
    )
    audit.add_argument(
        "--after",
        type=int,
        default=None,
        metavar="SEQ",
        help="show the records after this seq instead of the last N (up to --limit)",
    )
    audit.add_argument(
        "--limit",
        type=int,
        default=100,
        metavar="N",
        help="most records with --after (default 100, max 1000)",
    )
    audit.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing new records as they are written (Ctrl-C stops)",
    )
    audit.add_argument(
        "--poll-interval",
        type=float,
        default=1.0,
        metavar="S",
        help="with --follow: longest wait between polls when nothing is new (default 1.0 s)",
    )
    _json_flag(audit, "one JSON record per line (JSONL)")
    whoami = _sub(sub, "whoami", "who the token says you are, when it expires and where it came from")
    _json_flag(whoami, "the identity")
    return parser


# -- the token and where it came from --------------------------------------------------------------
@dataclass(frozen=True)
class TokenChoice:
    token: str | None
    source: str  # "--token", "$CORTEX_TOKEN", "demo-token file <path>", or "none"


def choose_token(explicit: str | None) -> TokenChoice:
    if explicit:
        return TokenChoice(explicit, "--token")
    if os.environ.get("CORTEX_TOKEN"):
        return TokenChoice(os.environ["CORTEX_TOKEN"].strip(), "$CORTEX_TOKEN")
    home = Path(os.environ.get("CORTEX_SERVER_HOME") or Path.home() / ".cortex-server")
    path = home / "demo-token"
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError:
        return TokenChoice(None, "none")
    return TokenChoice(token or None, f"the demo-token file {path}")


def token_claims(token: str) -> dict[str, Any] | None:
    """The JWT's claims, decoded for display only: the server is the one that verifies."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, RecursionError):
        return None
    return claims if isinstance(claims, dict) else None


def _when(epoch: Any) -> str:
    if not isinstance(epoch, int | float):
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _in(seconds: float) -> str:
    if seconds < 0:
        return f"expired {_in(-seconds).removeprefix('in ')} ago"
    if seconds < 120:
        return f"in {int(seconds)} s"
    if seconds < 7200:
        return f"in {int(seconds // 60)} min"
    return f"in {seconds / 3600:.1f} h"


# -- output ---------------------------------------------------------------------------------------
def _is_tty() -> bool:
    return os.environ.get("CORTEX_FORCE_TTY") == "1" or sys.stdout.isatty()


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Aligned with a header row on a terminal; tab-separated without one when piped (rule 4)."""
    if not _is_tty():
        for row in rows:
            print("\t".join(row))
        return
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    for row in [list(headers), *rows]:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def describe_record(record: dict[str, Any]) -> str:
    """One audit record as a line: seq, time, event, tool, caller, status, arguments."""
    parts = [f"#{record.get('seq')}", str(record.get("ts", "")), str(record.get("event", ""))]
    if record.get("tool"):
        parts.append(str(record["tool"]))
    caller = record.get("caller")
    if isinstance(caller, dict) and caller.get("sub"):
        parts.append(f"by {caller.get('sub')}@{caller.get('ws')}")
    for key in ("status", "exit_code", "duration_ms", "reason"):
        if record.get(key) is not None:
            parts.append(f"{key}={record[key]}")
    if record.get("arguments"):
        args = json.dumps(record["arguments"], ensure_ascii=False)
        parts.append(args if len(args) <= 160 else args[:157] + "...")
    return "  ".join(parts)


def _print_result(result: CallResult, out: Path | None, as_json: bool) -> int:
    if as_json:
        _print_json(result.raw)
    elif out is not None:
        images = result.images
        if images:
            out.write_bytes(images[0].data)
            print(f"wrote {len(images[0].data)} bytes ({images[0].mime_type}) to {out}")
        else:
            out.write_text(result.text, encoding="utf-8")
            print(f"wrote the text result to {out}")
    elif result.text:
        print(result.text)
    elif result.structured is not None:
        _print_json(result.structured)
    return EXIT_TOOL_ERROR if result.is_error else EXIT_OK


# -- commands -------------------------------------------------------------------------------------
class CliError(Exception):
    """One line for stderr and the exit code that goes with it."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def _node_missing(client: Client, node: str, exc: CortexError) -> CliError:
    try:
        names = [str(n.get("name")) for n in client.nodes()]
    except CortexError:
        names = []
    if isinstance(exc, NodeDisconnected) or node in names:
        return CliError(f"node {node} is not connected: {exc.message} (see `cortex nodes`)", EXIT_NODE)
    return CliError(
        f"no node named {node} in your workspace{_suggest(node, names)}; see `cortex nodes`", EXIT_NODE
    )


def _nodes(client: Client, as_json: bool) -> int:
    nodes = client.nodes()
    if as_json:
        _print_json(nodes)
        return EXIT_OK
    rows = []
    for node in nodes:
        rtt = f"{node['rtt_ms']:.1f} ms" if node.get("rtt_ms") is not None else "-"
        audit = node.get("audit") or {}
        rows.append(
            [
                str(node["name"]),
                str(node.get("workspace", "")),
                str(node.get("status", "")),
                rtt,
                str(len(node.get("tools") or [])),
                str(audit.get("status", "-")),
                _when(_epoch(node.get("last_seen"))),
            ]
        )
    if not rows and _is_tty():
        print(
            "no nodes in your workspace yet: enroll one with `cortex-server enroll-node NAME --workspace W`"
        )
        return EXIT_OK
    print_table(["NAME", "WORKSPACE", "STATUS", "RTT", "TOOLS", "AUDIT", "LAST SEEN"], rows)
    return EXIT_OK


def _epoch(value: Any) -> float | None:
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def _tools(client: Client, node: str, as_json: bool) -> int:
    try:
        tools = client.tools(node)
    except (NodeNotFound, NodeDisconnected) as exc:
        raise _node_missing(client, node, exc) from None
    if as_json:
        _print_json(tools)
        return EXIT_OK
    rows = []
    for tool in tools:
        summary = (tool.get("description") or "").strip().splitlines()
        rows.append([str(tool["name"]), summary[0] if summary else ""])
    print_table(["TOOL", "DESCRIPTION"], rows)
    return EXIT_OK


def _call(client: Client, args: argparse.Namespace, arguments: dict[str, Any]) -> int:
    try:
        result = client.call(args.node, args.tool, arguments, timeout=args.timeout)
    except (NodeNotFound, NodeDisconnected) as exc:
        raise _node_missing(client, args.node, exc) from None
    except InvalidArguments as exc:
        try:
            names = [str(t["name"]) for t in client.tools(args.node)]
        except CortexError:
            names = []
        if names and args.tool not in names:
            raise CliError(
                f"node {args.node} has no tool {args.tool}{_suggest(args.tool, names)}; "
                f"see `cortex tools {args.node}`",
                EXIT_USAGE,
            ) from None
        raise CliError(
            f"{args.tool} refused the arguments: {exc.message} (see `cortex tools {args.node} --json`)",
            EXIT_USAGE,
        ) from None
    return _print_result(result, args.out, args.json)


def _audit(client: Client, args: argparse.Namespace) -> int:
    def show(records: list[dict[str, Any]]) -> None:
        for record in records:
            print(
                json.dumps(record, ensure_ascii=False) if args.json else describe_record(record), flush=True
            )

    try:
        if args.after is not None:
            page = client.audit(args.node, args.after, clamp_audit_limit(args.limit))
            records = page.get("records", [])
        else:
            head = int((client.audit(args.node, 0, 1).get("head") or {}).get("seq") or 0)
            tail = max(0, args.tail)
            records = client.audit(args.node, max(0, head - tail), max(1, tail))["records"] if tail else []
        show(records)
        if not args.follow:
            return EXIT_OK
        last = int(records[-1]["seq"]) if records else (args.after or 0)
        if args.after is None and not records:
            last = int((client.audit(args.node, 0, 1).get("head") or {}).get("seq") or 0)
        wait = 0.1
        while True:  # until Ctrl-C; polls back off to --poll-interval while nothing is new
            page = client.audit(args.node, last, 1000)
            fresh = page.get("records", [])
            if fresh:
                show(fresh)
                last = int(fresh[-1]["seq"])
                wait = 0.1
            else:
                wait = min(max(0.05, args.poll_interval), wait * 2)
            time.sleep(wait)
    except (NodeNotFound, NodeDisconnected) as exc:
        raise _node_missing(client, args.node, exc) from None


def _whoami(client_factory: Any, server: str, choice: TokenChoice, as_json: bool) -> int:
    if choice.token is None:
        raise CliError(_no_token_hint(), EXIT_AUTH)
    claims = token_claims(choice.token)
    if claims is None:
        raise CliError(f"the token from {choice.source} is not a Cortex token (not a JWT)", EXIT_AUTH)
    accepted: bool | str = True
    try:
        with client_factory() as client:
            client.nodes()
    except AuthError as exc:
        accepted = exc.message
    identity = {
        "subject": claims.get("sub"),
        "workspace": claims.get("ws"),
        "role": claims.get("role"),
        "expires_at": _when(claims.get("exp")),
        "token_source": choice.source,
        "server": server,
        "accepted": accepted is True,
    }
    if as_json:
        _print_json(identity)
    else:
        exp = claims.get("exp")
        left = f" ({_in(float(exp) - time.time())})" if isinstance(exp, int | float) else ""
        print(f"subject:    {identity['subject']}")
        print(f"workspace:  {identity['workspace']}")
        print(f"role:       {identity['role']}")
        print(f"expires:    {identity['expires_at']}{left}")
        print(f"token from: {choice.source}")
        print(f"server:     {server} ({'accepts the token' if accepted is True else 'REFUSES the token'})")
    if accepted is not True:
        print(f"cortex: {server} refuses this token ({accepted}); {_new_token_hint()}", file=sys.stderr)
        return EXIT_AUTH
    return EXIT_OK


def _no_token_hint() -> str:
    return (
        "no token: pass --token T or set CORTEX_TOKEN (get one with `cortex-server issue-token NAME "
        "--workspace W`), or start a demo server with `cortex-server serve --demo`"
    )


def _new_token_hint() -> str:
    return "get a new one with `cortex-server issue-token NAME --workspace W` and `export CORTEX_TOKEN=...`"


def _run(args: argparse.Namespace, server: str, choice: TokenChoice) -> int:
    arguments: dict[str, Any] = {}
    if args.command == "call":
        try:
            parsed = json_limits.loads(args.json_args)
        except ValueError as exc:  # not JSON, or nested deeper than any frame may
            raise CliError(f"JSON_ARGS is not valid JSON: {exc}", EXIT_USAGE) from None
        if not isinstance(parsed, dict):
            raise CliError('JSON_ARGS must be a JSON object, e.g. \'{"text":"hi"}\'', EXIT_USAGE)
        arguments = parsed
    if args.command == "mcp-stdio":
        from sdk.mcp_stdio import run_bridge

        _check_token_for_bridge(server, choice)
        return run_bridge(server, choice.token)
    if args.command == "whoami":
        return _whoami(lambda: Client(server, token=choice.token), server, choice, args.json)
    if choice.token is None:
        raise CliError(_no_token_hint(), EXIT_AUTH)
    with Client(server, token=choice.token) as client:
        if args.command == "nodes":
            return _nodes(client, args.json)
        if args.command == "tools":
            return _tools(client, args.node, args.json)
        if args.command == "audit":
            return _audit(client, args)
        return _call(client, args, arguments)


def _check_token_for_bridge(server: str, choice: TokenChoice) -> None:
    """Refuse a bad token with one line before the MCP machinery starts (its errors are task groups)."""
    if choice.token is None:
        raise CliError(_no_token_hint(), EXIT_AUTH)
    with Client(server, token=choice.token) as client:
        client.nodes()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        server = normalize_server_url(args.server)
    except ValueError as exc:
        print(f"cortex: --server: {exc}", file=sys.stderr)
        return EXIT_USAGE
    choice = choose_token(args.token)
    try:
        return _run(args, server, choice)
    except CliError as exc:
        print(f"cortex: {exc}", file=sys.stderr)
        return exc.code
    except AuthError as exc:
        print(
            f"cortex: {server} refused the token from {choice.source} ({exc.message}); {_new_token_hint()}",
            file=sys.stderr,
        )
        return EXIT_AUTH
    except (NodeNotFound, NodeDisconnected) as exc:
        print(f"cortex: {exc.message} (see `cortex nodes`)", file=sys.stderr)
        return EXIT_NODE
    except ConnectionLost as exc:
        print(
            f"cortex: {exc.message}; is `cortex-server serve` running there? "
            "(choose another with --server or $CORTEX_SERVER)",
            file=sys.stderr,
        )
        return EXIT_NODE
    except CortexError as exc:
        print(f"cortex: {exc.message}", file=sys.stderr)
        return EXIT_TOOL_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
