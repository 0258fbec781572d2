"""In-process tier: `tools/list_changed` goes out only when what a node adds to the tool list changes.

A registry event about a node that is not connected — an enrollment, or an audit-head update a replica
hears from the database feed before it hears of the connection from Redis — changes nobody's tool list,
so no session is told to list again (before, such a notice came first, and a client that listed at once
did not find the node's tools: tests/test_cluster_e2e.py saw it now and then).
"""

from __future__ import annotations

from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler

from tests.inprocess.conftest import NODE, WORKSPACE, InProcess


async def test_no_list_changed_for_a_node_that_is_not_connected(wired: InProcess) -> None:
    mcp = wired.state.mcp
    bus = InMemorySubscriptionBus()
    heard: list[object] = []
    bus.subscribe(heard.append)
    mcp._listeners["*"] = (bus, ListenHandler(bus))

    idle = wired.state.registry.learn("idle", WORKSPACE)  # enrolled, never connected
    await mcp._on_registry_event("node.updated", idle)
    assert heard == []

    connected = wired.state.registry.get(NODE)
    assert connected is not None
    mcp._seen.pop(NODE, None)  # as if its connection were news: its tools join the list
    await mcp._on_registry_event("node.connected", connected)
    assert [type(event).__name__ for event in heard] == ["ToolsListChanged", "ResourcesListChanged"]
