"""`spec.manifest.quick_check`: the fast path for arguments never accepts what jsonschema refuses.

Tier (a): pure functions, no I/O. Every manifest tool's inputSchema is checked against a fixed,
seeded set of argument objects (valid and invalid in every way the fast path handles) and the
fast answer is compared with the full validator's.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from spec.manifest import argument_problem, load_manifest, quick_check, schema_validator

TOOLS = load_manifest()
VALUES: list[Any] = [
    "",
    "x",
    "e5",
    "png",
    "jpeg",
    "utf-8",
    "é" * 3,
    0,
    1,
    -1,
    60,
    3600,
    3601,
    100000,
    100001,
    0.5,
    2.0,
    float("nan"),
    True,
    False,
    None,
    [],
    ["a"],
    {},
    {"A": "b"},
]


def _candidates(schema: dict[str, Any], rng: random.Random) -> list[Any]:
    names = [*schema.get("properties", {}), "unexpected"]
    out: list[Any] = [None, [], "text", 1, {}]
    for _ in range(400):
        chosen = rng.sample(names, rng.randint(0, len(names)))
        out.append({name: rng.choice(VALUES) for name in chosen})
    return out


@pytest.mark.parametrize("tool", TOOLS, ids=[t["name"] for t in TOOLS])
def test_quick_check_never_accepts_what_the_schema_refuses(tool: dict[str, Any]) -> None:
    schema = tool["inputSchema"]
    validator = schema_validator(schema)
    quick = quick_check(schema)
    if quick is None:
        pytest.skip(f"{tool['name']}: no fast path (full validator only)")
    rng = random.Random(tool["name"])
    accepted = 0
    for arguments in _candidates(schema, rng):
        if quick(arguments):
            accepted += 1
            assert argument_problem(validator, arguments) is None, arguments
        # With or without the fast path, the answer is the full validator's.
        assert argument_problem(validator, arguments, quick) == argument_problem(validator, arguments)
    assert accepted > 0 or schema.get("required")


def test_quick_check_takes_the_common_calls() -> None:
    by_name = {t["name"]: t["inputSchema"] for t in TOOLS}
    echo = quick_check(by_name["echo"])
    assert echo is not None
    assert echo({"text": "hi"})
    assert not echo({"text": 1})  # left to the full validator, which refuses it
    assert not echo({"text": "hi", "extra": 1})
    assert not echo({})
    read = quick_check(by_name["fs_read"])
    assert read is not None and read({"path": "/tmp/x", "offset": 0, "limit": 10})
    assert not read({"path": "/tmp/x", "offset": True})  # a bool is no integer


def test_unsupported_schemas_have_no_fast_path() -> None:
    assert quick_check({"type": "object", "properties": {"env": {"type": "object"}}}) is None
    assert quick_check({"type": "object", "patternProperties": {"^a": {"type": "string"}}}) is None
    assert quick_check({"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 2}}}) is None
    assert quick_check({"type": "array"}) is None
    assert quick_check({"type": "object", "properties": {"s": {"enum": ["a", 1]}}}) is None
