"""The shape of a `tools/call` result: what a node may answer, checked before any surface reads it.

Where it sits: in `spec` (no I/O). The server checks every node's answer with it
(`server.results.checked_result`, on the one path every surface and the replica link share), and the
SDK checks a whole result it fetched from an artifact. It is the ``callToolResult`` of
spec/schemas/methods.schema.json written out by hand: a JSON Schema validator costs tens of
microseconds a call, this a few dict lookups for an echo (tests/test_tool_result.py checks both agree).

Rules:
1. A result is an object with ``content`` (an array) and ``isError`` (a boolean); ``structuredContent``
   and ``_meta``, when present, are objects.
2. Each content item is an object whose ``type`` is ``text`` (with a string ``text``), ``image`` (string
   ``data`` and ``mimeType``), ``resource`` (a ``resource`` object with a ``uri``) or ``resource_link``
   (string ``uri`` and ``name``). Other members are kept as they came.
3. ``_meta["cortex/artifact"]``, when present, is an artifact reference: string ``id``, a whole number
   ``bytes`` ≥ 0, ``sha256`` as 64 lowercase hex digits, and ``uri`` / ``mimeType`` strings if given.
4. The answer is the first problem found, in words a caller can act on (it names the member and the JSON
   type that came), or None.
"""

from __future__ import annotations

import re
from typing import Any

from spec.params import json_type
from spec.protocol import MetaKey

__all__ = ["tool_result_problem"]

_SHA256 = re.compile(r"[0-9a-f]{64}")
_ITEM_STRINGS: dict[str, tuple[str, ...]] = {
    "text": ("text",),
    "image": ("data", "mimeType"),
    "resource_link": ("uri", "name"),
    "resource": (),
}


def _json_type(value: Any) -> str:
    return json_type(value, show_numbers=False)


def _size(value: Any) -> bool:
    """A JSON Schema ``integer`` ≥ 0: a number with no fraction (never a boolean), not negative."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return value >= 0 and (isinstance(value, int) or value.is_integer())


def _item_problem(item: Any, where: str) -> str | None:
    if not isinstance(item, dict):
        return f"{where} must be an object, not {_json_type(item)}"
    kind = item.get("type")
    names = _ITEM_STRINGS.get(kind) if isinstance(kind, str) else None
    if names is None:
        return f"{where}.type must be text, image, resource or resource_link"
    for name in names:
        if not isinstance(item.get(name), str):
            return f"{where}.{name} must be a string, not {_json_type(item.get(name))}"
    if kind == "resource":
        resource = item.get("resource")
        if not isinstance(resource, dict):
            return f"{where}.resource must be an object, not {_json_type(resource)}"
        if "uri" not in resource:
            return f"{where}.resource must have a uri"
    return None


def _reference_problem(ref: Any) -> str | None:
    where = f'_meta["{MetaKey.ARTIFACT.value}"]'
    if not isinstance(ref, dict):
        return f"{where} must be an object, not {_json_type(ref)}"
    if not isinstance(ref.get("id"), str):
        return f"{where}.id must be a string, not {_json_type(ref.get('id'))}"
    size = ref.get("bytes")
    if not _size(size):
        return f"{where}.bytes must be a whole number of bytes, not {_json_type(size)}"
    digest = ref.get("sha256")
    if not isinstance(digest, str) or _SHA256.fullmatch(digest) is None:
        return f"{where}.sha256 must be 64 lowercase hex digits"
    for name in ("uri", "mimeType"):
        if name in ref and not isinstance(ref[name], str):
            return f"{where}.{name} must be a string, not {_json_type(ref[name])}"
    return None


def tool_result_problem(result: Any) -> str | None:
    """Rules 1-4: None when `result` is a CallToolResult, else its first problem."""
    if not isinstance(result, dict):
        return f"a result must be an object, not {_json_type(result)}"
    content = result.get("content")
    if not isinstance(content, list):
        return f"content must be an array, not {_json_type(content)}"
    if not isinstance(result.get("isError"), bool):
        return f"isError must be a boolean, not {_json_type(result.get('isError'))}"
    for index, item in enumerate(content):
        # The common item first, inline: an echo's result is checked in a few lookups.
        if type(item) is dict and item.get("type") == "text" and type(item.get("text")) is str:
            continue
        problem = _item_problem(item, f"content[{index}]")
        if problem is not None:
            return problem
    for name in ("structuredContent", "_meta"):
        if name in result and not isinstance(result[name], dict):
            return f"{name} must be an object, not {_json_type(result[name])}"
    meta = result.get("_meta")
    if meta is not None and MetaKey.ARTIFACT in meta:
        return _reference_problem(meta[MetaKey.ARTIFACT])
    return None
