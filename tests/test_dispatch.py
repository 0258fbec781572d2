"""Unit tier: one request through `spec.dispatch` (jsonrpcserver's public API), and its answers.

Method lookup and the params check are the library's; handler failures cross through `error_object`
only; nothing private of jsonrpcserver/jsonrpcclient is imported anywhere in the product.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from spec import errors
from spec.dispatch import MAX_VERDICTS, dispatch, make_methods
from tests.support.literals import PACKAGES, ROOT


async def _echo(ctx: Any, text: str, upper: bool = False) -> dict[str, Any]:
    return {"text": text.upper() if upper else text, "ctx": ctx}


async def _broken(ctx: Any) -> None:
    raise KeyError("secret internals")


async def _refuses(ctx: Any) -> None:
    raise errors.NodeNotConnected("node 'x' is not connected")


METHODS = make_methods({"echo": _echo, "broken": _broken, "refuses": _refuses})


def _run(method: str, params: Any = None) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": 7}
    if params is not None:
        message["params"] = params
    return asyncio.run(dispatch(METHODS, "the-context", message))


def test_a_fitting_call_returns_its_result_with_the_context_first() -> None:
    assert _run("echo", {"text": "hi", "upper": True}) == {"result": {"text": "HI", "ctx": "the-context"}}


@pytest.mark.parametrize(
    ("method", "params", "code"),
    [
        ("nope", {}, errors.METHOD_NOT_FOUND),
        ("echo", {}, errors.INVALID_PARAMS),  # missing `text`
        ("echo", {"text": "a", "extra": 1}, errors.INVALID_PARAMS),  # unknown param
        ("echo", ["a", True, "too many"], errors.INVALID_PARAMS),
    ],
)
def test_lookup_and_params_are_checked_by_the_library(method: str, params: Any, code: int) -> None:
    assert _run(method, params)["error"]["code"] == code


def test_a_handler_failure_is_internal_with_no_detail_on_the_wire() -> None:
    answer = _run("broken")
    assert answer["error"]["code"] == errors.INTERNAL_ERROR
    assert "secret" not in repr(answer)


def test_a_reason_class_crosses_with_its_code_and_reason() -> None:
    error = _run("refuses")["error"]
    assert error["code"] == errors.NODE_NOT_FOUND and error["data"] == {"reason": "not_connected"}


def test_cancellation_is_not_an_answer() -> None:
    started = asyncio.Event()

    async def slow(ctx: Any) -> None:
        started.set()
        await asyncio.sleep(60)

    async def main() -> None:
        task = asyncio.create_task(
            dispatch(make_methods({"slow": slow}), None, {"jsonrpc": "2.0", "method": "slow", "id": 1})
        )
        async with asyncio.timeout(5):
            await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(5):
                await task

    asyncio.run(main())


_PRIVATE = re.compile(
    r"from jsonrpc(server|client)\.\w+ import|import jsonrpc(server|client)\.|\b_value\b"
)  # (a wrapper's ``__signature__`` is inspect's protocol on our own function: see spec/dispatch.py)


def test_the_json_rpc_libraries_are_used_through_their_public_names_only() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for package in (*PACKAGES, "spec")
        for path in sorted((ROOT / package).rglob("*.py"))
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if _PRIVATE.search(line)
    ]
    assert found == []


def test_each_wrapper_declares_its_handlers_signature_once() -> None:
    import inspect

    async def handler(ctx: object, text: str, times: int = 1) -> str:
        return text * times

    wrapped = make_methods({"h": handler})["h"]
    assert wrapped.__signature__ == inspect.signature(handler)  # type: ignore[attr-defined]


def test_an_accepted_shape_is_remembered_and_answers_the_same() -> None:
    table = make_methods({"echo": _echo})
    message = {"jsonrpc": "2.0", "method": "echo", "id": 1, "params": {"text": "a"}}
    first = asyncio.run(dispatch(table, "ctx", message))
    assert table.accepted == {("echo", ("text",))}
    again = asyncio.run(dispatch(table, "ctx", message))  # straight to the handler (rule 4)
    assert first == again == {"result": {"text": "a", "ctx": "ctx"}}
    positional = {"jsonrpc": "2.0", "method": "echo", "id": 2, "params": ["b", True]}
    assert asyncio.run(dispatch(table, "ctx", positional))["result"]["text"] == "B"
    assert asyncio.run(dispatch(table, "ctx", positional))["result"]["text"] == "B"


def test_refusals_are_never_remembered_and_stay_the_librarys() -> None:
    table = make_methods({"echo": _echo})
    ok = {"jsonrpc": "2.0", "method": "echo", "id": 1, "params": {"text": "a"}}
    asyncio.run(dispatch(table, None, ok))
    for params in ({"text": "a", "extra": 1}, {}, ["a", True, "x"]):
        for _ in range(2):
            message = {"jsonrpc": "2.0", "method": "echo", "id": 3, "params": params}
            assert asyncio.run(dispatch(table, None, message))["error"]["code"] == errors.INVALID_PARAMS
    assert table.accepted == {("echo", ("text",))}


def test_a_caller_cycling_through_shapes_cannot_grow_the_memo() -> None:
    async def anything(ctx: Any, **params: Any) -> int:
        return len(params)

    table = make_methods({"any": anything})

    async def main() -> None:
        for i in range(MAX_VERDICTS * 3):
            message = {"jsonrpc": "2.0", "method": "any", "id": i, "params": {f"k{i}": 1}}
            assert await dispatch(table, None, message) == {"result": 1}

    asyncio.run(main())
    assert len(table.accepted) == MAX_VERDICTS
