"""server.approvals: what the server keeps of a node's waiting approvals (schema-checked, bounded)."""

from __future__ import annotations

from typing import Any

from server import approvals
from server.registry import NodeEntry


def item(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"id{i}",
        "request_id": i,
        "tool": "shell_exec",
        "arguments": {"command": "ls"},
        "caller": {"sub": "alice", "ws": "ws1"},
        "since": "2026-12-01T00:00:00Z",
        **extra,
    }


def test_a_good_list_is_kept_and_a_stale_one_ignored() -> None:
    entry = NodeEntry("laptop", "ws1")
    assert approvals.observe(entry, {"seq": 2, "approvals": [item(1), item(2)]})
    assert [a["id"] for a in entry.approvals] == ["id1", "id2"]
    assert not approvals.observe(entry, {"seq": 1, "approvals": []})  # older than what we hold
    assert len(entry.approvals) == 2
    approvals.clear(entry)
    assert entry.approvals == []


def test_hostile_lists_are_refused_or_cut() -> None:
    entry = NodeEntry("laptop", "ws1")
    for bad in (
        None,
        [],
        {"seq": "1", "approvals": []},
        {"seq": 1, "approvals": "x"},
        {"seq": 1, "approvals": [item(1, id="x" * 1000)]},
        {"seq": 1, "approvals": [item(1, caller="root")]},
        {"seq": 1, "approvals": [item(i) for i in range(10_000)]},
    ):
        assert not approvals.observe(entry, bad), bad
    assert entry.approvals == []
    assert approvals.observe(
        entry, {"seq": 1, "approvals": [item(1, arguments={"x": "y" * 100_000}, extra=1)]}
    )
    (kept,) = entry.approvals
    assert isinstance(kept["arguments"], str) and len(kept["arguments"]) < 100
    assert "extra" not in kept  # only the fields the protocol defines
