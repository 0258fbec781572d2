"""JSON Schema validation whose regular expressions run in linear time (google-re2).

Where it sits: in `spec`, under `spec.manifest.schema_validator`, which every side uses to check tool
arguments — above all the server, which validates arguments against schemas that *nodes* declare.
jsonschema evaluates `pattern`, `patternProperties` (and the pattern side of `additionalProperties`)
with Python's backtracking `re`: a node declaring ``"pattern": "^(a+)+$"`` froze the whole server with
one 27-character argument. Rules:

1. `pattern`, `patternProperties` and `additionalProperties` here match with RE2 (linear in the input,
   no backtracking); results agree with jsonschema's for every pattern RE2 accepts.
2. A pattern RE2 cannot run (look-around, back-references) makes the instance it would check fail
   with a clear error: such a tool is uncallable for that property, never slow.
3. `unevaluatedProperties` in a schema that also uses `patternProperties` (jsonschema would match
   those with `re`) fails the same way.
4. Compiled patterns are memoised (a pure function of the pattern text), at most `CACHE_SIZE`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import re2
from jsonschema import Draft202012Validator, ValidationError, validators
from jsonschema._keywords import unevaluatedProperties as _unevaluated_properties

__all__ = ["CACHE_SIZE", "LinearValidator", "compile_pattern"]

CACHE_SIZE = 512


@functools.lru_cache(maxsize=CACHE_SIZE)
def compile_pattern(pattern: str) -> Any:
    """The compiled RE2 program for `pattern`, or None when RE2 cannot run it (rule 2)."""
    try:
        return re2.compile(pattern)
    except Exception:  # re2.error and its kin (the binding raises several types)
        return None


def _short(value: str, limit: int = 80) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _unsupported(pattern: str) -> ValidationError:
    return ValidationError(f"the schema's pattern {pattern!r} is not supported (linear-time regexes only)")


def _pattern(validator: Any, pattern: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "string") or not isinstance(pattern, str):
        return
    regex = compile_pattern(pattern)
    if regex is None:
        yield _unsupported(pattern)
    elif regex.search(instance) is None:
        yield ValidationError(f"{_short(instance)} does not match {pattern!r}")


def _matching(patterns: Any, key: str) -> Iterator[tuple[str, Any] | None]:
    """(pattern, subschema) for each pattern matching `key`; None for a pattern RE2 cannot run."""
    for pattern, subschema in patterns.items():
        regex = compile_pattern(pattern)
        if regex is None:
            yield None
        elif regex.search(key) is not None:
            yield pattern, subschema


def _pattern_properties(
    validator: Any, patterns: Any, instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object") or not isinstance(patterns, dict):
        return
    for key, value in instance.items():
        for match in _matching(patterns, key):
            if match is None:
                yield ValidationError(
                    "the schema's patternProperties are not supported (linear-time regexes only)"
                )
                return
            yield from validator.descend(value, match[1], path=key, schema_path=match[0])


def _additional_properties(
    validator: Any, extra: Any, instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = schema.get("patternProperties", {})
    extras = []
    for key in instance:
        if key in properties:
            continue
        matches = list(_matching(patterns, key)) if isinstance(patterns, dict) else []
        if None in matches:
            yield ValidationError(
                "the schema's patternProperties are not supported (linear-time regexes only)"
            )
            return
        if not matches:
            extras.append(key)
    if validator.is_type(extra, "object"):
        for key in extras:
            yield from validator.descend(instance[key], extra, path=key)
    elif extra is False and extras:
        names = ", ".join(_short(key) for key in sorted(extras)[:10])
        yield ValidationError(f"additional properties are not allowed ({names} unexpected)")


def _uses_pattern_properties(schema: Any) -> bool:
    stack = [schema]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "patternProperties" in item:
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _unevaluated(validator: Any, value: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if _uses_pattern_properties(validator.schema):
        yield ValidationError("unevaluatedProperties with patternProperties is not supported")
        return
    yield from _unevaluated_properties(validator, value, instance, schema)


LinearValidator: Any = validators.extend(
    Draft202012Validator,
    {
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
        "unevaluatedProperties": _unevaluated,
    },
)
"""Draft 2020-12 with the module's rules: the validator class `spec.manifest.schema_validator` builds."""
