"""Bounded JSON decoding: the one parser every untrusted frame and body goes through.

Where it sits: in `spec` (no I/O), used by the peer core (`spec.peer`, every socket of every side) and by
the server's HTTP limits (`server.limits`). Rules:

1. Text that is not JSON raises `JsonSyntaxError`.
2. Nesting so deep that the C parser gives up raises `JsonDepthError` (a `RecursionError` inside
   `json.loads` never escapes to the caller), and so does a document nesting arrays and objects
   deeper than `MAX_DEPTH`, whatever else it holds.
3. Text with at most `MAX_DEPTH` opening brackets cannot nest deeper, so the common
   small message costs two `count` calls and no walk.
4. Both are `JsonLimitError`, a `ValueError`, so callers that already catch `ValueError` stay right.
5. `msgspec` parses first (0.55 against 2.0 µs for an echo request, a cost every frame pays at every
   end): what it accepts, `json.loads` accepts too and decodes to the same value (a differential test
   in tests/test_json_limits.py). What it refuses goes to `json.loads`, so what is accepted and what it
   becomes are exactly `json.loads`'s: the ``NaN``/``Infinity`` literals, escaped lone surrogates,
   numbers beyond a double or 64 bits of integer, and text that is no JSON at all (the error then is
   `json`'s).
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

__all__ = ["MAX_DEPTH", "JsonDepthError", "JsonLimitError", "JsonSyntaxError", "depth_exceeds", "loads"]

MAX_DEPTH = 64


class JsonLimitError(ValueError):
    """The text is refused: root of `JsonSyntaxError` and `JsonDepthError`."""


class JsonSyntaxError(JsonLimitError):
    """Not JSON (or too deep for the parser itself)."""


class JsonDepthError(JsonLimitError):
    """Valid JSON nesting deeper than allowed."""


def depth_exceeds(value: Any, limit: int = MAX_DEPTH) -> bool:
    """True when `value` nests lists/dicts deeper than `limit` (iterative: no recursion to exhaust)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def loads(text: str | bytes | bytearray, limit: int = MAX_DEPTH) -> Any:
    """`json.loads` under the module's rules."""
    try:
        value = _fast_decode(text)
    except RecursionError:  # msgspec's own nesting bound (about 1,000)
        raise JsonDepthError(f"nesting deeper than {limit}") from None
    except (msgspec.DecodeError, ValueError):  # rule 5: json decides
        value = _stdlib_loads(text, limit)
    if isinstance(text, str):
        brackets = text.count("[") + text.count("{")
    else:
        brackets = text.count(b"[") + text.count(b"{")
    if brackets > limit and depth_exceeds(value, limit):
        raise JsonDepthError(f"nesting deeper than {limit}")
    return value


_fast_decode = msgspec.json.Decoder().decode


def _stdlib_loads(text: str | bytes | bytearray, limit: int) -> Any:
    try:
        return json.loads(text)
    except RecursionError:  # deeper than the C parser's own limit (about 1,000 at the default)
        raise JsonDepthError(f"nesting deeper than {limit}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise JsonSyntaxError(f"not valid JSON: {exc}") from None
