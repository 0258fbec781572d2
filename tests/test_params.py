"""Unit tier: typed params/results (spec.params) write the wire shapes of spec/schemas and read back.

Every `to_json()` is checked against methods.schema.json inside a real JSON-RPC envelope, the readers
round-trip what the writers wrote, and the lenient readers (results from the other side) survive
hostile values without raising.
"""

from __future__ import annotations

from typing import Any

import pytest

from spec import errors
from spec.params import (
    AuditReadParams,
    AuthRefreshParams,
    AuthRefreshResult,
    CancelledParams,
    ClientAuditReadParams,
    ClientToolsCallParams,
    ClientToolsListParams,
    InitializeParams,
    InitializeResult,
    ProgressParams,
    ToolsCallParams,
)
from spec.protocol import PROTOCOL_VERSION, MetaKey, Method
from spec.schemas import message_problems

HEAD = {"seq": 3, "hash": "a" * 64}
NODE = {"hostname": "h", "os": "Linux", "arch": "x86_64", "agent_version": "1.0"}

PARAMS: list[tuple[Method, Any]] = [
    (Method.INITIALIZE, InitializeParams("cortex-server", "1.2", max_frame_bytes=1 << 20)),
    (Method.TOOLS_CALL, ToolsCallParams("echo", {"text": "hi"}, {"sub": "alice", "ws": "w1"})),
    (Method.AUDIT_READ, AuditReadParams(5, 50)),
    (Method.AUTH_REFRESH, AuthRefreshParams("tok")),
    (Method.PROGRESS, ProgressParams("p-1", 2, 10, "half")),
    (Method.PROGRESS, ProgressParams(7, 0.5)),
    (Method.CANCELLED, CancelledParams(3, "timeout")),
    (Method.CANCELLED, CancelledParams("x")),
    (Method.TOOLS_LIST, ClientToolsListParams("laptop")),
    (Method.TOOLS_CALL, ClientToolsCallParams("laptop", "echo", {"text": "hi"}, 30)),
    (Method.TOOLS_CALL, ClientToolsCallParams("laptop", "echo")),
    (Method.AUDIT_READ, ClientAuditReadParams("laptop", 0, 1000)),
]

RESULTS: list[tuple[Method, Any]] = [
    (Method.INITIALIZE, InitializeResult("cortex-agent", "1.0", NODE, HEAD)),
    (Method.AUTH_REFRESH, AuthRefreshResult(1_900_000_000)),
]


@pytest.mark.parametrize(("method", "value"), PARAMS, ids=lambda v: type(v).__name__)
def test_params_validate_against_the_method_schema(method: Method, value: Any) -> None:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": value.to_json()}
    if not method.startswith("notifications/"):
        message["id"] = 1
    assert message_problems(message) == []


@pytest.mark.parametrize(("method", "value"), RESULTS, ids=lambda v: type(v).__name__)
def test_results_validate_and_read_back(method: Method, value: Any) -> None:
    message = {"jsonrpc": "2.0", "result": value.to_json(), "id": 1}
    assert message_problems(message, method) == []
    assert type(value).from_json(value.to_json()) == value


def test_readers_round_trip_what_writers_wrote() -> None:
    for value in (
        InitializeParams("cortex-server", "1.2", max_frame_bytes=1 << 20),
        ProgressParams("p-1", 2, 10, "half"),
        CancelledParams(3, "timeout"),
    ):
        assert type(value).from_json(value.to_json()) == value


def test_wire_names_are_the_contracts() -> None:
    assert ToolsCallParams("echo", {}, {"sub": "a", "ws": "w"}).to_json() == {
        "name": "echo",
        "arguments": {},
        "_meta": {MetaKey.CALLER: {"sub": "a", "ws": "w"}},
    }
    init = InitializeParams("s", "1", max_frame_bytes=99).to_json()
    assert init["protocolVersion"] == PROTOCOL_VERSION and init["limits"] == {"maxFrameBytes": 99}
    assert "limits" not in InitializeParams("s", "1").to_json()
    assert ClientToolsCallParams("n", "t").to_json() == {"node": "n", "name": "t", "arguments": {}}
    assert "tok" not in repr(AuthRefreshParams("tok"))  # a secret never in a repr


@pytest.mark.parametrize(
    "hostile",
    [None, [], "x", {"serverInfo": 5, "node": "big", "protocolVersion": 7, "capabilities": []}],
)
def test_a_hostile_initialize_result_reads_as_absent_fields(hostile: Any) -> None:
    result = InitializeResult.from_json(hostile)
    assert result.node is None and result.protocol_version is None and result.server_name == ""


def test_hostile_progress_and_frame_limits_read_as_absent() -> None:
    told = ProgressParams.from_json({"progressToken": True, "progress": "lots", "total": [], "message": 5})
    assert (told.progress, told.total, told.message) == (0, None, None)
    assert InitializeParams.from_json({"limits": {"maxFrameBytes": True}}).max_frame_bytes is None
    assert InitializeParams.from_json({"limits": "no"}).max_frame_bytes is None


def test_served_params_that_do_not_fit_are_invalid_params() -> None:
    with pytest.raises(errors.InvalidParams):
        CancelledParams.from_json({"requestId": None})
    with pytest.raises(errors.InvalidParams):
        AuthRefreshResult.from_json({"expires_at": "soon"})


def test_audit_read_numbers_from_a_caller_are_whole_or_invalid() -> None:
    from spec.errors import InvalidParams
    from spec.params import AuditReadParams
    from spec.protocol import AUDIT_MAX_LIMIT

    assert AuditReadParams.from_args(0, 100) == AuditReadParams(0, 100)
    assert AuditReadParams.from_args(5.0, 10.0) == AuditReadParams(5, 10)  # JSON has one number type
    assert AuditReadParams.from_args(3, 0).limit == 1  # the limit is clamped, as before
    assert AuditReadParams.from_args(3, 10**9).limit == AUDIT_MAX_LIMIT
    for after_seq, limit in ((None, 1), ("1", 1), (-1, 1), (True, 1), (0.5, 1), (0, None), (0, "5"), (0, [])):
        with pytest.raises(InvalidParams):
            AuditReadParams.from_args(after_seq, limit)
