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

Handlers are ``async def handler(ctx: CallContext, **params)``; whatever they return is the result, and
any exception crosses the wire through `spec.errors.error_object` only.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from jsonrpcserver import Error, Success
from jsonrpcserver.async_dispatcher import call as call_method
from jsonrpcserver.async_dispatcher import dispatch_request
from jsonrpcserver.dispatcher import create_request, to_response
from jsonrpcserver.response import to_serializable
from jsonrpcserver.result import SuccessResult

from spec.errors import CANCELLED, RpcError, error_object
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
Handler = Callable[..., Awaitable[Any]]


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
        await self.session.progress(self.request_id, progress, total, message)


def _adapt(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def wrapped(ctx: CallContext, *args: Any, **kwargs: Any) -> Any:
        try:
            return Success(await handler(ctx, *args, **kwargs))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the one exception-to-wire boundary
            err = error_object(exc)
            return Error(err["code"], err["message"], err.get("data"))

    # jsonrpcserver checks the params against `inspect.signature(method)` on every request; computed
    # once here, the check is a cheap `bind` instead of a fresh signature (and unwrap) per request.
    wrapped.__signature__ = inspect.signature(handler)  # type: ignore[attr-defined]
    return wrapped


@dataclass(frozen=True, slots=True)
class _ParamShape:
    """The keyword params a handler takes, read once from its signature (the context excluded)."""

    required: frozenset[str]
    allowed: frozenset[str] | None  # None: the handler takes **params

    @classmethod
    def of(cls, method: Handler) -> _ParamShape | None:
        try:
            params = list(inspect.signature(method).parameters.values())[1:]
        except (TypeError, ValueError):  # no readable signature: jsonrpcserver's full check decides
            return None
        if any(p.kind in (p.POSITIONAL_ONLY, p.VAR_POSITIONAL) for p in params):
            return None  # unusual shapes: leave them to jsonrpcserver's full check
        named = [p for p in params if p.kind is not p.VAR_KEYWORD]
        required = frozenset(p.name for p in named if p.default is p.empty)
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params)
        return cls(required, None if takes_any else frozenset(p.name for p in named))

    def fits(self, params: dict[str, Any]) -> bool:
        return self.required.issubset(params) and (self.allowed is None or self.allowed.issuperset(params))


def make_methods(handlers: dict[str, Handler]) -> dict[str, Handler]:
    """Turn plain ``async def h(ctx, **params) -> result`` handlers into a jsonrpcserver methods table."""
    return {name: _adapt(h) for name, h in handlers.items()}


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
        self._shapes = {name: _ParamShape.of(method) for name, method in methods.items()}
        self._on_notification = on_notification
        self._peer = Peer(name, max_incoming=max_incoming)
        self._waiters: dict[JsonId, asyncio.Future[Any]] = {}
        self._progress: dict[JsonId, ProgressCallback] = {}  # by our request's id
        self._handlers: dict[JsonId, asyncio.Task[None]] = {}
        self._closed: BaseException | None = None

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
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
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
                # Unnamed: formatting a name for every request costs more than the debugging it helps.
                task = asyncio.create_task(self._serve(event))
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

    def _handler_done(self, id_: JsonId, task: asyncio.Task[None]) -> None:
        if self._handlers.get(id_) is task:
            del self._handlers[id_]
            self._peer.finish(id_)

    async def _serve(self, req: IncomingRequest) -> None:
        ctx = CallContext(self, req.id, req.method, req.meta)
        message = req.message  # without `_meta`: the core stripped it
        try:
            # The peer core already parsed and checked the envelope, and a request is never a batch, so
            # go straight to jsonrpcserver's per-request dispatch (method lookup, params check against
            # the handler's signature, the call): its deserialize/jsonschema/gather layers would only
            # repeat that work and add a task per request.
            request = create_request(message)
            shape = self._shapes.get(req.method)
            if shape is not None and isinstance(request.params, dict) and shape.fits(request.params):
                # The params fit the handler (what jsonrpcserver's per-request `signature().bind` would
                # establish): call it through jsonrpcserver directly. Anything else takes the full path,
                # so every -32601/-32602 answer stays jsonrpcserver's own.
                result = await call_method(request, ctx, self._methods[req.method])
            else:
                _, result = await dispatch_request(self._methods, ctx, request)
            success = getattr(result, "_value", None)  # the Either's content: SuccessResult or ErrorResult
            if isinstance(success, SuccessResult):
                # A success needs only its value: skip jsonrpcserver's Response and dict round trip.
                response: Any = {"result": success.result}
            else:
                response = to_serializable(to_response(request, result))
        except asyncio.CancelledError:
            if self._closed is None:
                logger.debug("%s: request %s cancelled", self.name, req.id)
            return
        except Exception as exc:  # jsonrpcserver itself failed: still answer, never leave the caller hanging
            logger.exception("%s: dispatch of %s failed", self.name, req.method)
            response = {"error": error_object(exc)}
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
