"""`cortex mcp-stdio`: a stdio MCP server that relays to a Cortex server's `/mcp`, for MCP clients that
only launch local stdio servers.

Layering: two halves of the official `mcp` package back to back — a low-level `Server` on this process's
stdin/stdout facing the local client, and a `ClientSession` over streamable HTTP (httpx2, bearer token)
facing the Cortex server. Tool lists and calls are passed through unchanged; progress flows back, a local
cancel cancels the remote call (the official client sends `notifications/cancelled`), and the server's
`notifications/tools/list_changed` is repeated to the local client. Resources (artifacts such as a large
screenshot's `resource_link`, node audit logs) and the (empty) prompt list are relayed the same way, with
`notifications/resources/list_changed`. Nothing is printed to stdout except
MCP messages; diagnostics go to stderr.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.session import ServerSession
from mcp.server.stdio import stdio_server

__all__ = ["McpStdioBridge", "run_bridge"]

logger = logging.getLogger(__name__)


class McpStdioBridge:
    def __init__(self, server_url: str, token: str | None, *, timeout: float = 30.0) -> None:
        self.endpoint = server_url.rstrip("/") + "/mcp"
        self.token = token
        self.timeout = timeout
        self._remote: ClientSession | None = None
        self._local: ServerSession | None = None
        self.server: Server[Any] = Server(
            "cortex-mcp-stdio",
            instructions="Tools of Cortex agent nodes, named <node>__<tool>, relayed from a Cortex server.",
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_list_resources=self._list_resources,
            on_list_resource_templates=self._list_resource_templates,
            on_read_resource=self._read_resource,
            on_list_prompts=self._list_prompts,
        )

    @property
    def remote(self) -> ClientSession:
        if self._remote is None:
            raise RuntimeError("the bridge is not connected")
        return self._remote

    async def _list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        self._local = ctx.session
        return await self.remote.list_tools(params=params)

    async def _call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        self._local = ctx.session

        async def forward(progress: float, total: float | None, message: str | None) -> None:
            await ctx.session.report_progress(progress, total, message)

        result = await self.remote.call_tool(params.name, params.arguments, progress_callback=forward)
        if not isinstance(result, types.CallToolResult):
            return types.CallToolResult(
                content=[types.TextContent(text="unexpected result kind")], is_error=True
            )
        return result

    async def _list_resources(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        self._local = ctx.session
        return await self.remote.list_resources(params=params)

    async def _list_resource_templates(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        return await self.remote.list_resource_templates(params=params)

    async def _read_resource(
        self, ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        return await self.remote.read_resource(str(params.uri))

    async def _list_prompts(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListPromptsResult:
        return await self.remote.list_prompts(params=params)

    async def _on_remote_message(self, message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification) and self._local is not None:
            with contextlib.suppress(Exception):
                await self._local.send_tool_list_changed()
        elif isinstance(message, types.ResourceListChangedNotification) and self._local is not None:
            with contextlib.suppress(Exception):
                await self._local.send_resource_list_changed()
        elif isinstance(message, Exception):
            logger.warning("cortex server stream error: %s", message)

    async def serve(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        timeouts = httpx2.Timeout(
            self.timeout, read=None
        )  # tools may run long; progress keeps the stream busy
        async with (
            httpx2.AsyncClient(headers=headers, timeout=timeouts) as http,
            streamable_http_client(self.endpoint, http_client=http) as (read, write),
            ClientSession(read, write, message_handler=self._on_remote_message) as remote,
        ):
            await remote.initialize()
            self._remote = remote
            options = self.server.create_initialization_options(
                NotificationOptions(tools_changed=True, resources_changed=True)
            )
            async with stdio_server() as (local_read, local_write):
                await self.server.run(local_read, local_write, options)


def run_bridge(server_url: str, token: str | None) -> int:
    """Blocking entry point for `cortex mcp-stdio`; returns the exit code."""
    logging.basicConfig(level=logging.WARNING, format="cortex mcp-stdio: %(message)s")
    bridge = McpStdioBridge(server_url, token)
    try:
        anyio.run(bridge.serve)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the boundary of a command: one line on stderr, not a traceback
        detail: BaseException = exc
        while isinstance(detail, BaseExceptionGroup) and detail.exceptions:  # task groups nest
            detail = detail.exceptions[0]
        print(f"cortex mcp-stdio: cannot relay to {bridge.endpoint}: {detail}", file=sys.stderr)
        return 1
    return 0
