"""`cortex`: the SDK's command line.

Exit codes: 0 ok, 1 the tool reported an error, 2 usage, 3 auth, 4 node unknown or disconnected.
The token comes from `--token`, else `CORTEX_TOKEN`, else the demo server's token file
(`$CORTEX_SERVER_HOME/demo-token`, written 0600 by `cortex-server serve --demo`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from sdk.client import DEFAULT_URL, CallResult, Client
from sdk.exceptions import AuthError, ConnectionLost, CortexError, NodeDisconnected, NodeNotFound
from spec.version import VERSION

__all__ = ["main"]

EXIT_OK, EXIT_TOOL_ERROR, EXIT_USAGE, EXIT_AUTH, EXIT_NODE = 0, 1, 2, 3, 4


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        print(f"cortex: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cortex", description="Script tasks against Cortex agent nodes.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    parser.add_argument("--server", default=os.environ.get("CORTEX_SERVER", DEFAULT_URL))
    parser.add_argument("--token", default=None, help="user token (default $CORTEX_TOKEN)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("nodes", help="list the nodes of your workspace")
    tools = sub.add_parser("tools", help="list a node's tools")
    tools.add_argument("node")
    call = sub.add_parser("call", help="call a tool")
    call.add_argument("node")
    call.add_argument("tool")
    call.add_argument("json_args", nargs="?", default="{}", help="the arguments as a JSON object")
    call.add_argument("--out", type=Path, help="write the result's first image (or its text) to this file")
    call.add_argument(
        "--timeout", type=float, default=None, help="seconds; the node's work is cancelled after"
    )
    call.add_argument("--json", action="store_true", help="print the whole CallToolResult as JSON")
    sub.add_parser("mcp-stdio", help="serve MCP on stdin/stdout, relayed to the server's /mcp")
    audit = sub.add_parser("audit", help="read a node's audit log")
    audit.add_argument("node")
    audit.add_argument("--after", type=int, default=0)
    audit.add_argument("--limit", type=int, default=100)
    return parser


def _token(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    if os.environ.get("CORTEX_TOKEN"):
        return os.environ["CORTEX_TOKEN"]
    home = Path(os.environ.get("CORTEX_SERVER_HOME") or Path.home() / ".cortex-server")
    try:
        return (home / "demo-token").read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def _print_result(result: CallResult, out: Path | None, as_json: bool) -> int:
    if as_json:
        print(json.dumps(result.raw, indent=2))
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
        print(json.dumps(result.structured, indent=2))
    return EXIT_TOOL_ERROR if result.is_error else EXIT_OK


def _run(args: argparse.Namespace) -> int:
    if args.command == "call":
        try:
            arguments = json.loads(args.json_args)
        except ValueError as exc:
            print(f"cortex: JSON_ARGS is not valid JSON: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if not isinstance(arguments, dict):
            print("cortex: JSON_ARGS must be a JSON object", file=sys.stderr)
            return EXIT_USAGE
    if args.command == "mcp-stdio":
        from sdk.mcp_stdio import run_bridge

        return run_bridge(args.server, _token(args.token))
    with Client(args.server, token=_token(args.token)) as client:
        if args.command == "nodes":
            for node in client.nodes():
                rtt = f"{node['rtt_ms']:.1f} ms" if node.get("rtt_ms") is not None else "-"
                print(
                    f"{node['name']:<24} {node['workspace']:<16} {node['status']:<13} {rtt:>10}  "
                    f"{len(node.get('tools') or [])} tools"
                )
            return EXIT_OK
        if args.command == "tools":
            for tool in client.tools(args.node):
                summary = (tool.get("description") or "").strip().splitlines()
                print(f"{tool['name']:<22} {summary[0] if summary else ''}")
            return EXIT_OK
        if args.command == "audit":
            page = client.audit(args.node, args.after, args.limit)
            for record in page.get("records", []):
                print(json.dumps(record, ensure_ascii=False))
            return EXIT_OK
        result = client.call(args.node, args.tool, arguments, timeout=args.timeout)
        return _print_result(result, args.out, args.json)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except AuthError as exc:
        print(f"cortex: not authorized: {exc}", file=sys.stderr)
        return EXIT_AUTH
    except (NodeNotFound, NodeDisconnected) as exc:
        print(f"cortex: {exc}", file=sys.stderr)
        return EXIT_NODE
    except ConnectionLost as exc:
        print(f"cortex: {exc}", file=sys.stderr)
        return EXIT_NODE
    except CortexError as exc:
        print(f"cortex: {exc}", file=sys.stderr)
        return EXIT_TOOL_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
