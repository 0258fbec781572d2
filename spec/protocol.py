"""The protocol's constants: subprotocol, protocol revision, endpoint paths, method names, audit page size.

Layering: the bottom of `spec`, beside `spec.errors`; no I/O. Every package (server, desktop_agent,
sdk) names these through this module, never as string literals, so a name is written exactly once
(tests/test_protocol_constants.py greps the other packages to keep it that way). spec/protocol.md is
the prose form.

Rules:
1. `SUBPROTOCOL` is offered by every client and echoed by the server on both WebSocket endpoints. A
   client may offer `BATCHED_SUBPROTOCOL` before it; a server that speaks it echoes it instead, and the
   link's frames then carry one or more messages each (`spec.frames`). Anything else stays one message
   per frame.
2. `PROTOCOL_VERSION` is what `initialize` carries, both ways (MCP revision 2025-11-25).
3. `Method` holds every JSON-RPC method and notification name of the tunnel and the client RPC; a
   `Method` member *is* its wire string (`StrEnum`), so it goes into a frame or a handler table as is.
4. An audit page asks for 1 to `AUDIT_MAX_LIMIT` records; `clamp_audit_limit` is the one place a
   requested size is brought into that range.
"""

from __future__ import annotations

from enum import StrEnum
from typing import SupportsInt

__all__ = [
    "AUDIT_DEFAULT_LIMIT",
    "AUDIT_MAX_LIMIT",
    "BATCHED_SUBPROTOCOL",
    "PROTOCOL_VERSION",
    "RPC_PATH",
    "SUBPROTOCOL",
    "TUNNEL_PATH",
    "MetaKey",
    "Method",
    "clamp_audit_limit",
]

SUBPROTOCOL = "cortex.v1"
"""The WebSocket subprotocol of both `WS /api/v1/nodes/connect` and `WS /api/v1/rpc`."""

BATCHED_SUBPROTOCOL = "cortex.v1.batched"
"""`SUBPROTOCOL` with frames of one or more messages (rule 1, spec/protocol.md §1.2)."""

PROTOCOL_VERSION = "2025-11-25"
"""The MCP protocol revision the tunnel's `initialize` handshake follows (the last with `initialize`)."""

TUNNEL_PATH = "/api/v1/nodes/connect"
"""The node tunnel's path on the server's base URL."""

RPC_PATH = "/api/v1/rpc"
"""The client JSON-RPC endpoint's path on the server's base URL."""

AUDIT_DEFAULT_LIMIT = 100
"""Records per `audit/read` page when the caller does not say."""

AUDIT_MAX_LIMIT = 1000
"""The most records one `audit/read` page carries."""


class Method(StrEnum):
    """Every method and notification name on a Cortex link (tunnel: T, client RPC: C; → direction)."""

    INITIALIZE = "initialize"
    """T server → node: the handshake; params carry the server's frame limit."""
    PING = "ping"
    """T both ways, C client → server: liveness; result `{}`."""
    TOOLS_LIST = "tools/list"
    """T server → node `{}`; C `{node}`: the node's declared tools."""
    TOOLS_CALL = "tools/call"
    """T `{name, arguments, _meta}`; C `{node, name, arguments, timeout_s?}`: run one tool."""
    AUDIT_READ = "audit/read"
    """T `{after_seq, limit}`; C `{node, after_seq, limit}`: a page of the node's audit log."""
    AUTH_REFRESH = "auth/refresh"
    """T node → server `{access_token}`: in-band token renewal."""
    ARTIFACTS_WRITE = "artifacts/write"
    """T node → server: one chunk of a result too large for one frame."""
    NODES_LIST = "nodes/list"
    """C client → server: the nodes of the caller's workspace."""
    INITIALIZED = "notifications/initialized"
    """T server → node: the handshake is complete."""
    CANCELLED = "notifications/cancelled"
    """Both ways `{requestId, reason}`: stop working on that request; it gets no answer."""
    PROGRESS = "notifications/progress"
    """Both ways `{progressToken, progress, total?, message?}`."""
    TOOLS_LIST_CHANGED = "notifications/tools/list_changed"
    """T node → server: fetch `tools/list` again."""
    MESSAGE = "notifications/message"
    """T node → server: a log line."""
    APPROVALS = "notifications/approvals"
    """T node → server `{seq, approvals}`: the calls waiting for the owner's answer (shown only)."""


class MetaKey(StrEnum):
    """Keys of a message's `_meta` object that Cortex defines (MCP reserves the slash-prefixed form)."""

    CALLER = "cortex/caller"
    """`tools/call` server → node: `{sub, ws}` of the user the call is for (audited by the node)."""
    ARTIFACT = "cortex/artifact"
    """A CallToolResult that is only a reference `{id, uri, size, sha256}` to an uploaded whole one."""
    AUDIT = "cortex/audit"
    """A CallToolResult node → server: the seq of the call's audit records."""
    URI = "cortex/uri"
    """A `resource_link` (MCP): the artifact's short `cortex://artifacts/{id}` name."""
    NODE = "cortex/node"
    """An MCP resource: the node the artifact came from."""


def clamp_audit_limit(limit: SupportsInt) -> int:
    """A requested audit page size brought into 1 … `AUDIT_MAX_LIMIT` (rule 4)."""
    return max(1, min(int(limit), AUDIT_MAX_LIMIT))
