"""Backpressure: a node flooding progress to a caller that stopped reading never stalls the node's link
(other callers' calls on that node keep answering) and never grows the server without bound."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from sdk import AsyncClient
from tests.support.procs import ServerProc, raw_node_socket

CHUNK = "x" * 65536
FLOOD = 3000  # progress notifications of 64 KiB each: ~190 MiB if nothing were dropped


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def _flooding_node(ws: ClientConnection, flooded: asyncio.Event) -> None:
    """A node whose `flood` tool streams progress as fast as the socket takes it; `echo` answers at once."""
    tool = {"name": "echo", "inputSchema": {"type": "object"}}
    flood_tool = {"name": "flood", "inputSchema": {"type": "object"}}
    tasks: set[asyncio.Future[None]] = set()
    async for frame in ws:
        msg: dict[str, Any] = json.loads(frame)
        method, id_ = msg.get("method"), msg.get("id")
        if id_ is None:
            continue
        if method == "initialize":
            result: Any = {
                "protocolVersion": "2025-11-25",
                "capabilities": {"tools": {"listChanged": True}},
                "serverInfo": {"name": "flood", "version": "0"},
                "node": {"hostname": "h", "os": "Linux", "arch": "x86_64", "agent_version": "0"},
                "audit_head": {"seq": 0, "hash": "0" * 64},
            }
        elif method == "tools/list":
            result = {"tools": [tool, flood_tool]}
        elif method == "tools/call" and msg["params"]["name"] == "flood":
            token = msg["params"]["_meta"]["progressToken"]

            async def flood(id_: Any = id_, token: Any = token) -> None:
                for i in range(FLOOD):
                    params = {"progressToken": token, "progress": i, "message": CHUNK}
                    await ws.send(
                        json.dumps({"jsonrpc": "2.0", "method": "notifications/progress", "params": params})
                    )
                flooded.set()
                await ws.send(
                    json.dumps({"jsonrpc": "2.0", "id": id_, "result": {"content": [], "isError": False}})
                )

            tasks.add(asyncio.ensure_future(flood()))
            continue
        elif method == "tools/call":
            result = {
                "content": [{"type": "text", "text": msg["params"]["arguments"]["text"]}],
                "isError": False,
            }
        else:
            result = {}
        await ws.send(json.dumps({"jsonrpc": "2.0", "id": id_, "result": result}))


async def test_a_caller_that_stops_reading_does_not_stall_the_node(server_proc: ServerProc) -> None:
    assert server_proc.proc is not None
    ws = await raw_node_socket(server_proc, "flooder")
    flooded = asyncio.Event()
    node = asyncio.ensure_future(_flooding_node(ws, flooded))
    token = server_proc.token()
    await asyncio.to_thread(server_proc.wait_status, "flooder", "connected", 20)
    rss_before = _rss_mib(server_proc.proc.pid)
    slow = await connect(
        server_proc.url.replace("http", "ws") + "/api/v1/rpc",
        additional_headers={"Authorization": f"Bearer {token}"},
        subprotocols=["cortex.v1"],  # type: ignore[list-item]
        max_queue=1,
        max_size=None,
    )
    call = {"node": "flooder", "name": "flood", "arguments": {}, "_meta": {"progressToken": "p"}}
    await slow.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": call}))
    try:
        async with AsyncClient(server_proc.url, token=token) as client:
            worst = 0.0
            async with asyncio.timeout(60):
                await flooded.wait()  # the node sent everything: the server kept reading it
                for i in range(20):
                    started = time.monotonic()
                    assert (await client.call("flooder", "echo", {"text": str(i)})).text == str(i)
                    worst = max(worst, time.monotonic() - started)
        assert worst < 2.0
        assert _rss_mib(server_proc.proc.pid) - rss_before < 120
    finally:
        await slow.close()
        node.cancel()
        await ws.close()
