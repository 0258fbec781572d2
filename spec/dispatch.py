"""Dispatch of one incoming request to its handler, through jsonrpcserver's public API only.

Layering: called by `spec.session.RpcSession` for each request the sans-I/O core (`spec.peer`) has
already parsed and checked; below it is jsonrpcserver, reached only through names it exports
(`dispatch_to_serializable`, `Success`). No sockets, no event-loop policy.

Rules:
1. Handlers are ``async def handler(ctx, **params)``; `make_methods` wraps each for the library (see
   the note below); whatever the handler returns is the result, and any exception it raises becomes an
   error object through `spec.errors.error_object` (the one exception-to-wire boundary).
   Cancellation is never turned into an answer.
2. Method lookup (-32601) and the params check against the handler's signature (-32602) are
   jsonrpcserver's own: the wrapper keeps the handler's signature visible (`functools.wraps` sets
   ``__wrapped__``, which `inspect.signature` follows), so nothing here re-implements that check.
3. `dispatch` returns ``{"result": ...}`` or ``{"error": {...}}``; it never raises for a handler's or
   the library's failure. A failure of jsonrpcserver itself (which it answers -32000 "Server error" with
   the exception's text as data — a code our protocol never uses) becomes -32603 with no detail on the
   wire; the log has it.
4. The library's acceptance of a params shape is remembered per table (`MethodTable`): a request of
   an accepted shape skips the library's ~20 µs of per-request machinery (its Either chain and
   `Signature.bind`), which was the largest single cost of a call on both ends of a link. It is a memo
   of the library's verdict, not a second check: see `MethodTable`.

What the library cannot do, precisely: jsonrpcserver 5 has no public entry point for one request that
is already a dict, and its public *async* dispatchers run every request of a (possible) batch under
`asyncio.gather` (a task per request: it doubled the server's CPU per call in bench/roundtrip.py). So
a parsed request goes through the public *sync* `dispatch_to_serializable`: the public
``deserializer=`` hook hands it the dict, ``validator=`` skips the library's JSON Schema check of the
envelope (the peer core did it), the library looks the method up and binds the params to the
handler's signature, and the method it calls returns ``Success(<the handler's coroutine>)`` — a
result is opaque to the library — which `dispatch` then awaits itself. The library's check is the
only one. The library calls `inspect.signature(method)` per request and has no way to take a
signature computed once; each wrapper therefore declares its handler's signature through inspect's own
protocol (PEP 362: a function's ``__signature__`` is what `inspect.signature` returns). That is an
attribute of our function, read by the standard library, not a reach into jsonrpcserver; it saves
about 30 µs of CPU per call on both ends of a link (bench/roundtrip.py, 10 simulated nodes: ~125 µs of
server CPU per call with it, ~150-200 without, on one busy 2-core machine).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from jsonrpcserver import Success, dispatch_to_serializable

from spec.errors import INTERNAL_ERROR, error_object

__all__ = ["MAX_VERDICTS", "Handler", "MethodTable", "dispatch", "make_methods"]

logger = logging.getLogger(__name__)

Handler = Callable[..., Awaitable[Any]]

_LIBRARY_FAILURE = -32000  # jsonrpcserver's "Server error": its own code for its own failures


async def _answer(handler: Handler, ctx: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return await handler(ctx, *args, **kwargs)


def _adapt(handler: Handler) -> Callable[..., Any]:
    @functools.wraps(handler)  # rule 2: `inspect.signature(wrapped)` is the handler's own
    def wrapped(ctx: Any, *args: Any, **kwargs: Any) -> Any:
        # Called by the library only once the params fit; the coroutine is awaited by `dispatch`.
        return Success(_answer(handler, ctx, args, kwargs))

    # The handler's signature, computed once and declared through inspect's own protocol (PEP 362:
    # `inspect.signature` returns a function's ``__signature__`` first). This is our function's
    # attribute, not the library's: jsonrpcserver still does the check, through `inspect.signature`.
    wrapped.__signature__ = inspect.signature(handler)  # type: ignore[attr-defined]
    return wrapped


class MethodTable(dict[str, Handler]):
    """A jsonrpcserver methods table (name → wrapped handler) that remembers the library's verdicts.

    Rule 4: jsonrpcserver's params check (`inspect.Signature.bind`) depends only on the method and the
    params' shape — the names of an object's members, the length of an array — never on their values.
    Once the library has accepted a shape for a method, the same shape is accepted again, so a request
    of a remembered shape goes straight to its handler. Only the library's own acceptances are
    remembered, at most `MAX_VERDICTS` shapes per table (a caller cycling through shapes only keeps
    going through the library); refusals are never remembered, so every error answer is the library's.
    """

    def __init__(self, handlers: Mapping[str, Handler]) -> None:
        super().__init__({str(name): _adapt(h) for name, h in handlers.items()})
        self.handlers: dict[str, Handler] = {str(name): h for name, h in handlers.items()}
        self.accepted: set[tuple[str, Any]] = set()


MAX_VERDICTS = 64


def make_methods(handlers: Mapping[str, Handler]) -> MethodTable:
    """Turn plain ``async def h(ctx, **params) -> result`` handlers into a jsonrpcserver methods table."""
    return MethodTable(handlers)


def _shape(message: dict[str, Any]) -> tuple[str, Any] | None:
    """(method, what `Signature.bind` sees of the params) for rule 4, or None for a shape not kept."""
    method, params = message.get("method"), message.get("params")
    if not isinstance(method, str):
        return None
    if params is None:
        return method, None
    if isinstance(params, dict):
        return method, tuple(params)
    if isinstance(params, list):
        return method, len(params)
    return None


def _checked_already(request: Any) -> Any:
    """`validator=`: the peer core checked the envelope (spec.peer rules 1-3); nothing to repeat."""
    return request


async def _run(pending: Awaitable[Any]) -> dict[str, Any]:
    try:
        return {"result": await pending}
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # rule 1: the one exception-to-wire boundary
        return {"error": error_object(exc)}


async def dispatch(methods: dict[str, Handler], context: Any, message: dict[str, Any]) -> dict[str, Any]:
    """Run one request (a dict the peer core produced) against `methods`; see rules 3 and 4."""
    table = methods if isinstance(methods, MethodTable) else None
    shape = _shape(message) if table is not None else None
    if table is not None and shape is not None and shape in table.accepted:
        params = message.get("params")
        handler = table.handlers[shape[0]]
        if isinstance(params, dict):
            return await _run(handler(context, **params))
        return await _run(handler(context, *(params or ())))
    try:
        response = dispatch_to_serializable(
            "",  # unused: the deserializer hands over the parsed request (module note)
            methods,
            context=context,
            deserializer=lambda _text: message,
            validator=_checked_already,
        )
    except Exception as exc:  # the library itself failed: still an answer, never a hanging caller
        logger.exception("dispatch of %s failed", message.get("method"))
        return {"error": error_object(exc)}
    if not isinstance(response, dict):  # a request always has an answer; anything else is a library bug
        logger.error("jsonrpcserver gave no answer to %s", message.get("method"))
        return {"error": error_object(RuntimeError("no answer"))}
    error = response.get("error")
    if isinstance(error, dict):
        if error.get("code") == _LIBRARY_FAILURE:
            logger.error("jsonrpcserver failed on %s: %s", message.get("method"), error.get("data"))
            return {"error": {"code": INTERNAL_ERROR, "message": "internal error"}}
        return {"error": error}
    pending = response.get("result")
    if not inspect.iscoroutine(pending):  # a table not built by `make_methods`
        return {"result": pending}
    if table is not None and shape is not None and len(table.accepted) < MAX_VERDICTS:
        table.accepted.add(shape)  # rule 4: the library accepted this shape
    return await _run(pending)
