"""`spec.tool_result`: the hand-written CallToolResult check agrees with the protocol's JSON Schema.

A differential property (hypothesis) over values built near the shape — right keys with values of every
JSON type, content items of every kind with members missing or mistyped, artifact references — plus the
answers named for a caller.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from spec.schemas import method_schema
from spec.tool_result import tool_result_problem

_SCHEMA = method_schema("tools/call", "result")
assert _SCHEMA is not None
_VALIDATOR = Draft202012Validator(_SCHEMA)

_scalars = (
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["", "x", "text", "image", "resource", "resource_link", "audio"])
)  # fmt: skip
_any = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["uri", "a"]), inner, max_size=2)
    ),
    max_leaves=6,
)
_HEX = "0123456789abcdef"
_digest = st.text(_HEX, min_size=64, max_size=64) | st.text(_HEX + "G", min_size=63, max_size=65) | _any


def _maybe(name: str, value: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(st.just({}), value.map(lambda v: {name: v}))


def _item() -> st.SearchStrategy[Any]:
    kinds = st.sampled_from(["text", "image", "resource", "resource_link", "audio"]) | _any
    members = st.fixed_dictionaries(
        {},
        optional={
            "text": st.text(max_size=3) | _any,
            "data": st.text(max_size=3) | _any,
            "mimeType": st.just("image/png") | _any,
            "uri": st.just("file:///x") | _any,
            "name": st.just("n") | _any,
            "resource": st.fixed_dictionaries({}, optional={"uri": _any, "text": _any}) | _any,
        },
    )
    return st.builds(lambda kind, rest: {"type": kind, **rest}, kinds, members) | _any


_reference = (
    st.fixed_dictionaries(
        {},
        optional={
            "id": st.just("a1") | _any,
            "bytes": st.integers(-2, 10**6) | st.just(3.0) | _any,
            "sha256": _digest,
            "uri": st.just("/api/v1/artifacts/a1") | _any,
            "mimeType": st.just("application/json") | _any,
        },
    )
    | _any
)

_optional = {
    "structuredContent": st.dictionaries(st.text(max_size=2), _any, max_size=2) | _any,
    "_meta": st.fixed_dictionaries({}, optional={"cortex/artifact": _reference, "x": _any}) | _any,
    "other": _any,
}
_result = (
    st.fixed_dictionaries(
        {"content": st.lists(_item(), max_size=3), "isError": st.booleans()}, optional=_optional
    )
    | st.fixed_dictionaries(
        {},
        optional={
            "content": st.lists(_item(), max_size=3) | _any,
            "isError": st.booleans() | _any,
            **_optional,
        },
    )
    | _any
)


@settings(max_examples=1500, deadline=None)
@given(_result)
def test_the_check_agrees_with_the_schema(value: Any) -> None:
    ours = tool_result_problem(value)
    schema = next(iter(_VALIDATOR.iter_errors(value)), None)
    assert (ours is None) == (schema is None), (value, ours, schema and schema.message)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (5, "a result must be an object, not a number"),
        ({"isError": False}, "content must be an array, not null"),
        ({"content": "abc", "isError": False}, "content must be an array, not a string"),
        ({"content": []}, "isError must be a boolean, not null"),
        (
            {"content": [{"type": "bogus"}], "isError": False},
            "content[0].type must be text, image, resource or resource_link",
        ),
        (
            {"content": [{"type": "text", "text": 5}], "isError": False},
            "content[0].text must be a string, not a number",
        ),
        (
            {"content": [{"type": "resource", "resource": {}}], "isError": False},
            "content[0].resource must have a uri",
        ),
        (
            {"content": [], "isError": False, "structuredContent": [1]},
            "structuredContent must be an object, not an array",
        ),
        (
            {"content": [], "isError": False, "_meta": {"cortex/artifact": {"id": "a", "bytes": 1}}},
            '_meta["cortex/artifact"].sha256 must be 64 lowercase hex digits',
        ),
    ],
)
def test_the_problem_names_the_member_and_what_came(value: Any, problem: str) -> None:
    assert tool_result_problem(value) == problem


def test_what_the_agent_answers_passes() -> None:
    echo = {"content": [{"type": "text", "text": "hi"}], "isError": False}
    shot = {
        "content": [{"type": "image", "data": "aGk=", "mimeType": "image/png"}],
        "isError": False,
        "structuredContent": {"width": 1},
    }
    reference = {
        "content": [{"type": "text", "text": "preview"}],
        "isError": False,
        "_meta": {
            "cortex/artifact": {"id": "a1", "bytes": 10, "sha256": "0" * 64, "mimeType": "application/json"}
        },
    }
    for value in (echo, shot, reference):
        assert tool_result_problem(value) is None
