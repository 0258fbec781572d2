"""Unit tier: `spec.json_text` gives exactly `json.dumps`'s text (compact, and sorted for the audit chain);
`wire` the same document; `spec.json_limits.loads` exactly `json.loads`'s values.

The audit chain hashes `canonical`'s bytes and `verify` recomputes them with `json.dumps`: one differing
byte would break every chain, so the equality is checked over generated values, not a few examples.
Frames are written by `wire` and read by `loads`, both `msgspec` first: a frame must mean what the
stdlib would have made of it, so both are checked against `json` over generated values and text.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spec import json_limits
from spec.json_text import PLAIN_DEPTH, canonical, canonical_bytes, compact, lenient, wire

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=6),
    max_leaves=40,
)


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"k": [value]}
    return value


def _dumps(value: Any, sort_keys: bool) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=sort_keys)


@settings(max_examples=400, deadline=None)
@given(_VALUES)
def test_same_text_as_json_dumps(value: Any) -> None:
    assert compact(value) == _dumps(value, False)
    assert canonical(value) == _dumps(value, True)
    assert lenient(value) == _dumps(value, False)


_PLAIN = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(st.text(max_size=8), inner, max_size=6)
    ),
    max_leaves=40,
)


def _canonical_outcome(encode: Any, value: Any) -> tuple[str, Any]:
    try:
        return "ok", encode(value)
    except (TypeError, ValueError) as exc:
        return "raised", type(exc)


@settings(max_examples=600, deadline=None)
@given(_PLAIN | _VALUES)
def test_canonical_bytes_are_canonical_encoded(value: Any) -> None:
    """The audit chain's bytes: msgspec's where the value is plain, json's otherwise, never different."""
    expected = _canonical_outcome(lambda v: canonical(v).encode("utf-8"), value)
    assert _canonical_outcome(canonical_bytes, value) == expected


@pytest.mark.parametrize(
    "value",
    [
        {"f": 1e16, "g": 1e-05, "h": 0.1},  # floats: json's notation, not msgspec's (1e16, 0.00001)
        {"nan": math.nan, "inf": [math.inf]},
        {"lone": "\ud800"},  # both refuse to encode it
        {"big": 10**5000},  # past int-to-text's digit limit: both refuse
        {1: "int key"},
        [True, 1, "1", None, ("t", ["u"])],
        {"\U0001f600": 1, "\uffff": 2, "": 0, "B": 3, "a": 4},  # code point order
        ["\x00\x08\x0c\x1b\x7f\u0085\u2028\u2029"],
        {"deep": _nested(PLAIN_DEPTH + 2)},
    ],
)
def test_canonical_bytes_edge_values(value: Any) -> None:
    expected = _canonical_outcome(lambda v: canonical(v).encode("utf-8"), value)
    assert _canonical_outcome(canonical_bytes, value) == expected


def test_lenient_writes_what_json_has_no_type_for_as_its_str() -> None:
    value = {"when": object, "items": {3}, "ok": [1, "two"]}
    assert lenient(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


@pytest.mark.parametrize("value", ["", "plain", 'quote " and \\ and \n', "é ✓ 😀", "\ud800"])
def test_top_level_strings(value: str) -> None:
    assert compact(value) == _dumps(value, False)


def test_what_json_refuses_is_refused() -> None:
    for bad in ({1, 2}, {"k": object()}, b"bytes"):
        with pytest.raises(TypeError):
            compact(bad)
    with pytest.raises(TypeError):
        canonical({1: "a", "b": 2})  # keys of mixed types cannot be sorted, as with json.dumps


def test_non_finite_floats_as_json_dumps_writes_them() -> None:
    assert compact([math.inf, -math.inf]) == "[Infinity,-Infinity]"


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values, ints and floats kept apart (1 and 1.0 are different texts on the wire)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def _finite(value: Any) -> Any:
    """`value` with NaN and ±Infinity as None: what `wire` sends for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


@settings(max_examples=400, deadline=None)
@given(_VALUES)
def test_wire_writes_the_same_document(value: Any) -> None:
    text = wire(value)
    assert "\n" not in text  # a batched frame's separator never occurs inside a message
    assert _same(json.loads(text), _finite(value))
    assert _same(json_limits.loads(text), _finite(value))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"id": 2**70}, {"id": 2**70}),  # beyond 64 bits: exact
        ("lone \ud800", "lone \ud800"),  # msgspec refuses: written by compact
        ({1: "a"}, {"1": "a"}),
        ({"x": math.nan, "y": [math.inf]}, {"x": None, "y": [None]}),
    ],
)
def test_wire_edge_values(value: Any, expected: Any) -> None:
    assert _same(json.loads(wire(value)), expected)


_JSON_CHARS = '{}[]",:0123456789.eE+-truefalsnl \\u/x\n\t\x00\u00e9\ud800\U0001f600'
_JSONISH = st.text(alphabet=list(_JSON_CHARS), max_size=14)


def _outcome(parse: Any, text: str | bytes) -> tuple[str, Any]:
    try:
        return "ok", parse(text)
    except (ValueError, RecursionError):
        return "refused", None


@settings(max_examples=1500, deadline=None)
@given(_JSONISH | st.binary(max_size=12) | _VALUES.map(lambda v: json.dumps(v, ensure_ascii=False)))
def test_loads_accepts_and_decodes_exactly_what_json_loads_does(text: str | bytes) -> None:
    mine, theirs = _outcome(json_limits.loads, text), _outcome(json.loads, text)
    assert mine[0] == theirs[0], (text, mine, theirs)
    assert _same(mine[1], theirs[1]), (text, mine, theirs)


@pytest.mark.parametrize(
    "text",
    ["NaN", "[-Infinity]", '"\\ud800"', "1e400", "1234567890" * 3, "-0", "1E2", '{"a":1,"a":2}'],
)
def test_loads_edge_texts_as_json_loads(text: str) -> None:
    assert _same(json_limits.loads(text), json.loads(text))


def test_loads_refuses_what_json_loads_refuses() -> None:
    for bad in ("", "[1,]", '"\x00"', b"\xff", "1" * 5000, "{'a': 1}"):
        with pytest.raises(json_limits.JsonSyntaxError):
            json_limits.loads(bad)
    for deep in ("[" * 65 + "]" * 65, "[" * 5000 + "]" * 5000, "[" * 100_000):
        with pytest.raises(json_limits.JsonLimitError):
            json_limits.loads(deep)
