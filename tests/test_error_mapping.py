"""Unit tier: error reasons are classes (spec.errors), decoded in one place, mapped by class.

Every reason of the contract (CONTRACT §2 HTTP errors, §4 codes) goes wire → `decode` → class →
HTTP status/code (`HTTP_ERRORS`), SDK exception (`sdk.exceptions`) and MCP sentence, and a class
raised on one side arrives as the same class on the other.
"""

from __future__ import annotations

from typing import Any

import pytest

import sdk
from sdk.exceptions import from_rpc_error
from spec import errors
from spec.peer import Peer
from tests.support.literals import literals_in

# (code, data as on the wire, the class, HTTP status, HTTP error code, SDK class): CONTRACT §2/§4/§6.
CASES: list[tuple[int, Any, type[errors.CortexRpcError], int, str, type[sdk.CortexError]]] = [
    (-32004, {"reason": "not_found"}, errors.NodeNotFound, 404, "node_not_found", sdk.NodeNotFound),
    (-32004, None, errors.NodeNotFound, 404, "node_not_found", sdk.NodeNotFound),
    (-32004, {"reason": "other"}, errors.NodeNotFound, 404, "node_not_found", sdk.NodeNotFound),
    (
        -32004,
        {"reason": "not_connected"},
        errors.NodeNotConnected,
        409,
        "node_not_connected",
        sdk.NodeNotFound,
    ),
    (-32602, {"reason": "unknown_tool"}, errors.UnknownTool, 404, "unknown_tool", sdk.InvalidArguments),
    (
        -32602,
        {"reason": "invalid_arguments", "problem": "'text' is a required property"},
        errors.InvalidArguments,
        422,
        "invalid_arguments",
        sdk.InvalidArguments,
    ),
    (
        -32602,
        "missing a required argument: 'node'",
        errors.InvalidParams,
        422,
        "invalid_arguments",
        sdk.InvalidArguments,
    ),
    (-32010, {"retryable": False}, errors.NodeDisconnected, 502, "node_disconnected", sdk.NodeDisconnected),
    (-32011, None, errors.CallTimeout, 504, "timeout", sdk.CallTimeout),
    (-32012, None, errors.Overloaded, 503, "overloaded", sdk.Overloaded),
    (-32012, {"reason": "artifact_budget"}, errors.OverArtifactBudget, 503, "overloaded", sdk.Overloaded),
    (-32800, None, errors.Cancelled, 499, "cancelled", sdk.CallCancelled),
    (-32001, None, errors.Unauthorized, 403, "forbidden", sdk.AuthError),
    (-32603, None, errors.CortexRpcError, 500, "internal", sdk.CortexError),
    (-32601, None, errors.CortexRpcError, 500, "internal", sdk.CortexError),
    (-31999, None, errors.CortexRpcError, 500, "internal", sdk.CortexError),
]


def _received(code: int, data: Any) -> errors.RpcError:
    """The error exactly as a peer core hands it over from a wire answer."""
    peer = Peer()
    id_, _ = peer.request("tools/call", {})
    error: dict[str, Any] = {"code": code, "message": "m"}
    if data is not None:
        error["data"] = data
    events = peer.receive(Peer().respond_error(id_, error))
    failure = events[0].error  # type: ignore[union-attr]
    assert failure is not None
    return failure


@pytest.mark.parametrize(("code", "data", "cls", "status", "error", "sdk_cls"), CASES)
def test_a_wire_error_decodes_to_its_class_and_maps_by_it(
    code: int,
    data: Any,
    cls: type[errors.CortexRpcError],
    status: int,
    error: str,
    sdk_cls: type[sdk.CortexError],
) -> None:
    received = _received(code, data)
    decoded = errors.decode(received)
    assert type(decoded) is cls
    assert (decoded.code, decoded.message, decoded.data) == (code, "m", data)  # nothing added or lost
    assert errors.http_error_of(received) == (status, error)
    sdk_error = from_rpc_error(received)
    assert type(sdk_error) is sdk_cls and sdk_error.code == code and sdk_error.data == data


@pytest.mark.parametrize(
    "cls", sorted({c[2] for c in CASES} - {errors.CortexRpcError}, key=lambda c: c.__name__)
)
def test_a_raised_class_arrives_as_the_same_class(cls: type[errors.CortexRpcError]) -> None:
    raised = cls("it went wrong", {"problem": "p"} if cls is errors.InvalidArguments else None)
    wire = errors.error_object(raised)
    assert wire["code"] == cls.CODE
    if cls.REASON is not None:
        assert wire["data"]["reason"] == cls.REASON
    assert type(errors.decode(_received(wire["code"], wire.get("data")))) is cls


def test_reason_classes_keep_the_contract_wire_shapes() -> None:
    assert errors.NodeNotFound("x").to_dict() == {
        "code": -32004,
        "message": "x",
        "data": {"reason": "not_found"},
    }
    assert errors.NodeNotConnected("x").data == {"reason": "not_connected"}
    assert errors.NodeDisconnected("x").to_dict() == {
        "code": -32010,
        "message": "x",
        "data": {"retryable": False},
    }
    invalid = errors.InvalidArguments("bad", {"problem": "p"})
    assert invalid.data == {"reason": "invalid_arguments", "problem": "p"} and invalid.problem == "p"
    assert errors.UnknownTool("x").data == {"reason": "unknown_tool"}
    assert errors.CallTimeout("x").to_dict() == {"code": -32011, "message": "x"}
    assert isinstance(errors.NodeNotFound("x"), errors.RpcError)  # every `except RpcError` still holds


def test_every_class_has_an_http_row_and_an_sdk_class() -> None:
    from sdk import exceptions as sdk_exceptions

    classes = [errors.CortexRpcError]
    for cls in classes:
        classes.extend(cls.__subclasses__())
    for cls in classes:
        assert errors.lookup(errors.HTTP_ERRORS, cls("m"))[0] in {403, 404, 409, 422, 499, 500, 502, 503, 504}
        assert issubclass(errors.lookup(sdk_exceptions._BY_CLASS, cls("m")), sdk.CortexError)


def test_mcp_sentences_are_chosen_by_class() -> None:
    from server.mcp import tool_error_text

    texts = {
        cls: tool_error_text(errors.decode(_received(code, data)), "laptop", "echo")
        for code, data, cls, *_ in CASES
    }
    assert "not connected" in texts[errors.NodeNotConnected]
    assert "no node named" in texts[errors.NodeNotFound]
    assert "'text' is a required property" in texts[errors.InvalidArguments]
    assert "has no tool" in texts[errors.UnknownTool]
    assert "disconnected" in texts[errors.NodeDisconnected]
    generic = "echo on node 'laptop' failed: m"
    assert (
        texts[errors.InvalidParams] == texts[errors.Unauthorized] == texts[errors.CortexRpcError] == generic
    )
    own = {
        cls: text for cls, text in texts.items() if text != generic and cls is not errors.OverArtifactBudget
    }
    assert len(set(own.values())) == len(own) == 8  # the others: each class its own sentence


def test_reasons_are_decoded_only_in_spec() -> None:
    # A reason string anywhere else is a second decoder (or builder) of that reason.
    classes = [errors.CortexRpcError]
    for cls in classes:
        classes.extend(cls.__subclasses__())
    reasons = {cls.__dict__["REASON"] for cls in classes if cls.__dict__.get("REASON")}
    assert reasons >= {"not_found", "not_connected", "unknown_tool", "invalid_arguments", "artifact_budget"}
    found = literals_in(reasons)
    assert found == [], "decode reasons with spec.errors.decode:\n" + "\n".join(found)
