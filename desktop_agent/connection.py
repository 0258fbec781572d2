"""The agent core: keep one tunnel to the server alive and serve the node's side of the protocol.

Layering: `websockets` client (transport) → `spec.link.WebsocketsLink` (or the in-memory link of the
in-process tests, through `NodeAgent.serve_link`) → `spec.session.RpcSession` (dispatcher) → `NodeAgent` (this
module: reconnect loop, token minting and renewal, state for the tray) → `ToolEngine` (tools, policy,
audit). `cortex-agent run` and `cortex-agent tray` both drive exactly this class.

Rules:
1. Every connection attempt mints a fresh access token at `/oauth/token` (client credentials); a
   connected node renews in-band with `auth/refresh` at two thirds of the token's lifetime.
2. Reconnect forever with full-jitter exponential backoff (base 0.5 s, cap 30 s); the attempt counter
   resets once a connection has stayed up 30 s.
3. A refused credential (401 at `/oauth/token`) is AUTH_FAILED: retried only at the cap interval, never
   in a storm.
4. When the link drops, the calls it was running are cancelled (process groups killed) and audited as
   ``cancelled``: nobody is left to receive their results.
5. A connection closed with 4409 (another connection of this node replaced it: a second agent with the
   same credential) waits the cap interval before the next attempt, so two agents do not flap.
6. The calls waiting for the owner's approval are told to the server (`notifications/approvals`, the
   whole list with a rising `seq`) whenever that list changes, so it can *show* them; it cannot answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx2
import websockets
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from desktop_agent.engine import ToolEngine
from desktop_agent.tools.basic import system_facts
from desktop_agent.uploads import ResultSender
from desktop_agent.version import AGENT_VERSION
from spec.coalesce import CoalescingClientConnection
from spec.errors import RpcError
from spec.frames import client_link, client_subprotocols
from spec.link import Link, WebsocketsLink, pump
from spec.params import (
    AuditReadParams,
    AuthRefreshParams,
    InitializeParams,
    InitializeResult,
    checked_name,
)
from spec.protocol import (
    AUDIT_DEFAULT_LIMIT,
    PROTOCOL_VERSION,
    TUNNEL_PATH,
    MetaKey,
    Method,
)
from spec.session import CallContext, RpcSession, make_methods
from spec.urls import ws_url

__all__ = ["AgentState", "AgentStatus", "AuthFailed", "Backoff", "ConnectSettings", "NodeAgent", "Replaced"]

logger = logging.getLogger(__name__)


class AgentState(StrEnum):
    NO_CREDENTIALS = "no_credentials"
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    BACKOFF = "backoff"
    CONNECTED = "connected"
    AUTH_FAILED = "auth_failed"


@dataclass(frozen=True)
class AgentStatus:
    state: AgentState
    server: str
    detail: str = ""
    next_retry_at: float | None = None  # time.time() of the next attempt while in BACKOFF


@dataclass(frozen=True)
class Backoff:
    base: float = 0.5
    cap: float = 30.0
    reset_after: float = 30.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
        return rng.uniform(0, min(self.cap, self.base * (2 ** min(attempt, 32))))


@dataclass(frozen=True)
class ConnectSettings:
    server: str
    name: str
    credential: str
    ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    max_frame_bytes: int = 16 * 1024 * 1024
    backoff: Backoff = Backoff()
    open_timeout: float = 10.0

    def __repr__(self) -> str:
        return f"ConnectSettings(server={self.server!r}, name={self.name!r}, credential=***)"

    @property
    def ws_url(self) -> str:
        return ws_url(self.server, TUNNEL_PATH)

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.server.startswith(("https://", "wss://")):
            return None
        ctx = ssl.create_default_context(cafile=str(self.ca) if self.ca else None)
        if self.client_cert:
            ctx.load_cert_chain(str(self.client_cert), str(self.client_key) if self.client_key else None)
        return ctx


class AuthFailed(Exception):
    """The server refused our credential."""


class Replaced(Exception):
    """The server closed this link with 4409: another connection of the same node took its place."""


REPLACED_CLOSE_CODE = 4409


def token_workspace(token: str) -> str | None:
    """The `ws` claim of an access token, for display only (the server verifies tokens; we never do)."""
    import base64
    import json

    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, RecursionError):
        return None
    ws = claims.get("ws") if isinstance(claims, dict) else None
    return ws if isinstance(ws, str) else None


class NodeAgent:
    """One node's connection to its server; thread-safe commands go through `submit`."""

    def __init__(self, settings: ConnectSettings, engine: ToolEngine, *, seed: int | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self._rng = random.Random(seed)
        self._ssl_ready = False
        self._ssl_ctx: ssl.SSLContext | None = None
        self._status = AgentStatus(AgentState.DISCONNECTED, settings.server)
        self._listeners: list[Callable[[AgentStatus], None]] = []
        self._wanted = asyncio.Event()
        self._wanted.set()
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._ws: Link | None = None
        self._rpc: RpcSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: set[asyncio.Future[Any]] = set()
        self._sender = ResultSender(settings.max_frame_bytes)
        # Frames of several messages when the server speaks them and our limit takes them (spec.frames).
        self._subprotocols = [Subprotocol(name) for name in client_subprotocols(settings.max_frame_bytes)]
        self.workspace: str | None = None  # from the last access token, for "connected" messages
        engine.on_tools_changed(self._tools_changed)
        engine.approvals.node_name = settings.name
        engine.approvals.on_change(self._approvals_changed)
        self._approvals_seq = 0

    # -- state for the tray ------------------------------------------------------------------------
    @property
    def status(self) -> AgentStatus:
        return self._status

    def add_listener(self, listener: Callable[[AgentStatus], None]) -> None:
        self._listeners.append(listener)
        listener(self._status)

    def _set(self, state: AgentState, detail: str = "", next_retry_at: float | None = None) -> None:
        self._status = AgentStatus(state, self.settings.server, detail, next_retry_at)
        for listener in self._listeners:
            try:
                listener(self._status)
            except Exception:
                logger.exception("status listener failed")

    # -- commands ------------------------------------------------------------------------------------
    def connect(self) -> None:
        self._wanted.set()
        self._wake.set()

    def disconnect(self) -> None:
        self._wanted.clear()
        self._wake.set()
        if self._ws is not None:
            self._background(self._ws.close(1000, "disconnected by the user"))

    def stop(self) -> None:
        self._stop.set()
        self.disconnect()

    def submit(self, command: Callable[[], None]) -> None:
        """Run a command from another thread (the tray's) on the agent's loop."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(command)

    @property
    def wanted(self) -> bool:
        return self._wanted.is_set()

    # -- the loop ------------------------------------------------------------------------------------
    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        attempt = 0
        while not self._stop.is_set():
            if not self._wanted.is_set():
                self._set(AgentState.DISCONNECTED, "disconnected")
                await self._wait_wake()
                continue
            self._set(AgentState.CONNECTING, f"connecting to {self.settings.server}")
            started = time.monotonic()
            try:
                try:
                    await self._connect_once()
                except websockets.ConnectionClosed as closed:
                    if closed.rcvd is None or closed.rcvd.code != REPLACED_CLOSE_CODE:
                        raise
                    self._raise_replaced()
                reason = "connection closed"
            except AuthFailed as exc:
                self._set(AgentState.AUTH_FAILED, str(exc), time.time() + self.settings.backoff.cap)
                await self._wait_wake(self.settings.backoff.cap)
                continue
            except Replaced as exc:
                self._set(AgentState.BACKOFF, str(exc), time.time() + self.settings.backoff.cap)
                await self._wait_wake(self.settings.backoff.cap)
                continue
            except (OSError, TimeoutError, websockets.WebSocketException, httpx2.HTTPError, RpcError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            if self._stop.is_set():
                break
            if time.monotonic() - started >= self.settings.backoff.reset_after:
                attempt = 0
            if not self._wanted.is_set():
                continue
            delay = self.settings.backoff.delay(attempt, self._rng)
            attempt += 1
            logger.info("reconnecting in %.2f s (%s)", delay, reason)
            self._set(AgentState.BACKOFF, reason, time.time() + delay)
            await self._wait_wake(delay)
        self._set(AgentState.DISCONNECTED, "stopped")

    async def _wait_wake(self, timeout: float | None = None) -> None:
        if self._stop.is_set():  # a listener may have stopped us while we set the state
            return
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()

    def _ssl(self) -> ssl.SSLContext | None:
        """The TLS context, built on first use: the CA and client certificate are read once."""
        if not self._ssl_ready:
            self._ssl_ctx = self.settings.ssl_context()
            self._ssl_ready = True
        return self._ssl_ctx

    async def mint_token(self) -> tuple[str, int]:
        url = self.settings.server.rstrip("/") + "/oauth/token"
        verify: Any = self._ssl() or True
        async with httpx2.AsyncClient(verify=verify, timeout=self.settings.open_timeout) as http:
            response = await http.post(
                url,
                data={
                    "grant_type": "client_credentials",
                    "client_id": self.settings.name,
                    "client_secret": self.settings.credential,
                },
            )
        if response.status_code in (400, 401, 403):
            raise AuthFailed(f"the server refused the node credential ({response.status_code})")
        response.raise_for_status()
        body = response.json()
        return str(body["access_token"]), int(body["expires_in"])

    async def _connect_once(self) -> None:
        token, expires_in = await self.mint_token()
        self.workspace = token_workspace(token)
        async with connect(
            self.settings.ws_url,
            additional_headers={"Authorization": f"Bearer {token}"},
            subprotocols=self._subprotocols,
            compression=None,
            create_connection=CoalescingClientConnection,
            max_size=self.settings.max_frame_bytes,
            ssl=self._ssl(),
            open_timeout=self.settings.open_timeout,
            ping_interval=20,
            ping_timeout=20,
        ) as ws:
            link = client_link(
                WebsocketsLink(ws, websockets.ConnectionClosedOK),
                ws.subprotocol,
                name=f"frames:agent:{self.settings.name}",
            )
            await self.serve_link(link, expires_in)
        if ws.close_code == REPLACED_CLOSE_CODE:
            self._raise_replaced()

    async def serve_link(self, link: Link, expires_in: int) -> None:
        """Serve the node's side of the protocol on one open link until it closes (the token behind
        it is renewed at two thirds of `expires_in`). The reconnect loop runs this on a `websockets`
        link; the in-process tests on an in-memory one."""
        self._ws = link
        rpc = RpcSession(link.send, make_methods(self._methods()), name=f"agent:{self.settings.name}")
        self._rpc = rpc
        refresher = asyncio.create_task(self._refresh_loop(rpc, expires_in))
        self._set(AgentState.CONNECTED, f"connected to {self.settings.server}")
        await self.engine.record("node.connected", server=self.settings.server)
        try:
            await pump(link, rpc)
        finally:
            refresher.cancel()
            rpc.close()
            self._rpc = None
            self._ws = None
            with contextlib.suppress(Exception):
                await self.engine.record(
                    "node.disconnected", server=self.settings.server, code=link.close_code
                )
            logger.info("tunnel closed (code %s %s)", link.close_code, link.close_reason)

    def _raise_replaced(self) -> None:
        if not self._stop.is_set():
            raise Replaced(
                f"replaced by another connection of node {self.settings.name} (another agent with the same "
                "credential?)"
            )

    async def _refresh_loop(self, rpc: RpcSession, expires_in: int) -> None:
        while True:
            await asyncio.sleep(max(1.0, expires_in * 2 / 3))
            try:
                token, expires_in = await self.mint_token()
                await rpc.request(Method.AUTH_REFRESH, AuthRefreshParams(token).to_json())
                logger.debug("access token renewed")
            except (AuthFailed, httpx2.HTTPError, RpcError, OSError) as exc:
                logger.warning("token renewal failed: %s", exc)
                expires_in = 15

    def _tools_changed(self) -> None:
        rpc = self._rpc
        if rpc is not None and not rpc.closed:
            self._background(rpc.notify(Method.TOOLS_LIST_CHANGED))

    def _approvals_changed(self, waiting: list[Any]) -> None:
        """Rule 6 (on the loop): tell the server what waits; it only shows it."""
        rpc = self._rpc
        if rpc is not None and not rpc.closed:
            self._approvals_seq += 1
            params = {"seq": self._approvals_seq, "approvals": [p.to_json() for p in waiting]}
            self._background(rpc.notify(Method.APPROVALS, params))

    def _background(self, coro: Any) -> None:
        # Keep a reference until done: the loop holds tasks only weakly.
        task = asyncio.ensure_future(coro)
        self._pending.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Future[Any]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:  # e.g. a notification after the link went
            logger.debug("background send failed: %r", task.exception())

    # -- what the server may ask of us ------------------------------------------------------------------
    def _methods(self) -> dict[str, Any]:
        return {
            Method.INITIALIZE: self._initialize,
            Method.PING: self._ping,
            Method.TOOLS_LIST: self._tools_list,
            Method.TOOLS_CALL: self._tools_call,
            Method.AUDIT_READ: self._audit_read,
        }

    async def _initialize(self, ctx: CallContext, **params: Any) -> dict[str, Any]:
        # The server's frame limit: no frame we send may be larger (results over it are uploaded).
        told = InitializeParams.from_json(params).max_frame_bytes
        if told is not None and told >= 64 * 1024:
            self._sender = ResultSender(told)
        facts = system_facts()
        return InitializeResult(
            server_name="cortex-agent",
            server_version=AGENT_VERSION,
            node={
                "hostname": facts["hostname"],
                "os": facts["os_release"] or facts["os"],
                "arch": facts["arch"],
                "agent_version": AGENT_VERSION,
            },
            audit_head=self.engine.audit_head(),
            protocol_version=PROTOCOL_VERSION,
            capabilities={"tools": {"listChanged": True}, "logging": {}},
            # The largest frame we take: the server sends none bigger (it refuses such a call instead).
            max_frame_bytes=self.settings.max_frame_bytes,
        ).to_json()

    async def _ping(self, ctx: CallContext) -> dict[str, Any]:
        return {}

    async def _tools_list(self, ctx: CallContext, cursor: str | None = None) -> dict[str, Any]:
        return {"tools": self.engine.list_tools()}

    async def _tools_call(self, ctx: CallContext, name: str, arguments: dict[str, Any] | None = None) -> Any:
        checked_name(name, "name")  # a list or an object would fail the tool table's lookup (-32603)
        caller = ctx.meta.get(MetaKey.CALLER)
        if not isinstance(caller, dict):  # recorded as no caller, as when it is missing
            caller = {}

        async def progress(value: float, total: float | None, message: str | None) -> None:
            await ctx.progress(value, total, message)

        result = await self.engine.call(
            name,
            arguments or {},
            request_id=ctx.request_id,
            caller={"sub": caller.get("sub"), "ws": caller.get("ws")},
            progress=progress if ctx.progress_token is not None else None,
            durable_finish=False,  # one fsync per call: tool.finished rides the next group commit
            alone=ctx.alone,  # calls read together commit their audit records together
        )
        return await self._sender.deliver(ctx.session, result)

    async def _audit_read(
        self, ctx: CallContext, after_seq: int = 0, limit: int = AUDIT_DEFAULT_LIMIT
    ) -> Any:
        page = AuditReadParams.from_args(after_seq, limit)  # a bad number is invalid params, not internal
        result = await self.engine.audit_read(page.after_seq, page.limit)
        return self._sender.fit_records(result)
