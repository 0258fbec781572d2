"""`cortex-server`: serve, enroll-node, issue-token, revoke-node, revoke-user, certs."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import ssl
import sys
from pathlib import Path

from server import admin
from server.store import StoreError
from server.stores import engine_of
from spec.version import VERSION

__all__ = ["main"]

MAX_NODE_TTL = 900


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cortex-server", description="The Cortex orchestrator.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True)

    def data_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--data-dir", type=Path, default=None, help="default $CORTEX_SERVER_HOME or ~/.cortex-server"
        )
        database_url(p)

    def database_url(p: argparse.ArgumentParser) -> None:
        # No default shown here: $CORTEX_DATABASE_URL may hold a password (read in `main`).
        p.add_argument("--database-url", default=None, help="default $CORTEX_DATABASE_URL or SQLite")

    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    data_dir(serve)
    serve.add_argument("--tls-cert", type=Path)
    serve.add_argument("--tls-key", type=Path)
    serve.add_argument("--client-ca", type=Path)
    serve.add_argument("--heartbeat-interval", type=float, default=15.0)
    serve.add_argument("--node-token-ttl", type=int, default=300)
    serve.add_argument("--max-frame-bytes", type=int, default=16 * 1024 * 1024)
    serve.add_argument("--handshake-timeout", type=float, default=10.0, help="seconds to complete a request")
    serve.add_argument("--max-connections", type=int, default=10_000)
    serve.add_argument("--artifact-ttl", type=float, default=900.0, help="seconds a large result is kept")
    serve.add_argument("--artifact-node-bytes", type=int, default=512 * 1024 * 1024)
    serve.add_argument("--artifact-total-bytes", type=int, default=2048 * 1024 * 1024)
    serve.add_argument("--demo", action="store_true", help="also run a local node named 'local'")
    serve.add_argument("--log-level", default=os.environ.get("CORTEX_LOG_LEVEL", "info"))
    serve.add_argument(
        "--redis-url",
        default=os.environ.get("CORTEX_REDIS_URL") or None,
        help="run as one replica of a cluster sharing this Redis (default $CORTEX_REDIS_URL)",
    )

    enroll = sub.add_parser("enroll-node", help="register a node and print its credential")
    enroll.add_argument("name")
    enroll.add_argument("--workspace", required=True)
    data_dir(enroll)

    issue = sub.add_parser("issue-token", help="print a user access token")
    issue.add_argument("name")
    issue.add_argument("--workspace", required=True)
    issue.add_argument("--role", choices=["member", "admin"], default="member")
    issue.add_argument("--ttl", type=int, default=3600)
    data_dir(issue)

    revoke = sub.add_parser("revoke-node", help="revoke a node's credential and close its connection")
    revoke.add_argument("name")
    data_dir(revoke)

    revoke_user = sub.add_parser("revoke-user", help="refuse every token of a user issued until now")
    revoke_user.add_argument("name")
    revoke_user.add_argument("--workspace", default=None, help="only this workspace's tokens (default: all)")
    data_dir(revoke_user)

    certs = sub.add_parser("certs", help="development CA and certificates for mTLS")
    certs.add_argument("action", choices=["init", "client"])
    certs.add_argument("name", nargs="?")
    certs.add_argument("--out", type=Path, required=True)
    database_url(certs)  # every command takes it (CONTRACT §1); certs keeps no state
    return parser


def serve(args: argparse.Namespace, data_dir: Path, database_url: str | None = None) -> int:
    import uvicorn

    from server.app import build_app
    from server.config import ServerConfig
    from server.limits import AcceptErrorLog, EscapingFormatter, Limits, protocol_classes, raise_fd_limit

    if not 1 <= args.node_token_ttl <= MAX_NODE_TTL:
        print(f"--node-token-ttl must be between 1 and {MAX_NODE_TTL}", file=sys.stderr)
        return 2
    if args.handshake_timeout <= 0 or args.max_connections < 1:
        print("--handshake-timeout and --max-connections must be positive", file=sys.stderr)
        return 2
    if bool(args.tls_cert) != bool(args.tls_key):
        print("--tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    if args.client_ca and not args.tls_cert:
        print("--client-ca needs --tls-cert and --tls-key", file=sys.stderr)
        return 2
    # Open (and migrate) the store once before serving: an unreachable or too-new database is one clear
    # line and exit code 1 (StoreError, in `main`), not a startup traceback.
    admin.with_store(data_dir, database_url, _reachable)
    config = ServerConfig(
        data_dir=data_dir,
        host=args.host,
        port=args.port,
        heartbeat_interval=args.heartbeat_interval,
        node_token_ttl=args.node_token_ttl,
        max_frame_bytes=args.max_frame_bytes,
        artifact_ttl_s=args.artifact_ttl,
        artifact_node_bytes=args.artifact_node_bytes,
        artifact_total_bytes=args.artifact_total_bytes,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        client_ca=args.client_ca,
        handshake_timeout=args.handshake_timeout,
        max_connections=args.max_connections,
        redis_url=args.redis_url,
        database_url=database_url,
    )
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:  # node and caller input never forges a log line
        handler.setFormatter(EscapingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    limits = Limits(
        frame_bytes=args.max_frame_bytes,
        handshake_timeout=args.handshake_timeout,
        max_connections=args.max_connections,
    )
    # Room for every allowed connection plus the server's own files, so the limit bites before EMFILE.
    raise_fd_limit(args.max_connections + 1024)
    http_protocol, ws_protocol = protocol_classes(limits)
    uv_config = uvicorn.Config(
        build_app(config),
        host=args.host,
        port=args.port,
        http=http_protocol,  # h11 with a request deadline and a connection cap (server.limits)
        ws=ws_protocol,  # websockets-sansio, without a read pause per message, with an upgrade deadline
        ws_max_size=args.max_frame_bytes,
        ws_per_message_deflate=False,
        ws_ping_interval=None,
        lifespan="on",
        log_level=str(args.log_level).lower(),
        access_log=False,
        ssl_certfile=str(args.tls_cert) if args.tls_cert else None,
        ssl_keyfile=str(args.tls_key) if args.tls_key else None,
        ssl_ca_certs=str(args.client_ca) if args.client_ca else None,
        ssl_cert_reqs=ssl.CERT_REQUIRED if args.client_ca else ssl.CERT_NONE,
        timeout_graceful_shutdown=3,
        backlog=limits.accept_backlog,  # also the accept burst per loop turn (server.limits rule 4)
    )
    server = uvicorn.Server(uv_config)
    from server.demo import serve_with_extras

    async def run() -> int:
        AcceptErrorLog(limits.accept_log_interval).install(asyncio.get_running_loop())
        return await serve_with_extras(server, config, demo=args.demo)

    return asyncio.run(run())


async def _reachable(store: object) -> None:
    """Nothing to do: opening the store (and migrating it) was the check."""
    return None


def main(argv: list[str] | None = None) -> int:
    from server.cli_help import describe

    args = describe(_parser()).parse_args(argv)
    data_dir: Path = (getattr(args, "data_dir", None) or admin.default_data_dir()).expanduser()
    url: str | None = args.database_url or os.environ.get("CORTEX_DATABASE_URL") or None
    try:
        engine_of(url)  # a bad URL is a clear error before anything starts (the password redacted)
        if args.command == "serve":
            return serve(args, data_dir, url)
        if args.command == "enroll-node":
            print(admin.enroll_node(data_dir, args.name, args.workspace, url))
            return 0
        if args.command == "issue-token":
            print(admin.issue_token(data_dir, args.name, args.workspace, args.role, args.ttl, url))
            _warn_if_no_nodes(data_dir, args.workspace, args.role, url)
            return 0
        if args.command == "revoke-node":
            if not admin.revoke_node(data_dir, args.name, url):
                print(f"no node named {args.name!r}", file=sys.stderr)
                return 1
            print(f"node {args.name} revoked", file=sys.stderr)
            return 0
        if args.command == "revoke-user":
            admin.revoke_user(data_dir, args.name, args.workspace, url)
            where = f"in workspace {args.workspace}" if args.workspace else "in every workspace"
            print(f"user {args.name} revoked {where}: tokens issued until now are refused", file=sys.stderr)
            return 0
        if args.command == "certs":
            from server.certs import CertError, run_certs_command

            try:
                written = run_certs_command(args.action, args.out, args.name)
            except CertError as exc:
                print(f"cortex-server: {exc}", file=sys.stderr)
                return 1
            for path in written:
                print(path)
            return 0
    except (StoreError, ValueError) as exc:
        print(f"cortex-server: {exc}", file=sys.stderr)
        return 1
    return 2


def _warn_if_no_nodes(data_dir: Path, workspace: str, role: str, database_url: str | None) -> None:
    """A member token for an empty workspace sees nothing: a typo in --workspace is the usual cause."""
    nodes = [n for n in admin.list_nodes(data_dir, database_url) if not n.revoked]
    live = [n for n in nodes if n.workspace == workspace]
    others = sorted({n.workspace for n in nodes})
    if live:
        return
    known = f" (workspaces with nodes: {', '.join(others)})" if others else ""
    scope = "; as an admin it still sees every node" if role == "admin" else ""
    print(
        f"cortex-server: warning: workspace {workspace!r} has no nodes yet{known}{scope}. Enroll one with "
        f"`cortex-server enroll-node NAME --workspace {workspace}`",
        file=sys.stderr,
    )


if __name__ == "__main__":
    sys.exit(main())
