"""Unit tier: `spec.json_text` gives exactly `json.dumps`'s text (compact, and sorted for the audit chain).

The audit chain hashes `canonical`'s bytes and `verify` recomputes them with `json.dumps`: one differing
byte would break every chain, so the equality is checked over generated values, not a few examples.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spec.json_text import canonical, compact, lenient

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


def _dumps(value: Any, sort_keys: bool) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=sort_keys)


@settings(max_examples=400, deadline=None)
@given(_VALUES)
def test_same_text_as_json_dumps(value: Any) -> None:
    assert compact(value) == _dumps(value, False)
    assert canonical(value) == _dumps(value, True)
    assert lenient(value) == _dumps(value, False)


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
