"""The server persists each node's audit head and flags a log that went backwards as ``rewound``.

Real processes: a server and an agent; the agent's audit log is cut while it is stopped, which only
the server's persisted head can notice (the chain that is left verifies). The flag must survive a
server restart and a node restart, show in REST, SSE and RPC, and be cleared only by an admin.
The store's rules (same seq, new hash; hostile heads) are checked on a real store too.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx2
import pytest
from websockets.asyncio.client import connect

from server.audit_heads import parse_head
from server.store import StoreError
from tests.support.engines import Database
from tests.support.procs import AgentProc, ServerProc, raw_node_socket


def _wait_sse(
    server: ServerProc, name: str, check: Callable[[dict[str, Any]], bool], timeout: float = 20
) -> dict[str, Any]:
    """The first SSE Node of *name* for which *check* holds (the stream starts with every node's state)."""
    with server.events() as stream:
        for _event, data in stream.items(deadline=time.monotonic() + timeout):
            if data.get("name") == name and check(data):
                return data
    raise TimeoutError(f"no matching event for {name}")


def _echo(server: ServerProc, node: str, n: int) -> None:
    with server.http() as http:
        for i in range(n):
            reply = http.post(f"/api/v1/nodes/{node}/tools/echo/call", json={"arguments": {"text": str(i)}})
            assert reply.status_code == 200


async def _rpc_nodes(server: ServerProc) -> list[dict[str, Any]]:
    async with connect(
        server.url.replace("http", "ws") + "/api/v1/rpc",
        additional_headers={"Authorization": f"Bearer {server.admin_token}"},
        subprotocols=["cortex.v1"],  # type: ignore[list-item]
    ) as ws:
        await ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "nodes/list", "params": {}}))
        async with asyncio.timeout(10):
            return list(json.loads(await ws.recv())["result"]["nodes"])


def test_cut_log_is_flagged_rewound_until_an_admin_acknowledges(
    server_proc: ServerProc, start_node: Callable[..., AgentProc]
) -> None:
    agent = start_node("laptop")
    _echo(server_proc, "laptop", 3)
    with server_proc.http() as http:
        audit = http.get("/api/v1/nodes/laptop/audit").json()
    head = audit["head"]
    assert head["seq"] >= 6
    node = server_proc.node("laptop")
    assert node["audit"] == {"seq": head["seq"], "hash": head["hash"], "status": "ok"}

    # Cut the tail while the agent is down: what is left is a valid chain, only shorter.
    agent.stop()
    log = agent.home / "audit.log"
    lines = log.read_text(encoding="utf-8").splitlines(keepends=True)
    log.write_text("".join(lines[:2]), encoding="utf-8")
    agent.start()
    flagged = _wait_sse(
        server_proc, "laptop", lambda n: n["status"] == "connected" and n["audit"]["status"] == "rewound"
    )
    assert flagged["audit"]["seq"] < head["seq"]

    # Sticky: new records (a higher head) and a server restart do not clear it.
    _echo(server_proc, "laptop", 4)
    with server_proc.http() as http:
        assert http.get("/api/v1/nodes/laptop/audit").status_code == 200
    assert server_proc.node("laptop")["audit"]["status"] == "rewound"
    agent.stop()
    server_proc.stop()
    server_proc.start()
    assert server_proc.node("laptop")["audit"]["status"] == "rewound"  # known before the node is back
    agent.start()
    _wait_sse(server_proc, "laptop", lambda n: n["status"] == "connected")
    assert server_proc.node("laptop")["audit"]["status"] == "rewound"
    rpc_view = next(n for n in asyncio.run(_rpc_nodes(server_proc)) if n["name"] == "laptop")
    assert rpc_view["audit"]["status"] == "rewound"

    # Who may clear it: a member of the node's workspace is forbidden, another workspace never sees it.
    url = "/api/v1/nodes/laptop/audit/acknowledge"
    with server_proc.http(server_proc.token("mia", "ws1", "member")) as http:
        refused = http.post(url)
        assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    with server_proc.http(server_proc.token("otto", "ws2", "member")) as http:
        assert http.post(url).status_code == 404
    with server_proc.http(server_proc.token("oz", "ws2", "admin")) as http:  # admins see every workspace
        done = http.post(url)
    assert done.status_code == 200 and done.json()["audit"]["status"] == "ok"
    assert server_proc.node("laptop")["audit"]["status"] == "ok"
    server_proc.stop()
    server_proc.start()
    assert server_proc.node("laptop")["audit"]["status"] == "ok"


async def test_store_rules(database: Database) -> None:
    store = await database.open()
    try:
        assert (await store.observe_audit_head("n1", 5, "a" * 64)).status == "ok"
        assert (await store.observe_audit_head("n1", 9, "b" * 64)).status == "ok"
        changed = await store.observe_audit_head("n1", 9, "c" * 64)  # same seq, another hash: rewritten
        assert changed.status == "rewound" and changed.reason
        assert (await store.observe_audit_head("n1", 12, "d" * 64)).status == "rewound"  # sticky
        assert (await store.observe_audit_head("n2", 3, None)).status == "ok"
        assert await store.acknowledge_audit("n1") is not None
        head = await store.get_audit_head("n1")
        assert head is not None and head.status == "ok"
        assert (await store.observe_audit_head("n1", 2, "e" * 64)).status == "rewound"  # went back
        for bad in (-1, True, 1.5):
            with pytest.raises(StoreError):
                await store.observe_audit_head("n3", bad, None)  # type: ignore[arg-type]
        with pytest.raises(StoreError):
            await store.observe_audit_head("n3", 1, "x" * 10_000)
        assert await store.acknowledge_audit("never-seen") is None
        assert set(await store.audit_heads()) == {"n1", "n2"}
    finally:
        await store.close()
    # Kept across a reopen (what a server restart does).
    again = await database.open()
    try:
        head = await again.get_audit_head("n1")
        assert head is not None and head.status == "rewound"
    finally:
        await again.close()


@pytest.mark.parametrize(
    "head",
    [
        None,
        [],
        "x",
        {"seq": "5"},
        {"seq": -1},
        {"seq": True},
        {"seq": 1, "hash": 5},
        {"seq": 1, "hash": "h" * 129},
    ],
)
def test_hostile_heads_are_ignored(head: Any) -> None:
    assert parse_head(head) is None


async def test_audit_read_failures_are_clear_errors(server_proc: ServerProc) -> None:
    """A node that fails (or garbles) audit/read gives the REST caller a JSON 502, never a 500."""
    ws = await raw_node_socket(server_proc, "liar")
    answers = iter(
        [
            {"error": {"code": -32603, "message": "disk on fire"}},
            {"result": {"records": "not a list", "head": {"seq": 1, "hash": "h"}}},
            {"result": "nonsense"},
        ]
    )
    served = threading.Event()

    async def node() -> None:
        async for raw in ws:
            message = json.loads(raw)
            method, ident = message.get("method"), message.get("id")
            if ident is None:
                continue
            if method == "initialize":
                result: Any = {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {"tools": {"listChanged": True}},
                    "serverInfo": {"name": "liar", "version": "0"},
                    "node": {"hostname": "h", "os": "linux", "arch": "x", "agent_version": "0"},
                    "audit_head": {"seq": 0, "hash": None},
                }
                await ws.send(json.dumps({"jsonrpc": "2.0", "id": ident, "result": result}))
            elif method == "tools/list":
                await ws.send(json.dumps({"jsonrpc": "2.0", "id": ident, "result": {"tools": []}}))
                served.set()
            elif method == "audit/read":
                await ws.send(json.dumps({"jsonrpc": "2.0", "id": ident, **next(answers)}))
            else:
                await ws.send(json.dumps({"jsonrpc": "2.0", "id": ident, "result": {}}))

    task = asyncio.create_task(node())
    try:
        await asyncio.to_thread(server_proc.wait_status, "liar", "connected")
        async with httpx2.AsyncClient(
            base_url=server_proc.url,
            headers={"Authorization": f"Bearer {server_proc.admin_token}"},
            timeout=20,
        ) as http:
            for _ in range(3):
                response = await http.get("/api/v1/nodes/liar/audit")
                assert response.status_code == 502, response.text
                assert response.json()["error"] == "audit_read_failed"
            bad = await http.get("/api/v1/nodes/liar/audit", params={"after": "-5"})
            assert bad.status_code == 400
    finally:
        task.cancel()
        await ws.close()


async def _rpc_answer(server: ServerProc, method: str, params: Any) -> dict[str, Any]:
    """One request on the client RPC, as the admin, and its answer."""
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    url = server.url.replace("http", "ws") + "/api/v1/rpc"
    async with connect(url, additional_headers=headers, subprotocols=["cortex.v1"]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"jsonrpc": "2.0", "id": 7, "method": method, "params": params}))
        answer: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 10))
    return answer


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        (["n", None], "after_seq must be an integer >= 0, not null"),
        (["n", "abc"], "after_seq must be an integer >= 0, not a string"),
        ({"node": "n", "after_seq": -1}, "after_seq must be an integer >= 0, not -1"),
        ({"node": "n", "after_seq": True}, "after_seq must be an integer >= 0, not a boolean"),
        (["n", 0, None], "limit must be an integer, not null"),
        ({"node": "n", "limit": "q"}, "limit must be an integer, not a string"),
        ({"node": "n", "limit": 2.5}, "limit must be an integer, not 2.5"),
    ],
)
async def test_audit_read_with_bad_numbers_is_invalid_params(
    server_proc: ServerProc, params: Any, problem: str
) -> None:
    """`audit/read` on the client RPC checks its numbers: a string or null is -32602 with what was wrong,
    not -32603 with a traceback in the server's log (what the framing fuzzer found)."""
    answer = await _rpc_answer(server_proc, "audit/read", params)
    assert answer["error"] == {"code": -32602, "message": problem}
    assert "Traceback" not in "".join(server_proc.output)


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"node": "n", "name": "echo", "timeout_s": "soon"}, "timeout_s must be a positive number"),
        ({"node": "n", "name": "echo", "timeout_s": None, "arguments": [1]}, "arguments must be an object"),
        (["n", "echo", {}, -1], "timeout_s must be a positive number"),
        (["n", "echo", {}, True], "timeout_s must be a positive number"),
    ],
)
async def test_tools_call_with_a_bad_timeout_or_arguments_is_invalid_params(
    server_proc: ServerProc, params: Any, problem: str
) -> None:
    """The client RPC's `tools/call` checks `timeout_s` and `arguments` as REST does (there: 400)."""
    answer = await _rpc_answer(server_proc, "tools/call", params)
    assert answer["error"] == {"code": -32602, "message": problem}
    assert "Traceback" not in "".join(server_proc.output)


@pytest.mark.parametrize(
    ("method", "params", "problem"),
    [
        ("tools/list", {"node": {}}, "node must be a string, not an object"),
        ("tools/list", [[1]], "node must be a string, not an array"),
        ("tools/call", {"node": ["n"], "name": "echo"}, "node must be a string, not an array"),
        ("tools/call", {"node": "n", "name": {"x": 1}}, "the tool name must be a string, not an object"),
        ("tools/call", ["n", [], {}], "the tool name must be a string, not an array"),
        ("audit/read", {"node": {"$ref": "#"}}, "node must be a string, not an object"),
        ("tools/list", {"node": 5}, "node must be a string, not 5"),
    ],
)
async def test_a_node_or_tool_name_that_is_not_a_string_is_invalid_params(
    server_proc: ServerProc, method: str, params: Any, problem: str
) -> None:
    """A node or tool name of another JSON type is -32602 naming it (found by a typed fuzz of the client
    RPC: a list or an object failed the registry's dict lookup, -32603 and a traceback in the log)."""
    answer = await _rpc_answer(server_proc, method, params)
    assert answer["error"] == {"code": -32602, "message": problem}
    assert "Traceback" not in "".join(server_proc.output)
