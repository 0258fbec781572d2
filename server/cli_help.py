"""`cortex-server --help` in full: what each option means, its unit and default, examples, exit codes.

Layering: a leaf beside `server.cli`; `describe(parser)` walks the parser cli.py built and fills in the
help text by option name, so cli.py keeps only the option definitions (and other changes to it merge
without touching this text). An option this table does not know keeps whatever help it was given.
"""

from __future__ import annotations

import argparse

__all__ = ["describe"]

_MAIN_EPILOG = """\
examples:
  cortex-server serve --demo                          # server + a local node `local` + dashboard link
  cortex-server enroll-node laptop --workspace me     # prints the node's credential, once
  cortex-server issue-token alice --workspace me      # a user token for `cortex` and the dashboard
  cortex-server revoke-node laptop                    # its credential dies, its connection closes

exit codes: 0 ok, 1 the command failed (the line on stderr says why), 2 usage.
The data dir is $CORTEX_SERVER_HOME or ~/.cortex-server.
"""

_COMMAND_EPILOGS = {
    "serve": "examples:\n  cortex-server serve --demo\n  cortex-server serve --host 0.0.0.0 --port 8765 "
    "--tls-cert cert.pem --tls-key key.pem\n\nexit codes: 0 stopped, 1 could not start, 2 usage.",
    "enroll-node": "Prints the credential on stdout, one line, nothing else: pipe it to the node's\n"
    "`cortex-agent login --server URL --name NAME`.\n\nexample:\n"
    "  cortex-server enroll-node laptop --workspace me\n\n"
    "exit codes: 0 enrolled, 1 bad or taken name.",
    "issue-token": "Prints the token on stdout, one line. Warns on stderr when the workspace has no\n"
    "nodes yet.\n\n"
    "example:\n  export CORTEX_TOKEN=$(cortex-server issue-token alice --workspace me --ttl 86400)\n\n"
    "exit codes: 0 issued, 1 bad name, role or ttl.",
    "revoke-node": "example:\n  cortex-server revoke-node laptop\n\nexit codes: 0 revoked, 1 no such node.",
    "revoke-user": "example:\n  cortex-server revoke-user alice --workspace me\n\n"
    "exit codes: 0 revoked, 1 failed.",
    "certs": "examples:\n  cortex-server certs init --out ./pki\n"
    "  cortex-server certs client laptop --out ./pki\n\n"
    "exit codes: 0 written, 1 failed.",
}

_OPTION_HELP = {
    "--host": "address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)",
    "--port": "TCP port (default 8765; 0 picks a free one)",
    "--data-dir": "where state lives: SQLite, signing keys (default $CORTEX_SERVER_HOME or ~/.cortex-server)",
    "--tls-cert": "serve HTTPS/WSS with this certificate (PEM); needs --tls-key",
    "--tls-key": "the private key of --tls-cert (PEM)",
    "--client-ca": "require client certificates signed by this CA (mTLS); needs --tls-cert",
    "--heartbeat-interval": "seconds between pings to each node; two missed mark it unhealthy (default 15)",
    "--node-token-ttl": "lifetime of a node access token in seconds, 1 to 900 (default 300)",
    "--max-frame-bytes": "largest WebSocket frame and request body in bytes (default 16777216 = 16 MiB)",
    "--demo": "also enroll and run a local node `local` in workspace `local`; print a signed-in "
    "dashboard link",
    "--log-level": "debug, info, warning or error (default $CORTEX_LOG_LEVEL or info)",
    "--workspace": "the workspace (a name like the node names)",
    "--role": "member acts on its workspace's nodes; admin on every node (default member)",
    "--ttl": "token lifetime in seconds, 1 s to 30 days (default 3600)",
    "--out": "directory to write the files to",
    "--handshake-timeout": "seconds a connection may take to finish its HTTP request or WebSocket handshake "
    "(default 10)",
    "--max-connections": "connections held at once; past it new ones are refused (default 10000)",
    "--database-url": "postgresql://user@host:port/db for state shared by replicas (default "
    "$CORTEX_DATABASE_URL, else SQLite in the data dir)",
    "--redis-url": "redis://host:port to run as one replica of a cluster (default: none)",
}

_POSITIONAL_HELP = {
    ("enroll-node", "name"): "node name: [a-z0-9][a-z0-9-]{0,62}, unique on this server",
    ("issue-token", "name"): "the user the token is for (its `sub`)",
    ("revoke-node", "name"): "the node to revoke",
    ("revoke-user", "name"): "the user whose tokens to refuse from now on",
    ("certs", "action"): "init: a development CA and server certificate; client: a client certificate",
    ("certs", "name"): "with `client`: the client's name",
}


def describe(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Fill in help text, examples and exit codes on the parser `server.cli` built; returns it."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _MAIN_EPILOG
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            action.metavar = "COMMAND"
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                if sub.description is None and helps.get(name):
                    text = str(helps[name])
                    sub.description = text[0].upper() + text[1:] + "."
                _describe_command(name, sub)
    return parser


def _describe_command(name: str, sub: argparse.ArgumentParser) -> None:
    sub.formatter_class = argparse.RawDescriptionHelpFormatter
    sub.epilog = _COMMAND_EPILOGS.get(name, sub.epilog)
    for action in sub._actions:
        if action.option_strings:
            for option in action.option_strings:
                if option in _OPTION_HELP:
                    action.help = _OPTION_HELP[option]
                    if action.metavar is None and action.nargs != 0:
                        action.metavar = _metavar(option)
        elif (name, action.dest) in _POSITIONAL_HELP:
            action.help = _POSITIONAL_HELP[(name, action.dest)]


def _metavar(option: str) -> str:
    return {
        "--host": "HOST",
        "--port": "PORT",
        "--data-dir": "DIR",
        "--tls-cert": "FILE",
        "--tls-key": "FILE",
        "--client-ca": "FILE",
        "--heartbeat-interval": "S",
        "--node-token-ttl": "S",
        "--max-frame-bytes": "BYTES",
        "--log-level": "LEVEL",
        "--workspace": "W",
        "--ttl": "S",
        "--out": "DIR",
        "--handshake-timeout": "S",
        "--max-connections": "N",
        "--database-url": "URL",
        "--redis-url": "URL",
    }.get(option, option.lstrip("-").upper().replace("-", "_"))
