"""The Python SDK: `AsyncClient` over `WS /api/v1/rpc`, and `Client`, its blocking twin.

Layering: `websockets` client (transport) → `spec.link.WebsocketsLink` (or any `spec.link.Link`, given to
`AsyncClient.attach`) → `spec.session.RpcSession` (dispatcher) → these facades.
`Client` runs an `AsyncClient` on a private event loop in a background thread, so a plain script can use
it without knowing asyncio; progress callbacks then run on that thread.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import ssl
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx2
import websockets
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from sdk.exceptions import (
    AuthError,
    CallCancelled,
    CallTimeout,
    ConnectionLost,
    CortexError,
    from_rpc_error,
)
from sdk.planner import PlanStep, aplan, plan
from spec import json_limits
from spec.coalesce import CoalescingClientConnection
from spec.errors import RpcError
from spec.frames import client_link, client_subprotocols
from spec.link import Link, WebsocketsLink, pump
from spec.params import ClientAuditReadParams, ClientToolsCallParams, ClientToolsListParams
from spec.protocol import RPC_PATH, MetaKey, Method
from spec.session import RpcSession
from spec.tool_result import tool_result_problem
from spec.urls import ws_url

__all__ = ["AsyncClient", "CallHandle", "CallResult", "Client", "Image"]

T = TypeVar("T")
ProgressFn = Callable[[dict[str, Any]], Awaitable[None] | None]
DEFAULT_URL = "http://127.0.0.1:8765"


@dataclass(frozen=True)
class Image:
    data: bytes
    mime_type: str


@dataclass(frozen=True)
class CallResult:
    """A tool's CallToolResult, with the parts a script wants."""

    content: list[dict[str, Any]]
    structured: dict[str, Any] | None
    is_error: bool
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> CallResult:
        return cls(
            list(raw.get("content") or []), raw.get("structuredContent"), bool(raw.get("isError")), raw
        )

    @property
    def text(self) -> str:
        return "\n".join(c.get("text", "") for c in self.content if c.get("type") == "text")

    @property
    def images(self) -> list[Image]:
        return [
            Image(base64.b64decode(c["data"]), c.get("mimeType", "application/octet-stream"))
            for c in self.content
            if c.get("type") == "image"
        ]


class CallHandle:
    """A started call: await it for the `CallResult`; `await handle.cancel()` cancels it end to end."""

    def __init__(self, task: asyncio.Task[CallResult]) -> None:
        self._task = task
        self._cancelled = False

    async def cancel(self) -> None:
        """Returns once the cancel is sent to the server; awaiting the handle then raises CallCancelled."""
        if self._task.done():
            return
        self._cancelled = True
        self._task.cancel()
        await asyncio.wait({self._task})

    def done(self) -> bool:
        return self._task.done()

    async def _result(self) -> CallResult:
        try:
            return await self._task
        except asyncio.CancelledError:
            if self._cancelled:
                raise CallCancelled("the call was cancelled") from None
            raise

    def __await__(self) -> Generator[Any, None, CallResult]:
        return self._result().__await__()


class AsyncClient:
    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_frame_bytes: int = 64 * 1024 * 1024,
        open_timeout: float = 10.0,
    ) -> None:
        self.url = url
        self._token = token
        self._ssl = ssl_context
        self._max_frame = max_frame_bytes
        # Frames of several messages when the server speaks them and our limit takes them (spec.frames).
        self._subprotocols = [Subprotocol(name) for name in client_subprotocols(max_frame_bytes)]
        self._open_timeout = open_timeout
        self._ws: Link | None = None
        self._rpc: RpcSession | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def connect(self) -> None:
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        try:
            ws = await connect(
                ws_url(self.url, RPC_PATH),
                additional_headers=headers,
                subprotocols=self._subprotocols,
                compression=None,
                create_connection=CoalescingClientConnection,
                max_size=self._max_frame,
                ssl=self._ssl,
                open_timeout=self._open_timeout,
            )
        except websockets.InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise AuthError(f"the server refused the token ({status})", data={"status": status}) from None
            raise ConnectionLost(f"the server refused the connection ({status})") from None
        except (OSError, TimeoutError, websockets.WebSocketException) as exc:
            raise ConnectionLost(f"cannot reach {self.url}: {exc}") from None
        self.attach(
            client_link(WebsocketsLink(ws, websockets.ConnectionClosedOK), ws.subprotocol, name="frames:sdk")
        )

    def attach(self, link: Link) -> None:
        """Run this client over an already open link to a server's client RPC (what `connect` does
        with the WebSocket it opens; the in-process tests give an in-memory link)."""
        self._ws = link
        self._rpc = RpcSession(link.send, {}, name="sdk")
        self._reader = asyncio.create_task(self._read_loop(link, self._rpc))

    async def _read_loop(self, link: Link, rpc: RpcSession) -> None:
        try:
            await pump(link, rpc)
        except websockets.WebSocketException:
            pass
        finally:
            rpc.close(ConnectionLost(f"the connection to {self.url} was lost"))

    async def aclose(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._ws = None

    async def _request(
        self, method: str, params: dict[str, Any], on_progress: ProgressFn | None = None
    ) -> Any:
        if self._rpc is None:
            raise ConnectionLost("not connected (use `async with AsyncClient(...)`)")
        try:
            return await self._rpc.request(method, params, on_progress=on_progress)
        except RpcError as exc:
            raise from_rpc_error(exc) from None

    async def nodes(self) -> list[dict[str, Any]]:
        result = await self._request(Method.NODES_LIST, {})
        nodes: list[dict[str, Any]] = result["nodes"]
        return nodes

    async def tools(self, node: str) -> list[dict[str, Any]]:
        result = await self._request(Method.TOOLS_LIST, ClientToolsListParams(node).to_json())
        tools: list[dict[str, Any]] = result["tools"]
        return tools

    async def audit(self, node: str, after: int = 0, limit: int = 100) -> dict[str, Any]:
        result: dict[str, Any] = await self._request(
            Method.AUDIT_READ, ClientAuditReadParams(node, after, limit).to_json()
        )
        return result

    async def call(
        self,
        node: str,
        tool: str,
        arguments: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        on_progress: ProgressFn | None = None,
    ) -> CallResult:
        params = ClientToolsCallParams(node, tool, arguments or {}, timeout).to_json()
        if timeout is None:  # no local bound to keep: skip the timeout machinery (a hot path)
            return CallResult.from_wire(
                await self._whole(await self._request(Method.TOOLS_CALL, params, on_progress))
            )
        try:
            # The server enforces `timeout_s` (and cancels the node's work); the local bound only
            # guards against a server that stopped answering.
            async with asyncio.timeout(timeout + 5.0):
                raw = await self._request(Method.TOOLS_CALL, params, on_progress)
        except TimeoutError:
            raise CallTimeout(f"{tool} on {node} did not finish within {timeout:g} s") from None
        return CallResult.from_wire(await self._whole(raw))

    async def _whole(self, raw: Any) -> Any:
        """A result too large for one message comes as a reference (``_meta["cortex/artifact"]``,
        spec/protocol.md §11): fetch the whole CallToolResult it names and check its SHA-256."""
        meta = raw.get("_meta") if isinstance(raw, dict) else None
        ref = meta.get(MetaKey.ARTIFACT) if isinstance(meta, dict) else None
        if not isinstance(ref, dict) or not isinstance(ref.get("uri"), str):
            return raw
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        try:
            async with httpx2.AsyncClient(verify=self._ssl or True, timeout=60.0) as http:
                response = await http.get(self.url.rstrip("/") + ref["uri"], headers=headers)
        except httpx2.HTTPError as exc:
            raise ConnectionLost(f"cannot fetch the result artifact: {exc}") from None
        if response.status_code in (401, 403):
            raise AuthError(f"the server refused the token ({response.status_code})")
        if response.status_code != 200:
            raise CortexError(f"the result artifact is gone ({response.status_code}); it may have expired")
        body = response.content
        # Megabytes: hash and parse off the event loop, so the client's other calls keep flowing.
        digest = await asyncio.to_thread(lambda: hashlib.sha256(body).hexdigest())
        if ref.get("sha256") and digest != ref["sha256"]:
            raise CortexError("the result artifact does not match its SHA-256")
        try:
            whole = await asyncio.to_thread(json_limits.loads, body)
        except ValueError as exc:  # not JSON, or nested past the limit every frame has
            raise CortexError(f"the result artifact is not a CallToolResult: {exc}") from None
        problem = tool_result_problem(whole)
        if problem is not None:
            raise CortexError(f"the result artifact is not a CallToolResult: {problem}")
        return whole

    def start(
        self,
        node: str,
        tool: str,
        arguments: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        on_progress: ProgressFn | None = None,
    ) -> CallHandle:
        """Start a call without waiting; not a coroutine."""
        return CallHandle(
            asyncio.ensure_future(self.call(node, tool, arguments, timeout=timeout, on_progress=on_progress))
        )

    def plan(
        self, goal: str, *, node: str | None = None, max_steps: int | None = None
    ) -> AsyncIterator[PlanStep]:
        """Run the server's planner on `goal`, yielding its steps; leaving the loop early cancels the run."""
        return aplan(self.url, self._token, goal, node=node, max_steps=max_steps, verify=self._ssl or True)


class Client:
    """Blocking client: the same API as `AsyncClient`, run on a private loop thread."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, **kwargs: Any) -> None:
        self._async = AsyncClient(url, token, **kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="cortex-sdk", daemon=True)
        self._thread.start()
        try:
            self._run(self._async.connect())
        except BaseException:
            self._shutdown()
            raise

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        with contextlib.suppress(CortexError):
            self._run(self._async.aclose())
        self._shutdown()

    def _shutdown(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def nodes(self) -> list[dict[str, Any]]:
        return self._run(self._async.nodes())

    def tools(self, node: str) -> list[dict[str, Any]]:
        return self._run(self._async.tools(node))

    def audit(self, node: str, after: int = 0, limit: int = 100) -> dict[str, Any]:
        return self._run(self._async.audit(node, after, limit))

    def call(
        self,
        node: str,
        tool: str,
        arguments: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        on_progress: ProgressFn | None = None,
    ) -> CallResult:
        return self._run(self._async.call(node, tool, arguments, timeout=timeout, on_progress=on_progress))

    def plan(self, goal: str, *, node: str | None = None, max_steps: int | None = None) -> Iterator[PlanStep]:
        """Run the server's planner on `goal`, yielding its steps; leaving the loop early cancels the run."""
        a = self._async
        return plan(a.url, a._token, goal, node=node, max_steps=max_steps, verify=a._ssl or True)
