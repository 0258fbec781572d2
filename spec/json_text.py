"""The two JSON serialisations of the protocol, each made by one encoder built once.

Where it sits: under `spec.peer` (every frame), the agent's audit log (CONTRACT §8's canonical record
text) and its result digests. stdlib only.

- `compact(value)`: ``json.dumps(value, separators=(",", ":"), ensure_ascii=False)``.
- `canonical(value)`: the same with ``sort_keys=True`` (what the audit chain hashes).
- `canonical_bytes(value)`: ``canonical(value).encode("utf-8")``, byte for byte, raising what that raises.
  Made by `msgspec` (keys sorted) when `value` holds only dicts with string keys, lists, tuples,
  strings, ints, booleans and None, of exactly those types, nested at most `PLAIN_DEPTH` deep: there the
  two write the same bytes (no float, whose notation differs; tests/test_json_text.py checks the
  equality over generated values). Anything else goes through `canonical`. The check walks the value
  in Python and still costs less than half of what it saves (1.6 against 3.6 µs for an echo call's
  ``tool.requested`` record, which the agent builds twice per call with the result digest besides).
- `lenient(value)`: `compact` that writes anything JSON has no type for as its ``str()`` (``default=str``;
  records for people to read, e.g. the recent calls a cluster shares).
- `wire(value)`: the text of one frame (`spec.peer`). The same JSON document as `compact` for every
  value `compact` takes, made by `msgspec` in about a seventh of the time (0.3 against 2.2 µs for an
  echo answer), which every message of every link pays at both ends. Only the text may differ: a float
  may be written another way for the same number (``1e16`` for ``1e+16``), and NaN and ±Infinity,
  which JSON has no literal for, go as ``null`` (as JavaScript's ``JSON.stringify`` writes them) where
  `json.dumps` writes the non-standard ``NaN``. A value `msgspec` refuses (a string holding a lone
  surrogate, a dict key that is not a string or a number) is written by `compact`, as before. Nothing
  hashed or compared byte for byte uses it: the audit chain and result digests use `canonical`.

The first three give exactly `json.dumps`'s text (tests/test_json_text.py checks that over generated
values; it checks `wire` decodes to the same value).
`json.JSONEncoder.encode` builds its C encoder anew on every call; here the C encoder
(`json.encoder.c_make_encoder`, what `JSONEncoder.iterencode` itself uses) is built once per
serialisation, which saves about a microsecond per frame or record. Values are decoded JSON or built by
our own code, never cyclic, so no cycle check is kept (a value nested too deep ends in RecursionError,
as with `json.dumps`). Where the C encoder is missing (another Python implementation), the stdlib
encoder is used as is.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from json import encoder as _stdlib_encoder
from typing import Any

import msgspec

__all__ = ["PLAIN_DEPTH", "canonical", "canonical_bytes", "compact", "lenient", "wire"]


def _refuse(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _make(sort_keys: bool, default: Callable[[Any], Any] = _refuse) -> Callable[[Any], str]:
    plain = json.JSONEncoder(
        separators=(",", ":"),
        ensure_ascii=False,
        sort_keys=sort_keys,
        default=None if default is _refuse else default,
    ).encode
    make_c = getattr(_stdlib_encoder, "c_make_encoder", None)
    quote = getattr(_stdlib_encoder, "c_encode_basestring", None)
    if make_c is None or quote is None:
        return plain
    chunks = make_c(None, default, quote, None, ":", ",", sort_keys, False, True)
    join = "".join

    def encode(value: Any) -> str:
        if isinstance(value, str):
            return str(quote(value))
        return join(chunks(value, 0))

    return encode


compact = _make(sort_keys=False)
canonical = _make(sort_keys=True)
lenient = _make(sort_keys=False, default=str)


_wire_encode = msgspec.json.Encoder().encode
_sorted_encode = msgspec.json.Encoder(order="sorted").encode
PLAIN_DEPTH = 64


def _plain(value: Any, depth: int = 0) -> bool:
    """Does `value` hold only what `msgspec` writes exactly as `json.dumps` does (see the module's notes)?"""
    kind = type(value)
    if kind is dict:
        if not _STR_ONLY.issuperset(map(type, value)):  # keys: exactly str
            return False
        items = value.values()
    elif kind is list or kind is tuple:
        items = value
    else:
        return kind is str or kind is int or value is None or kind is bool
    if depth >= PLAIN_DEPTH:
        return False
    for item in items:
        of = type(item)  # scalars inline: most values are, and a call costs more than the test
        if not (of is str or of is int or item is None or of is bool or _plain(item, depth + 1)):
            return False
    return True


_STR_ONLY = frozenset({str})


def canonical_bytes(value: Any) -> bytes:
    """``canonical(value).encode("utf-8")``, by `msgspec` where that gives the same bytes."""
    if _plain(value):
        try:
            return _sorted_encode(value)
        except (TypeError, ValueError):  # a lone surrogate: `canonical` writes it, the encoding refuses it
            pass
    return canonical(value).encode("utf-8")


def wire(value: Any) -> str:
    """One frame's text: `compact`'s document, written by `msgspec` (see the module's notes)."""
    try:
        return _wire_encode(value).decode("utf-8")
    except (TypeError, ValueError):  # e.g. a lone surrogate (UnicodeEncodeError), a key of another type
        return compact(value)
