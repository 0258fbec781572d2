"""The cluster benchmark gives each row a figure beside a reference (small N; figures not judged)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench.cluster_bench import run


@pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server absent (apt-get install redis-server)"
)
async def test_cluster_rows_have_figures_beside_references(tmp_path: Path) -> None:
    rows = await run(True, tmp_path, seq_calls=30, load_calls=200, checked_calls=500)
    by_name = {row.scenario: row for row in rows}
    assert len(rows) == 5
    for row in rows:
        assert row.ours is not None and row.reference is not None, row
    checked = by_name["cluster: 500 cross-replica calls lost or crossed"]
    assert checked.ours == 0
