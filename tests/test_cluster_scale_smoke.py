"""The cluster scale benchmark at a tiny size: its rows, and fail-over of a replica killed with -9.

Real processes (redis-server, three replicas, HAProxy, a `bench.simnode` fleet that reconnects with the
agent's full-jitter backoff); the figures themselves belong to `make bench`, only the outcome is checked.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench import cluster_scale_bench

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None or shutil.which("haproxy") is None,
    reason="needs redis-server and haproxy (apt-get install, as .ci/run does)",
)


async def test_every_replica_lists_every_node_and_a_killed_replicas_nodes_come_back(tmp_path: Path) -> None:
    rows = await cluster_scale_bench.run(True, tmp_path, per_replica=10, failover=10)
    by_unit = {(r.scenario.split(",")[0], r.unit): r for r in rows}
    listed = by_unit[("cluster: 3 replicas x 10 nodes", "nodes")]
    assert listed.ours == listed.reference == 30.0, listed
    assert "names listed twice: 0" in listed.note
    failover = next(r for r in rows if "killed -9" in r.scenario)
    assert failover.ours is not None and 0 < failover.ours <= cluster_scale_bench.FAILOVER_TARGET_S
    survivors = next(r for r in rows if "on each survivor" in r.scenario)
    assert survivors.ours == survivors.reference == 10.0, survivors
    assert "names listed twice: 0" in survivors.note
