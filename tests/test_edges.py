"""The edge modules on their own (unit tier): token extraction, the RPC-error → HTTP table, tool names."""

from __future__ import annotations

import json

import pytest

from server.http_errors import error_bytes, http_error
from server.identity import bearer_token, offers_subprotocol, subprotocol_token
from server.tool_exposure import split_tool_name, tool_error_text, tool_name
from spec import errors
from spec.errors import RpcError


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("BEARER abc", "abc"),
        ("Bearer ", None),
        ("Bearer", None),
        ("Basic abc", None),
        ("", None),
    ],
)
def test_bearer_token(header: str, token: str | None) -> None:
    assert bearer_token({"authorization": header}) == token


def test_subprotocol_token_and_offer() -> None:
    assert subprotocol_token({"subprotocols": ["cortex.v1", "bearer.abc"]}) == "abc"
    assert subprotocol_token({"subprotocols": ["cortex.v1", "bearer."]}) is None
    assert subprotocol_token({}) is None
    assert offers_subprotocol({"subprotocols": ["x", "cortex.v1"]})
    assert not offers_subprotocol({"subprotocols": ["cortex.v2"]})


@pytest.mark.parametrize(
    ("code", "data", "status", "error"),
    [  # CONTRACT §2: the statuses every HTTP surface answers
        (errors.NODE_NOT_FOUND, {"reason": "not_found"}, 404, "node_not_found"),
        (errors.NODE_NOT_FOUND, {"reason": "not_connected"}, 409, "node_not_connected"),
        (errors.NODE_NOT_FOUND, None, 404, "node_not_found"),
        (errors.INVALID_PARAMS, {"reason": "unknown_tool"}, 404, "unknown_tool"),
        (errors.INVALID_PARAMS, {"reason": "invalid_arguments", "problem": "x"}, 422, "invalid_arguments"),
        (errors.NODE_DISCONNECTED, {"retryable": False}, 502, "node_disconnected"),
        (errors.TIMEOUT, None, 504, "timeout"),
        (errors.OVERLOADED, None, 503, "overloaded"),
        (errors.INTERNAL_ERROR, None, 500, "internal"),
        (-1, None, 500, "internal"),
    ],
)
def test_rpc_errors_map_to_the_contract_statuses(code: int, data: object, status: int, error: str) -> None:
    mapped = http_error(RpcError(code, "m", data))
    assert (mapped.status, mapped.error) == (status, error)
    assert json.loads(mapped.response().body) == {"error": error, "message": mapped.message}


def test_a_hostile_reason_falls_back_to_the_code() -> None:
    # A node's error data is its own: an unhashable or odd reason must not break the mapping.
    for reason in (["not_connected"], {"a": 1}, 5, None):
        assert http_error(RpcError(errors.NODE_NOT_FOUND, "m", {"reason": reason})).status == 404
    assert http_error(RpcError(errors.NODE_NOT_FOUND, "m", ["not a dict"])).status == 404


def test_internal_errors_carry_no_detail() -> None:
    mapped = http_error(RpcError(errors.INTERNAL_ERROR, "Traceback: secret path /home/x"))
    assert "secret" not in mapped.message and "/home" not in mapped.message


def test_error_bytes_is_the_json_body() -> None:
    assert json.loads(error_bytes("request_too_large", 'say "hi"')) == {
        "error": "request_too_large",
        "message": 'say "hi"',
    }


def test_tool_names_round_trip() -> None:
    assert split_tool_name(tool_name("laptop", "shell_exec")) == ("laptop", "shell_exec")
    assert split_tool_name("laptop__fs__odd") == ("laptop", "fs__odd")
    for bad in ("laptop", "__tool", "laptop__", "", "laptop.tool"):
        assert split_tool_name(bad) is None


def test_tool_error_text_carries_the_schema_complaint() -> None:
    # The model corrects its call from this text (CONTRACT §7), so the complaint must reach it.
    failure = RpcError(
        errors.INVALID_PARAMS, "m", {"reason": "invalid_arguments", "problem": "text: required"}
    )
    assert "text: required" in tool_error_text(failure, "n", "echo")
