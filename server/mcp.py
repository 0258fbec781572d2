"""`/mcp`: the MCP streamable-HTTP endpoint that lets any MCP client (desktop LLM apps) use the nodes.

Layering: the official `mcp` package's server side (low-level `Server` + `StreamableHTTPSessionManager`)
owns the transport and the protocol; this module is the thin surface on top: it authenticates the user
bearer token (`server.identity`: 401 + ``WWW-Authenticate: Bearer``), turns the caller's connected
nodes into one tool list and relays `tools/call` through `CallRouter` — the one path every surface uses.

Rules:
1. A node's tool `t` on node `n` is offered as ``n__t``, the list and names the planner's LLM gets too
   (`server.tool_exposure`). Only connected nodes of the caller's workspace are listed (admins: all).
2. Identity is taken from each HTTP request's own token; a session is bound to the credential that
   opened it (the `mcp` session manager refuses another one with 404).
3. Tool-level failures are `isError` results the model can read and act on: arguments failing the
   schema (with the schema's complaint), a node that is not connected or dropped, a timeout. A name that
   names no node of the caller is a protocol error (INVALID_PARAMS), as MCP asks for unknown tools.
4. Progress from the node is forwarded when the client gave a progressToken; the client's
   `notifications/cancelled` cancels the handler, which cancels the call on the node.
5. `notifications/tools/list_changed` goes to the sessions that can see a node whenever that node
   connects, disconnects or re-declares its tools (not on heartbeats, nor on news of a node that is not
   connected, such as an enrollment or an audit-head update): on the standalone stream for
   handshake-era sessions, through `subscriptions/listen` streams for 2026-07-28 clients.
6. An image whose base64 exceeds `INLINE_IMAGE_LIMIT` is replaced by a `resource_link` to
   `/api/v1/artifacts/{id}` (official clients cap one message near 1 MiB): a URL any client can GET
   with the bearer token, and a resource `resources/read` returns in the same session
   (`server/mcp_resources.py`, answered as one JSON body by `server/mcp_reply.py`);
   ``_meta["cortex/uri"]`` gives its short name ``cortex://artifacts/{id}``.
7. Resources: each visible connected node's audit log, and artifacts (`server/mcp_resources.py`);
   `resources/list_changed` goes out with `tools/list_changed` (the audit resources follow the nodes).
   `prompts/list` answers an empty list: Cortex has no prompts.
8. A handshake-era `tools/call` with no progress token is answered as one JSON body, not an SSE stream
   (`server/mcp_json_answer.py`: SSE costs the SDK ~1.7x the server CPU per call, `bench/mcp_bench.py`);
   one with a progress token streams its progress.
"""

from __future__ import annotations

import base64
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import anyio
import mcp_types as types
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.models import InitializationOptions
from mcp.server.session import ServerSession
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    ListenHandler,
    ResourcesListChanged,
    ToolsListChanged,
)
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from server.artifact_store import artifact_uri
from server.auth import AuthError
from server.identity import bearer_token, caller_from_token, unauthorized
from server.mcp_json_answer import JsonAnswerSessionManager
from server.mcp_reply import serve_with_json_reply
from server.mcp_resources import STATIC_LIST_TTL_MS, McpResources
from server.registry import NodeEntry
from server.results import expand_for_mcp
from server.router import Caller
from server.tool_exposure import exposed_tools, split_tool_name, tool_error_text
from spec import errors
from spec.errors import RpcError
from spec.params import ProgressParams
from spec.protocol import MetaKey, Method

if TYPE_CHECKING:
    from server.state import ServerState

__all__ = ["INLINE_IMAGE_LIMIT", "McpEndpoint", "routes", "serving"]

logger = logging.getLogger(__name__)

INLINE_IMAGE_LIMIT = 768 * 1024
"""Base64 characters of one image kept inline; larger ones become a resource_link."""

CALLER_SCOPE_KEY = "cortex.caller"
MAX_TRACKED_SESSIONS = 10_000


def _caller_of(ctx: ServerRequestContext[Any, Any]) -> Caller:
    request = ctx.request
    caller = request.scope.get(CALLER_SCOPE_KEY) if isinstance(request, Request) else None
    if not isinstance(caller, Caller):  # only reachable if the ASGI wrapper was bypassed
        raise MCPError(errors.UNAUTHORIZED, "unauthenticated")
    return caller


def _progress_token(ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams) -> Any:
    for meta in (params.meta, ctx.meta):
        if meta:
            token = meta.get("progress_token", meta.get("progressToken"))
            if token is not None:
                return token
    return None


class _NodeToolsServer(Server[Any]):
    """The low-level server, advertising `tools.listChanged` (the session manager uses the defaults).

    Capabilities say only what happens: prompts never change (there are none) and no resource sends
    updates, so at 2026-07-28 — where the SDK derives every list/subscribe flag from `subscriptions/listen`
    being served — `prompts.listChanged` and `resources.subscribe` are turned back off.
    """

    def get_capabilities(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
        *,
        protocol_version: str | None = None,
    ) -> types.ServerCapabilities:
        capabilities = super().get_capabilities(
            notification_options, experimental_capabilities, extensions, protocol_version=protocol_version
        )
        if capabilities.prompts is not None:
            capabilities.prompts.list_changed = False
        if capabilities.resources is not None:
            capabilities.resources.subscribe = False
        return capabilities

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        return super().create_initialization_options(
            notification_options or NotificationOptions(tools_changed=True, resources_changed=True),
            experimental_capabilities,
            extensions,
        )


class McpEndpoint:
    """The ASGI app behind `/mcp` plus the `mcp` server and its session manager."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.resources = McpResources(state)
        self.server: Server[Any] = _NodeToolsServer(
            "cortex",
            version=state.version,
            instructions=(
                "Tools of the Cortex agent nodes you may use, named <node>__<tool>. "
                "Each description says which machine the tool runs on."
            ),
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_subscriptions_listen=self._listen,
            on_list_resources=self._list_resources,
            on_list_resource_templates=self._list_resource_templates,
            on_read_resource=self._read_resource,
            on_list_prompts=self._list_prompts,
        )
        self.server.add_notification_handler(
            Method.INITIALIZED, types.NotificationParams, self._on_initialized
        )
        self.manager = JsonAnswerSessionManager(
            app=self.server, security_settings=transport_security(state), session_idle_timeout=3600.0
        )
        # Handshake-era sessions: id -> (a ServerSession whose standalone channel reaches it, caller).
        self._sessions: OrderedDict[str, tuple[ServerSession, Caller]] = OrderedDict()
        # 2026-07-28 listeners, one bus per audience (a workspace, or "*" for admins).
        self._listeners: dict[str, tuple[InMemorySubscriptionBus, ListenHandler]] = {}
        self._seen: dict[str, int | None] = {}  # node -> id of the tool list it shows (None: no tools)

    # -- lifecycle ------------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[McpEndpoint]:
        self.state.registry.on_event(self._on_registry_event)
        async with self.manager.run():
            try:
                yield self
            finally:
                for _bus, handler in self._listeners.values():
                    handler.close()

    # -- HTTP -----------------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope)
        token = bearer_token(request.headers)
        if token is None:
            await unauthorized("missing bearer token", 'Bearer realm="cortex"')(scope, receive, send)
            return
        try:
            caller = caller_from_token(self.state.authority, token)
        except AuthError as exc:
            logger.info("MCP request refused: %s", exc.reason)
            await unauthorized("invalid token", 'Bearer realm="cortex", error="invalid_token"')(
                scope, receive, send
            )
            return
        scope[CALLER_SCOPE_KEY] = caller
        # Bind the MCP session to this principal (the session manager compares it on every request).
        scope["user"] = AuthenticatedUser(
            AccessToken(
                token="", client_id=f"{caller.ws}/{caller.sub}", scopes=[caller.role], subject=caller.sub
            )
        )
        await self._revocable(caller, scope, receive, send)

    async def _revocable(self, caller: Caller, scope: Scope, receive: Receive, send: Send) -> None:
        """Run one MCP HTTP exchange so that revoking its user (revoke-user) ends it at once.

        A POST answered as an SSE stream or the standalone GET stream can last for hours; on revocation
        the exchange is cancelled and its response finished (or, if none was started, answered 401).
        """
        started = finished = False

        async def tracked_send(message: Any) -> None:
            nonlocal started, finished
            if message["type"] == "http.response.start":
                started = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                finished = True
            await send(message)

        revoked = False
        # The exchange runs in this task; revocation cancels this scope only (an anyio scope: the SDK's
        # own scopes nest inside it, and a cancel after the exchange ended reaches nothing).
        revocation = anyio.CancelScope()

        def close() -> None:
            nonlocal revoked
            revoked = True
            revocation.cancel()

        with self.state.live_callers.track(caller.sub, caller.ws, caller.iat, close), revocation:
            await serve_with_json_reply(
                self.manager.handle_request,
                scope,
                receive,
                tracked_send,
                max_body=self.manager.max_request_body_size,
                json_answer=self.manager.json_answer_for,
            )
        if revoked:
            if not started:
                await unauthorized("user revoked", 'Bearer realm="cortex", error="invalid_token"')(
                    scope, receive, send
                )
            elif not finished:
                with contextlib.suppress(Exception):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})

    # -- MCP handlers ---------------------------------------------------------------------------------
    async def _list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        caller = _caller_of(ctx)
        self._track(ctx, caller)
        tools = [tool.mcp_json() for tool in exposed_tools(self.state.router, caller)]
        return types.ListToolsResult.model_validate({"tools": tools})

    async def _call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        caller = _caller_of(ctx)
        self._track(ctx, caller)
        parts = split_tool_name(params.name)
        if parts is None:
            raise MCPError(
                errors.INVALID_PARAMS, f"unknown tool {params.name!r} (tools are named <node>__<tool>)"
            )
        node, tool = parts
        on_progress = None
        if _progress_token(ctx, params) is not None:

            async def on_progress(progress: dict[str, Any]) -> None:
                told = ProgressParams.from_json(progress)
                await ctx.session.report_progress(told.progress, told.total, told.message)

        try:
            result = await self.state.router.call_tool(
                caller, node, tool, dict(params.arguments or {}), on_progress=on_progress
            )
        except RpcError as exc:
            known = errors.decode(exc)
            if isinstance(known, errors.NodeNotFound) and not isinstance(known, errors.NodeNotConnected):
                raise MCPError(errors.INVALID_PARAMS, f"unknown tool {params.name!r}") from None
            return _error_result(tool_error_text(exc, node, tool))
        base_url = (
            str(ctx.request.base_url)
            if isinstance(ctx.request, Request)
            else self.state.config.base_url + "/"
        )
        entry = self.state.registry.get(node)
        result = await expand_for_mcp(
            self.state.artifacts,
            result,
            node=node,
            workspace=entry.workspace if entry is not None else caller.ws,
            base_url=base_url,
            inline_limit=INLINE_IMAGE_LIMIT,
        )
        try:
            return types.CallToolResult.model_validate(self._offload_images(result, node, caller, base_url))
        except ValidationError as exc:  # our protocol's shape, yet not MCP's (a resource_link uri that
            # is no URL, a resource with neither text nor blob): the caller is told, as for any bad answer
            details = exc.errors()
            where = ".".join(str(part) for part in details[0]["loc"]) if details else ""
            why = details[0]["msg"] if details else "invalid"
            logger.warning("node %r answered %s with a result MCP cannot carry: %s", node, tool, where)
            return _error_result(
                f"node {node} answered with a result that is not an MCP CallToolResult ({where}: {why})"
            )

    async def _list_resources(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        caller = _caller_of(ctx)
        self._track(ctx, caller)
        return self.resources.list(caller)

    async def _list_resource_templates(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        _caller_of(ctx)
        return self.resources.templates()

    async def _read_resource(
        self, ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        return await self.resources.read(_caller_of(ctx), str(params.uri))

    async def _list_prompts(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListPromptsResult:
        _caller_of(ctx)
        return types.ListPromptsResult(prompts=[], ttl_ms=STATIC_LIST_TTL_MS, cache_scope="public")

    async def _listen(
        self, ctx: ServerRequestContext[Any, Any], params: types.SubscriptionsListenRequestParams
    ) -> types.SubscriptionsListenResult:
        caller = _caller_of(ctx)
        audience = "*" if caller.is_admin else caller.ws
        if audience not in self._listeners:
            bus = InMemorySubscriptionBus()
            self._listeners[audience] = (bus, ListenHandler(bus))
        return await self._listeners[audience][1](ctx, params)

    async def _on_initialized(
        self, ctx: ServerRequestContext[Any, Any], params: types.NotificationParams
    ) -> None:
        with contextlib.suppress(MCPError):
            self._track(ctx, _caller_of(ctx))

    # -- list_changed ---------------------------------------------------------------------------------
    def _track(self, ctx: ServerRequestContext[Any, Any], caller: Caller) -> None:
        request = ctx.request
        session_id = request.headers.get("mcp-session-id") if isinstance(request, Request) else None
        if not session_id:
            return
        self._sessions[session_id] = (ctx.session, caller)
        self._sessions.move_to_end(session_id)
        while len(self._sessions) > MAX_TRACKED_SESSIONS:
            self._sessions.popitem(last=False)

    async def _on_registry_event(self, event: str, entry: NodeEntry) -> None:
        # What the node adds to a session's tool list: nothing while it is not connected (an enrollment,
        # a disconnected entry learnt from another replica), else its declared list.
        fingerprint = id(entry.tools) if self.state.registry.link(entry.name) is not None else None
        if self._seen.get(entry.name) == fingerprint:
            return  # a heartbeat, an RTT update, an enrollment: the tool list did not change
        self._seen[entry.name] = fingerprint
        for audience, (bus, _handler) in list(self._listeners.items()):
            if audience in ("*", entry.workspace):
                await bus.publish(ToolsListChanged())
                await bus.publish(ResourcesListChanged())
        for session_id, (session, caller) in list(self._sessions.items()):
            if not caller.can_see(entry.workspace):
                continue
            try:
                await session.send_tool_list_changed()
                await session.send_resource_list_changed()
            except Exception:  # a closed session: stop tracking it
                logger.debug("dropping MCP session %s from list_changed", session_id[:12])
                self._sessions.pop(session_id, None)

    # -- large images -----------------------------------------------------------------------------------
    def _offload_images(
        self, result: dict[str, Any], node: str, caller: Caller, base_url: str
    ) -> dict[str, Any]:
        content = result.get("content") or []
        if not any(c.get("type") == "image" and len(c.get("data", "")) > INLINE_IMAGE_LIMIT for c in content):
            return result
        store = self.state.artifacts
        entry = self.state.registry.get(node)
        workspace = entry.workspace if entry is not None else caller.ws
        replaced: list[dict[str, Any]] = []
        for item in content:
            if item.get("type") == "image" and len(item.get("data", "")) > INLINE_IMAGE_LIMIT:
                data = base64.b64decode(item["data"])
                mime = item.get("mimeType", "application/octet-stream")
                artifact_id = store.put(data, mime, node=node, workspace=workspace)
                replaced.append(
                    {
                        "type": "resource_link",
                        "uri": f"{base_url.rstrip('/')}/api/v1/artifacts/{artifact_id}",
                        "name": f"{node}-image-{artifact_id[:8]}",
                        "description": (
                            "Image too large to inline: read it with resources/read in this session "
                            "(or GET it with the same bearer token)."
                        ),
                        "mimeType": mime,
                        "size": len(data),
                        "_meta": {MetaKey.URI: artifact_uri(artifact_id)},
                    }
                )
            else:
                replaced.append(item)
        return {**result, "content": replaced}


def _error_result(text: str) -> types.CallToolResult:
    return types.CallToolResult.model_validate({"content": [{"type": "text", "text": text}], "isError": True})


def transport_security(state: ServerState) -> TransportSecuritySettings:
    """DNS-rebinding protection kept on, allowing loopback plus the configured host and public URL."""
    from urllib.parse import urlsplit

    hosts = {"127.0.0.1", "localhost", "[::1]"}
    config = state.config
    wildcard = config.host in ("0.0.0.0", "::", "")
    if not wildcard:
        hosts.add(f"[{config.host}]" if ":" in config.host else config.host)
    if config.public_url:
        netloc = urlsplit(config.public_url).hostname
        if netloc:
            hosts.add(f"[{netloc}]" if ":" in netloc else netloc)
    if wildcard and not config.public_url:
        # Listening on every interface with no known public name: any Host may be legitimate. The bearer
        # token (which a rebinding browser page does not have) still guards every request.
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    allowed_hosts = sorted({f"{h}:*" for h in hosts} | hosts)
    origins = sorted(
        {f"{scheme}://{h}{suffix}" for h in hosts for scheme in ("http", "https") for suffix in (":*", "")}
    )
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=allowed_hosts, allowed_origins=origins
    )


def _endpoint_of(scope: Scope) -> ASGIApp:
    state: ServerState = scope["app"].state.cortex
    endpoint = state.mcp
    if endpoint is None:
        raise RuntimeError("the MCP endpoint is not running (build_app's lifespan starts it)")
    return endpoint


class _McpRoute:
    """ASGI app for the `/mcp` route: finds the endpoint built in the lifespan."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _endpoint_of(scope)(scope, receive, send)


@contextlib.asynccontextmanager
async def serving(state: ServerState) -> AsyncIterator[McpEndpoint]:
    """Build the endpoint and run its session manager for the app's lifetime (call from the lifespan)."""
    endpoint = McpEndpoint(state)
    state.mcp = endpoint
    try:
        async with endpoint.run():
            yield endpoint
    finally:
        state.mcp = None


def routes() -> list[Route]:
    return [Route("/mcp", _McpRoute(), methods=["GET", "POST", "DELETE"])]
