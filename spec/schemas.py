"""Loading the protocol's JSON Schemas (spec/schemas/*.json) and checking messages against them.

Used by tests (every frame a peer produces validates) and by tools that want to check a capture.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator

__all__ = ["envelope_problem", "load_schema", "message_problems", "method_schema"]


@cache
def load_schema(name: str) -> dict[str, Any]:
    text = (resources.files("spec") / "schemas" / name).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def method_schema(method: str, part: str) -> dict[str, Any] | None:
    """The schema of `method`'s ``params`` or ``result``, or None when the protocol defines none."""
    defs = load_schema("methods.schema.json")["$defs"]
    entry = defs.get(method)
    if not isinstance(entry, dict) or part not in entry:
        return None
    return {"$defs": defs, **entry[part]}


def envelope_problem(message: Any) -> str | None:
    error = next(iter(Draft202012Validator(load_schema("envelope.schema.json")).iter_errors(message)), None)
    return None if error is None else error.message


def message_problems(message: dict[str, Any], method: str | None = None) -> list[str]:
    """Envelope and (when the method is known) params/result problems of one message."""
    problems = [p for p in [envelope_problem(message)] if p]
    name = message.get("method", method)
    if not isinstance(name, str):
        return problems
    if "method" in message:
        schema, value = method_schema(name, "params"), message.get("params", {})
    elif "result" in message:
        schema, value = method_schema(name, "result"), message["result"]
    else:
        return problems
    if schema is not None:
        problems += [e.message for e in Draft202012Validator(schema).iter_errors(value)]
    return problems
