"""Loading the tool manifest (tools_manifest.json) and checking arguments against a tool's inputSchema."""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from spec.schema_regex import LinearValidator

__all__ = [
    "QuickCheck",
    "argument_problem",
    "load_manifest",
    "manifest_path",
    "quick_check",
    "schema_validator",
]

QuickCheck = Callable[[Any], bool]
"""True means: these arguments certainly fit the schema. False means only: ask the full validator."""


def manifest_path() -> Path:
    """tools_manifest.json at the repository root (a copy ships inside the spec package for installs)."""
    root = Path(__file__).resolve().parent.parent / "tools_manifest.json"
    if root.exists():
        return root
    return Path(str(resources.files("spec") / "tools_manifest.json"))


def load_manifest(path: Path | None = None) -> list[dict[str, Any]]:
    data = json.loads((path or manifest_path()).read_text(encoding="utf-8"))
    tools: list[dict[str, Any]] = data["tools"]
    return tools


def schema_validator(schema: dict[str, Any]) -> Draft202012Validator:
    """A compiled validator for one tool's inputSchema; build it once per tool, not per call.

    Its regular expressions run in linear time (`spec.schema_regex`): schemas come from nodes.
    """
    validator: Draft202012Validator = LinearValidator(schema)
    return validator


def argument_problem(
    validator: Draft202012Validator, arguments: Any, quick: QuickCheck | None = None
) -> str | None:
    """The schema's complaint about `arguments` (first error, with its path), or None when they fit.

    *quick*, from `quick_check` on the same schema, answers the common case (arguments that fit) without
    running jsonschema; every complaint still comes from the full validator.
    """
    if quick is not None and quick(arguments):
        return None
    error = next(iter(validator.iter_errors(arguments)), None)
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path)
    return f"{where}: {error.message}" if where else error.message


# -- the fast path for flat schemas ----------------------------------------------------------------------
# Keywords that only annotate (never make an instance invalid), and the per-property keywords handled.
_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$comment", "deprecated"})
_PROPERTY_KEYWORDS = _ANNOTATIONS | {
    "type", "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "enum",
}  # fmt: skip
_OBJECT_KEYWORDS = _ANNOTATIONS | {"type", "properties", "required", "additionalProperties"}
_TYPES: dict[str, Callable[[Any], bool]] = {
    # Exact types: a bool is no integer, and a float (even 2.0) is left to the full validator.
    "string": lambda v: type(v) is str,
    "integer": lambda v: type(v) is int,
    "number": lambda v: type(v) is int or type(v) is float,
    "boolean": lambda v: type(v) is bool,
}


def _property_check(schema: Any) -> Callable[[Any], bool] | None:
    if not isinstance(schema, dict) or not _PROPERTY_KEYWORDS.issuperset(schema):
        return None
    kind = schema.get("type")
    if kind not in _TYPES:
        return None
    is_type = _TYPES[kind]
    tests: list[Callable[[Any], bool]] = []
    for key in ("minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        bound = schema.get(key)
        if bound is None:
            continue
        if type(bound) not in (int, float):
            return None
        if key in ("minLength", "maxLength") and kind != "string":
            return None
        if key not in ("minLength", "maxLength") and kind not in ("integer", "number"):
            return None
        tests.append(_bound_test(key, bound))
    if "enum" in schema:
        values = schema["enum"]
        if kind != "string" or not isinstance(values, list) or not all(type(x) is str for x in values):
            return None
        allowed = frozenset(values)
        tests.append(allowed.__contains__)
    if not tests:
        return is_type
    return lambda v: is_type(v) and all(test(v) for test in tests)


def _bound_test(key: str, bound: float) -> Callable[[Any], bool]:
    # NaN fails every comparison, so it falls through to the full validator.
    if key == "minLength":
        return lambda v: len(v) >= bound
    if key == "maxLength":
        return lambda v: len(v) <= bound
    if key == "minimum":
        return lambda v: v >= bound
    if key == "maximum":
        return lambda v: v <= bound
    if key == "exclusiveMinimum":
        return lambda v: v > bound
    return lambda v: v < bound


def quick_check(schema: Any) -> QuickCheck | None:
    """A fast, conservative check for a flat object schema (the shape of every manifest tool).

    Handles ``type: object`` with ``properties`` of type string/integer/number/boolean (lengths, bounds,
    string enums), ``required`` and ``additionalProperties: false``. For any other schema it returns
    None: use the full validator alone.
    """
    if not isinstance(schema, dict) or schema.get("type") != "object":
        return None
    if not _OBJECT_KEYWORDS.issuperset(schema):
        return None
    properties = schema.get("properties", {})
    required = schema.get("required", [])
    extra = schema.get("additionalProperties", True)
    if not isinstance(properties, dict) or not isinstance(required, list) or type(extra) is not bool:
        return None
    if not all(isinstance(name, str) for name in required):
        return None
    checks: dict[str, Callable[[Any], bool]] = {}
    for name, sub in properties.items():
        check = _property_check(sub)
        if check is None:
            return None
        checks[name] = check
    needed = tuple(required)
    closed = extra is False

    def fits(arguments: Any) -> bool:
        if type(arguments) is not dict:
            return False
        for name in needed:
            if name not in arguments:
                return False
        for name, value in arguments.items():
            check = checks.get(name)
            if check is None:
                if closed:
                    return False
            elif not check(value):
                return False
        return True

    return fits
