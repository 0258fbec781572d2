"""The method-agnostic JSON-RPC dispatcher every adapter runs on top of the sans-I/O `Peer`.

Layering: transport adapter (Starlette or `websockets`) → `RpcSession` (this module) → typed facades.
The adapter calls `feed(text)` for each received frame and gives the session a `send(text)` coroutine;
the session correlates responses by id, runs each incoming request in its own task (so a handler may
call back across the link without deadlock), dispatches requests through jsonrpcserver with an explicit
`methods=` table, and wires progress and cancellation:

1. Outgoing `request(..., on_progress=f)` puts a fresh `_meta.progressToken` into the params and routes
   matching `notifications/progress` to `f`, in arrival order.
2. Cancelling the task awaiting an outgoing request sends `notifications/cancelled {requestId, reason}`
   and forgets the id (a late answer is ignored).
3. An incoming `notifications/cancelled` cancels that request's handler task; no response is sent for it
   (MCP: the receiver of a cancel does not answer the cancelled request).
4. `close(exc)` fails every pending request with `exc` and cancels every handler task.
5. With `max_incoming`, a request arriving while that many handlers of the other side's requests run
   is answered -32012 (overloaded) at once, and one reusing an id still in flight -32600: the other
   side cannot grow our task table without bound.

Handlers are ``async def handler(ctx: CallContext, **params)``; whatever they return is the result, and
any exception crosses the wire through `spec.errors.error_object` only.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from spec.dispatch import Handler, dispatch, make_methods
from spec.errors import CANCELLED, INVALID_REQUEST, OVERLOADED, RpcError
from spec.messages import (
    IncomingNotification,
    IncomingRequest,
    IncomingResponse,
    JsonId,
    ProtocolViolation,
    Reply,
)
from spec.peer import Peer
from spec.protocol import Method

__all__ = ["CallContext", "Handler", "ProgressCallback", "RpcSession", "make_methods"]

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[dict[str, Any]], Awaitable[None] | None]
NotificationHandler = Callable[[str, dict[str, Any]], Awaitable[None] | None]


@dataclass
class CallContext:
    """What a handler knows about the request it serves (passed as its first argument)."""

    session: RpcSession
    request_id: JsonId
    method: str
    meta: dict[str, Any]

    @property
    def progress_token(self) -> str | int | None:
        token = self.meta.get("progressToken")
        return token if isinstance(token, str | int) and not isinstance(token, bool) else None

    async def progress(self, progress: float, total: float | None = None, message: str | None = None) -> None:
        """Send `notifications/progress` for this request, if the caller asked for progress."""
        token = self.progress_token
        if token is None:
            return
        params: dict[str, Any] = {"progressToken": token, "progress": progress}
        if total is not None:
            params["total"] = total
        if message is not None:
            params["message"] = message
        await self.session.notify(Method.PROGRESS, params)


class RpcSession:
    """Bidirectional JSON-RPC over one link; see the module's rules."""

    def __init__(
        self,
        send: Callable[[str], Awaitable[None]],
        methods: dict[str, Handler],
        *,
        on_notification: NotificationHandler | None = None,
        name: str = "link",
        max_incoming: int | None = None,
    ) -> None:
        self.name = name
        self._max_incoming = max_incoming
        self._send = send
        self._methods = methods
        self._on_notification = on_notification
        self._peer = Peer()
        self._waiters: dict[JsonId, asyncio.Future[Any]] = {}
        self._progress: dict[str | int, ProgressCallback] = {}
        self._handlers: dict[JsonId, asyncio.Task[None]] = {}
        self._closed: BaseException | None = None
        self._progress_seq = 0

    @property
    def closed(self) -> bool:
        return self._closed is not None

    @property
    def in_flight(self) -> int:
        """Requests we sent that await an answer."""
        return len(self._waiters)

    # -- outgoing ---------------------------------------------------------------------------------
    async def request(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        on_progress: ProgressCallback | None = None,
        cancel_reason: str = "cancelled by the caller",
    ) -> Any:
        """Send a request and wait for its result; raises `RpcError` for an error answer."""
        if self._closed is not None:
            raise self._closed
        token: str | None = None
        if on_progress is not None:
            self._progress_seq += 1
            token = f"{self.name}-p{self._progress_seq}"
            params = dict(params or {})
            params["_meta"] = {**params.get("_meta", {}), "progressToken": token}
            self._progress[token] = on_progress
        id_, text = self._peer.request(method, params)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters[id_] = fut
        try:
            await self._send(text)
            return await fut
        except asyncio.CancelledError:
            # Our caller gave up (cancel or an enclosing asyncio.timeout): tell the other side.
            # (awaiting `fut` from a cancelled task cancels `fut` too: cancelled means no answer came)
            if (fut.cancelled() or not fut.done()) and self._closed is None:
                await self._send_cancel(id_, cancel_reason)
            raise
        finally:
            self._waiters.pop(id_, None)
            self._peer.forget(id_)
            if token is not None:
                self._progress.pop(token, None)

    async def _send_cancel(self, id_: JsonId, reason: str) -> None:
        try:
            await self._send(self._peer.notify(Method.CANCELLED, {"requestId": id_, "reason": reason}))
        except Exception:  # the link may be gone; nothing else to tell the other side
            logger.debug("%s: could not send cancel for %s", self.name, id_)

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        if self._closed is not None:
            raise self._closed
        await self._send(self._peer.notify(method, params))

    # -- incoming ---------------------------------------------------------------------------------
    async def feed(self, text: str | bytes) -> None:
        """Handle one received frame (never raises for bad input; answers it instead)."""
        for event in self._peer.receive(text):
            if isinstance(event, IncomingResponse):
                fut = self._waiters.get(event.id)
                if fut is not None and not fut.done():
                    if event.error is not None:
                        fut.set_exception(event.error)
                    else:
                        fut.set_result(event.result)
            elif isinstance(event, IncomingRequest):
                if self._max_incoming is not None and event.id in self._handlers:
                    # An id still in flight: a second handler would be untracked (and uncancellable).
                    await self._send(
                        self._peer.respond_error(
                            event.id, {"code": INVALID_REQUEST, "message": "id already in flight"}
                        )
                    )
                    continue
                if self._max_incoming is not None and len(self._handlers) >= self._max_incoming:
                    # The other side has too many requests running here already: refuse, do not queue.
                    await self._send(
                        self._peer.respond_error(
                            event.id, {"code": OVERLOADED, "message": "too many requests in flight"}
                        )
                    )
                    continue
                # Unnamed: formatting a name for every request costs more than the debugging it helps.
                task = asyncio.create_task(self._serve(event))
                self._handlers[event.id] = task
                task.add_done_callback(functools.partial(self._handler_done, event.id))
            elif isinstance(event, IncomingNotification):
                await self._notification(event)
            elif isinstance(event, Reply):
                await self._send(event.text)
            elif isinstance(event, ProtocolViolation):
                logger.debug("%s: %s", self.name, event.description)

    def _handler_done(self, id_: JsonId, _task: asyncio.Task[None]) -> None:
        self._handlers.pop(id_, None)

    async def _notification(self, event: IncomingNotification) -> None:
        params = event.params or {}
        if event.method == Method.CANCELLED:
            task = self._handlers.get(params.get("requestId"))  # type: ignore[arg-type]
            if task is not None:
                task.cancel(str(params.get("reason", "cancelled")))
            return
        if event.method == Method.PROGRESS:
            callback = self._progress.get(params.get("progressToken"))  # type: ignore[arg-type]
            if callback is not None:
                outcome = callback(params)
                if outcome is not None:
                    await outcome
            return
        if self._on_notification is not None:
            outcome = self._on_notification(event.method, params)
            if outcome is not None:
                await outcome

    async def _serve(self, req: IncomingRequest) -> None:
        params = req.params if isinstance(req.params, dict) else {}
        meta = params.get("_meta") if isinstance(params.get("_meta"), dict) else {}
        ctx = CallContext(self, req.id, req.method, meta or {})
        message = req.message
        if isinstance(req.params, dict) and "_meta" in req.params:
            message = {**message, "params": {k: v for k, v in req.params.items() if k != "_meta"}}
        try:
            # Method lookup, params check and the call: jsonrpcserver's, via its public API (spec.dispatch).
            response = await dispatch(self._methods, ctx, message)
        except asyncio.CancelledError:
            if self._closed is None:
                logger.debug("%s: request %s cancelled", self.name, req.id)
            return
        if self._closed is not None:
            return
        try:
            await self._send(
                self._peer.respond_error(req.id, response["error"])
                if "error" in response
                else self._peer.respond(req.id, response["result"])
            )
        except Exception:
            logger.debug("%s: could not send the answer to %s", self.name, req.id)

    # -- lifetime ---------------------------------------------------------------------------------
    def close(self, exc: BaseException | None = None) -> None:
        """The link is gone: fail every waiter with `exc` and cancel every handler."""
        if self._closed is not None:
            return
        self._closed = exc or RpcError(CANCELLED, "link closed")
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(self._closed)
        for task in list(self._handlers.values()):
            task.cancel("link closed")
