"""Unit tier: the protocol's names live in `spec` only (spec.protocol), and what they derive.

A grep over server/, desktop_agent/ and sdk/ for the subprotocol, the protocol revision, the endpoint
paths, every method name and every `_meta` key as a string literal: each is written once, in spec/.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from spec.protocol import (
    AUDIT_MAX_LIMIT,
    PROTOCOL_VERSION,
    RPC_PATH,
    SUBPROTOCOL,
    TUNNEL_PATH,
    MetaKey,
    Method,
    clamp_audit_limit,
)
from spec.schemas import load_schema
from spec.urls import ws_url
from tests.support.literals import literals_in, string_literals


def _protocol_literals() -> set[str]:
    names = {SUBPROTOCOL, PROTOCOL_VERSION, TUNNEL_PATH, RPC_PATH}
    return names | {m.value for m in Method} | {k.value for k in MetaKey}


def test_protocol_names_are_written_only_in_spec() -> None:
    found = literals_in(_protocol_literals())
    assert found == [], "use spec.protocol instead of these literals:\n" + "\n".join(found)


def test_the_grep_sees_a_literal(tmp_path: Path) -> None:
    # The check above can fail: a module with a literal method name is caught.
    module = tmp_path / "m.py"
    module.write_text('"""doc naming tools/call."""\nX = "tools/call"\n', encoding="utf-8")
    assert string_literals(module) == [(2, "tools/call")]


def test_method_members_are_their_wire_names() -> None:
    assert SUBPROTOCOL == "cortex.v1" and PROTOCOL_VERSION == "2025-11-25"
    expected = {
        "initialize",
        "ping",
        "tools/list",
        "tools/call",
        "audit/read",
        "auth/refresh",
        "artifacts/write",
        "nodes/list",
        "notifications/initialized",
        "notifications/cancelled",
        "notifications/progress",
        "notifications/tools/list_changed",
        "notifications/message",
        "notifications/approvals",
    }
    assert {m.value for m in Method} == expected
    assert Method("tools/call") is Method.TOOLS_CALL
    assert f"{Method.TOOLS_CALL}" == str(Method.TOOLS_CALL) == "tools/call"


def test_the_enum_and_the_method_schemas_name_the_same_methods() -> None:
    # spec/schemas/methods.schema.json describes each method's params/result: one entry per member.
    defs = load_schema("methods.schema.json")["$defs"]
    described = {k for k, v in defs.items() if isinstance(v, dict) and ("params" in v or "result" in v)}
    assert described == {m.value for m in Method}


@pytest.mark.parametrize(
    ("base", "path", "expected"),
    [
        ("http://127.0.0.1:8765", RPC_PATH, "ws://127.0.0.1:8765/api/v1/rpc"),
        ("https://h.example/", TUNNEL_PATH, "wss://h.example/api/v1/nodes/connect"),
        ("ws://h:1", RPC_PATH, "ws://h:1/api/v1/rpc"),
        ("wss://h:1/base/", RPC_PATH, "wss://h:1/base/api/v1/rpc"),
    ],
)
def test_ws_url(base: str, path: str, expected: str) -> None:
    assert ws_url(base, path) == expected


@pytest.mark.parametrize(
    ("asked", "got"), [(-5, 1), (0, 1), (1, 1), (100, 100), (AUDIT_MAX_LIMIT, 1000), (10**9, 1000), ("7", 7)]
)
def test_clamp_audit_limit(asked: object, got: int) -> None:
    assert clamp_audit_limit(asked) == got  # type: ignore[arg-type]
