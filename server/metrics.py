"""Prometheus metrics of one server process, built per app (never module-global collectors).

Aggregates only: no node names or user names as label values. The `tool` label takes only the names of
the manifest's tools (anything else a node declares counts as ``other``), so a node cannot put its
name, or an unbounded number of series, into the exposition.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from spec.manifest import load_manifest

__all__ = ["Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.nodes_connected = Gauge(
            "cortex_nodes_connected", "Nodes with a live tunnel", registry=self.registry
        )
        self.calls = Counter(
            "cortex_tool_calls", "Tool calls by tool and outcome", ["tool", "outcome"], registry=self.registry
        )
        self.latency = Histogram(
            "cortex_tool_call_seconds",
            "Tool call latency through the server",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120),
            registry=self.registry,
        )
        self.in_flight = Gauge("cortex_tool_calls_in_flight", "Tool calls in flight", registry=self.registry)
        # Counted in a plain int (one event loop thread) and read only when scraped: no lock per call.
        self._in_flight = 0
        self.in_flight.set_function(lambda: self._in_flight)
        self.handshakes = Counter(
            "cortex_node_handshakes", "Accepted node handshakes", registry=self.registry
        )
        self.refusals = Counter(
            "cortex_node_refusals", "Refused node handshakes by reason", ["reason"], registry=self.registry
        )

        self._tools = frozenset(t["name"] for t in load_manifest())
        # `labels()` parses its arguments on every use; the hot path reuses each child instead.
        self._call_children: dict[tuple[str, str], Any] = {}
        self._refusal_children: dict[str, Any] = {}

    def node_connected(self) -> None:
        self.nodes_connected.inc()

    def node_disconnected(self) -> None:
        self.nodes_connected.dec()

    def handshake(self) -> None:
        self.handshakes.inc()

    def refused(self, reason: str) -> None:
        child = self._refusal_children.get(reason)
        if child is None:
            child = self._refusal_children[reason] = self.refusals.labels(reason=reason)
        child.inc()

    def call_started(self) -> None:
        self._in_flight += 1

    def call_finished(self, tool: str, outcome: str, seconds: float) -> None:
        self._in_flight -= 1
        key = (tool if tool in self._tools else "other", outcome)
        child = self._call_children.get(key)
        if child is None:
            child = self._call_children[key] = self.calls.labels(tool=key[0], outcome=outcome)
        child.inc()
        self.latency.observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
