"""Tier (a), unit: two sans-I/O peer cores wired text-to-text, no event loop and no sockets.

Every rule of `spec.peer` is driven from both sides of the link (`caller`/`callee` swap roles through
the parametrised `link` fixture): ids, progress tokens, cancellation both ways, `_meta` stripping and
the per-link `max_incoming` limit. Nothing here imports asyncio.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from spec import errors
from spec.messages import (
    IncomingCancel,
    IncomingNotification,
    IncomingProgress,
    IncomingRequest,
    IncomingResponse,
    ProtocolViolation,
    Reply,
)
from spec.peer import Peer

pytestmark = pytest.mark.unit


@pytest.fixture(params=["a-calls-b", "b-calls-a"])
def link(request: pytest.FixtureRequest) -> tuple[Peer, Peer]:
    a, b = Peer("a"), Peer("b", max_incoming=None)
    return (a, b) if request.param == "a-calls-b" else (b, a)


def only(events: list[Any]) -> Any:
    assert len(events) == 1
    return events[0]


def test_a_request_and_its_answer_cross_with_counting_ids(link: tuple[Peer, Peer]) -> None:
    caller, callee = link
    first, text = caller.request("hello", {"who": "x"})
    second, _ = caller.request("hello")
    assert (first, second) == (1, 2)
    incoming = only(callee.receive(text))
    assert isinstance(incoming, IncomingRequest)
    assert (incoming.id, incoming.method, incoming.params, incoming.meta) == (1, "hello", {"who": "x"}, {})
    assert callee.in_flight == 1
    answer = only(caller.receive(callee.respond(incoming.id, "hi")))
    assert isinstance(answer, IncomingResponse)
    assert (answer.id, answer.method, answer.result) == (1, "hello", "hi")
    assert callee.in_flight == 0
    assert caller.pending == 1  # the second one still waits
    # The same answer again is rule 4: a violation, not an exception.
    assert isinstance(only(caller.receive(callee.respond(1, "hi"))), ProtocolViolation)


def test_error_answers_keep_their_codes(link: tuple[Peer, Peer]) -> None:
    caller, callee = link
    id_, text = caller.request("refuse")
    callee.receive(text)
    error = {"code": errors.NODE_NOT_FOUND, "message": "no such node", "data": {"x": 1}}
    answer = only(caller.receive(callee.respond_error(id_, error)))
    assert isinstance(answer.error, errors.RpcError)
    assert (answer.error.code, answer.error.data) == (errors.NODE_NOT_FOUND, {"x": 1})
    assert callee.in_flight == 0


def test_progress_reaches_the_request_that_asked_for_it(link: tuple[Peer, Peer]) -> None:
    caller, callee = link
    plain_id, plain = caller.request("slow", {"n": 1})
    id_, text = caller.request("slow", {"n": 2, "_meta": {"cortex/caller": {"sub": "u"}}}, progress=True)
    quiet = only(callee.receive(plain))
    loud = only(callee.receive(text))
    # `_meta` is stripped from the params (and from the message jsonrpcserver sees) and handed over.
    assert loud.params == {"n": 2}
    assert "_meta" not in loud.message["params"]
    assert loud.meta["cortex/caller"] == {"sub": "u"}
    token = loud.meta["progressToken"]
    assert isinstance(token, str) and token.startswith(caller.name)
    # Only the request that asked gets progress notifications.
    assert callee.progress(quiet.id, 1) is None
    steps = [callee.progress(loud.id, i, 3, f"step {i}") for i in range(3)]
    events = [only(caller.receive(step)) for step in steps if step is not None]
    assert [type(e) for e in events] == [IncomingProgress] * 3
    assert [(e.request_id, e.params["progress"], e.params["message"]) for e in events] == [
        (id_, 0, "step 0"),
        (id_, 1, "step 1"),
        (id_, 2, "step 2"),
    ]
    assert plain_id != id_
    # Once answered, its token is dead on both sides.
    late = callee.progress(loud.id, 4)
    caller.receive(callee.respond(loud.id, "done"))
    assert callee.progress(loud.id, 5) is None
    assert late is not None
    assert isinstance(only(caller.receive(late)), ProtocolViolation)


def test_progress_for_an_unknown_or_malformed_token_is_a_violation(link: tuple[Peer, Peer]) -> None:
    caller, _ = link
    caller.request("slow", progress=True)
    for token in ("nobody-p1", ["a"], {"x": 1}, None, True):
        frame = json.dumps(
            {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": token}}
        )
        assert isinstance(only(caller.receive(frame)), ProtocolViolation)


def test_cancel_is_sent_once_and_reaches_the_handler(link: tuple[Peer, Peer]) -> None:
    caller, callee = link
    id_, text = caller.request("slow", progress=True)
    incoming = only(callee.receive(text))
    cancel = caller.cancel(id_, "user pressed stop")
    assert cancel is not None
    assert caller.pending == 0
    assert caller.cancel(id_) is None  # forgotten: no second cancel
    event = only(callee.receive(cancel))
    assert isinstance(event, IncomingCancel)
    assert (event.request_id, event.reason) == (incoming.id, "user pressed stop")
    # The handler stops without answering; the request leaves the incoming table.
    callee.finish(incoming.id)
    assert callee.in_flight == 0
    # A cancel for a request no longer in flight here is a violation (nothing to stop).
    assert isinstance(only(callee.receive(cancel)), ProtocolViolation)
    # An answer sent anyway (the handler won the race) is ignored by the caller, as is late progress.
    assert isinstance(only(caller.receive(callee.respond(incoming.id, "late"))), ProtocolViolation)


def test_no_cancel_after_the_answer_came(link: tuple[Peer, Peer]) -> None:
    caller, callee = link
    id_, text = caller.request("quick")
    incoming = only(callee.receive(text))
    caller.receive(callee.respond(incoming.id, 1))
    assert caller.cancel(id_) is None


def test_forget_drops_the_request_and_its_token(link: tuple[Peer, Peer]) -> None:
    caller, callee = link
    id_, text = caller.request("slow", progress=True)
    incoming = only(callee.receive(text))
    step = callee.progress(incoming.id, 1)
    caller.forget(id_)
    assert step is not None
    assert isinstance(only(caller.receive(step)), ProtocolViolation)
    assert isinstance(only(caller.receive(callee.respond(incoming.id, 1))), ProtocolViolation)


@pytest.mark.parametrize("meta", ["a string", 5, ["list"], None])
def test_a_malformed_meta_is_stripped_and_ignored(meta: Any) -> None:
    callee = Peer("b")
    frame = json.dumps({"jsonrpc": "2.0", "id": 3, "method": "m", "params": {"x": 1, "_meta": meta}})
    incoming = only(callee.receive(frame))
    assert (incoming.params, incoming.meta) == ({"x": 1}, {})
    assert callee.progress(3, 1) is None


def _request_frame(id_: Any, method: str = "slow") -> str:
    return json.dumps({"jsonrpc": "2.0", "id": id_, "method": method})


def test_max_incoming_refuses_the_overflow_and_reused_ids() -> None:
    callee = Peer("server", max_incoming=2)
    assert isinstance(only(callee.receive(_request_frame(1))), IncomingRequest)
    assert isinstance(only(callee.receive(_request_frame("two"))), IncomingRequest)
    reused = only(callee.receive(_request_frame(1)))
    assert isinstance(reused, Reply)
    assert json.loads(reused.text)["error"]["code"] == errors.INVALID_REQUEST
    over = only(callee.receive(_request_frame(3)))
    assert isinstance(over, Reply)
    assert json.loads(over.text) == {
        "jsonrpc": "2.0",
        "error": {"code": errors.OVERLOADED, "message": "too many requests in flight"},
        "id": 3,
    }
    assert callee.in_flight == 2  # refused requests never entered the table
    # Notifications are never limited; an answer frees a slot, a cancel-and-finish too.
    note = json.dumps({"jsonrpc": "2.0", "method": "notifications/message", "params": {"data": "x"}})
    assert isinstance(only(callee.receive(note)), IncomingNotification)
    callee.respond(1, None)
    assert isinstance(only(callee.receive(_request_frame(3))), IncomingRequest)
    callee.finish("two")
    assert isinstance(only(callee.receive(_request_frame(4))), IncomingRequest)


def test_without_a_limit_nothing_is_refused() -> None:
    callee = Peer("agent")
    for i in range(200):
        assert isinstance(only(callee.receive(_request_frame(i))), IncomingRequest)
    assert callee.in_flight == 200


def test_close_empties_every_table(link: tuple[Peer, Peer]) -> None:
    caller, callee = link
    id_, text = caller.request("slow", progress=True)
    incoming = only(callee.receive(text))
    caller.close()
    callee.close()
    assert (caller.pending, callee.in_flight) == (0, 0)
    assert caller.cancel(id_) is None  # nobody left to tell
    assert callee.progress(incoming.id, 1) is None
    with pytest.raises(errors.RpcError) as info:
        caller.request("again")
    assert info.value.code == errors.CANCELLED


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", errors.PARSE_ERROR),
        ("[" * 200 + "]" * 200, errors.INVALID_REQUEST),
        ('[{"jsonrpc": "2.0", "method": "ping", "id": 1}]', errors.INVALID_REQUEST),
        ('{"jsonrpc": "2.0", "method": "ping", "id": 1.5}', errors.INVALID_REQUEST),
        ('{"jsonrpc": "2.0", "method": "ping", "id": 1, "params": 3}', errors.INVALID_REQUEST),
    ],
)
def test_malformed_frames_are_answered_not_raised(frame: str, code: int) -> None:
    reply = only(Peer().receive(frame))
    assert isinstance(reply, Reply)
    assert json.loads(reply.text)["error"]["code"] == code


def test_a_broken_response_is_never_answered() -> None:
    peer = Peer()
    peer.request("x")
    event = only(peer.receive('{"jsonrpc": "2.0", "id": 1, "result": 1, "error": {}}'))
    assert isinstance(event, ProtocolViolation)
