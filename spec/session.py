"""The method-agnostic JSON-RPC dispatcher every adapter runs on top of the sans-I/O `Peer`.

Layering: link adapter (`spec.link`: Starlette, `websockets`, in-memory) → `RpcSession` (this module) →
typed facades. The adapter calls `feed(text)` for each received frame and gives the session a
`send(text)` coroutine. Every protocol rule (ids, progress tokens, the incoming table and its
`max_incoming` limit, cancellation both ways, `_meta`) belongs to the `spec.peer.Peer` core and is
tested there without a loop; this module keeps only what needs asyncio — one future per request we
sent, one task per request we serve (so a handler may call back across the link without deadlock) —
and dispatches requests through jsonrpcserver with an explicit `methods=` table:

1. Outgoing `request(..., on_progress=f)` asks the core for a progress token; `IncomingProgress` for it
   goes to `f`, in arrival order.
2. Cancelling the task awaiting an outgoing request sends the core's `notifications/cancelled`
   (only when no answer came; a late answer is ignored).
3. `IncomingCancel` cancels that request's handler task; no response is sent for it.
4. `close(exc)` fails every pending request with `exc` and cancels every handler task.
5. The core's `max_incoming` answers (-32012, -32600) are sent as they come: the other side cannot grow
   our task table without bound.
6. A request that arrives while no other request of the other side is running may be handed back to
   the reader instead (`feed(..., hand_over=True)`), which serves it in its own task
   (`serve_here`, see `spec.link.pump`): a lone request then starts in the loop pass that read it,
   not one pass later, and its `CallContext.alone` is set. It is a handler like any other (rules 3
   and 4 reach it).

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
from spec.errors import CANCELLED, RpcError
from spec.messages import (
    IncomingCancel,
    IncomingNotification,
    IncomingProgress,
    IncomingRequest,
    IncomingResponse,
    JsonId,
    ProtocolViolation,
    Reply,
)
from spec.peer import Peer

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
    alone: bool = False
    """Served as a lone request (rule 6): no other request of the other side was running or waiting to
    be read when it came, so a handler has no company to wait for (the agent commits its audit record
    at once instead of with the loop pass's batch)."""

    @property
    def progress_token(self) -> str | int | None:
        token = self.meta.get("progressToken")
        return token if isinstance(token, str | int) and not isinstance(token, bool) else None

    async def progress(self, progress: float, total: float | None = None, message: str | None = None) -> None:
        """Send `notifications/progress` for this request, if the caller asked for progress."""
        await self.session.progress(self.request_id, progress, total, message)


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
        self._send = send
        self._methods = methods
        self._on_notification = on_notification
        self._peer = Peer(name, max_incoming=max_incoming)
        self._waiters: dict[JsonId, asyncio.Future[Any]] = {}
        self._progress: dict[JsonId, ProgressCallback] = {}  # by our request's id
        self._handlers: dict[JsonId, asyncio.Task[None]] = {}
        self._closed: BaseException | None = None
        # The loop the session runs on, looked up once (`_running_loop`): a session serves one link,
        # whose connection lives on one loop, and on Python 3.11 every `get_running_loop` is a getpid
        # system call (asyncio's fork check) on the path of every call.
        self._loop: asyncio.AbstractEventLoop | None = None

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

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
        id_, text = self._peer.request(method, params, progress=on_progress is not None)
        fut: asyncio.Future[Any] = self._running_loop().create_future()
        self._waiters[id_] = fut
        if on_progress is not None:
            self._progress[id_] = on_progress
        try:
            await self._send(text)
            return await fut
        except asyncio.CancelledError:
            # Our caller gave up (cancel or an enclosing asyncio.timeout): tell the other side, unless
            # the answer already came (the core knows: rule 7 of spec.peer).
            if self._closed is None:
                cancel = self._peer.cancel(id_, cancel_reason)
                if cancel is not None:
                    await self._send_cancel(id_, cancel)
            raise
        finally:
            self._waiters.pop(id_, None)
            self._peer.forget(id_)
            if on_progress is not None:
                self._progress.pop(id_, None)

    async def _send_cancel(self, id_: JsonId, text: str) -> None:
        try:
            await self._send(text)
        except Exception:  # the link may be gone; nothing else to tell the other side
            logger.debug("%s: could not send cancel for %s", self.name, id_)

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        if self._closed is not None:
            raise self._closed
        await self._send(self._peer.notify(method, params))

    async def progress(
        self, request_id: JsonId, progress: float, total: float | None = None, message: str | None = None
    ) -> None:
        """`notifications/progress` for the other side's request `request_id`, if it asked for progress."""
        if self._closed is not None:
            raise self._closed
        text = self._peer.progress(request_id, progress, total, message)
        if text is not None:
            await self._send(text)

    # -- incoming ---------------------------------------------------------------------------------
    async def feed(self, text: str | bytes, *, hand_over: bool = False) -> IncomingRequest | None:
        """Handle one received frame (never raises for bad input; answers it instead). With `hand_over`,
        a request that arrives while no other is running is returned, not started (rule 6)."""
        handed: IncomingRequest | None = None
        for event in self._peer.receive(text):
            if isinstance(event, IncomingResponse):
                fut = self._waiters.get(event.id)
                if fut is not None and not fut.done():
                    if event.error is not None:
                        fut.set_exception(event.error)
                    else:
                        fut.set_result(event.result)
            elif isinstance(event, IncomingRequest):
                if hand_over and handed is None and not self._handlers:
                    handed = event
                    continue
                # Unnamed: formatting a name for every request costs more than the debugging it helps.
                task = self._running_loop().create_task(self._serve(event))
                self._handlers[event.id] = task
                task.add_done_callback(functools.partial(self._handler_done, event.id))
            elif isinstance(event, IncomingProgress):
                callback = self._progress.get(event.request_id)
                if callback is not None:
                    outcome = callback(event.params)
                    if outcome is not None:
                        await outcome
            elif isinstance(event, IncomingCancel):
                handler = self._handlers.get(event.request_id)
                if handler is not None:
                    handler.cancel(event.reason)
            elif isinstance(event, IncomingNotification):
                if self._on_notification is not None:
                    outcome = self._on_notification(event.method, event.params or {})
                    if outcome is not None:
                        await outcome
            elif isinstance(event, Reply):
                await self._send(event.text)
            elif isinstance(event, ProtocolViolation):
                logger.debug("%s: %s", self.name, event.description)
        return handed

    async def serve_here(self, req: IncomingRequest) -> None:
        """Serve a request `feed` handed over, in the calling task, which becomes its handler (rule 6):
        a cancel of the request, or `close`, cancels that task."""
        task = asyncio.current_task()
        assert task is not None
        if self._closed is not None:
            self._peer.finish(req.id)
            return
        self._handlers[req.id] = task
        task.add_done_callback(functools.partial(self._handler_done, req.id))
        await self._serve(req, alone=True)

    def _handler_done(self, id_: JsonId, task: asyncio.Task[None]) -> None:
        if self._handlers.get(id_) is task:
            del self._handlers[id_]
            self._peer.finish(id_)

    async def _serve(self, req: IncomingRequest, alone: bool = False) -> None:
        ctx = CallContext(self, req.id, req.method, req.meta, alone)
        message = req.message  # without `_meta`: the core stripped it
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
        self._peer.close()
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(self._closed)
        for task in list(self._handlers.values()):
            task.cancel("link closed")
