"""bench/mcp_bench.py runs end to end (tiny sizes): ours beside both references, with CPU per call.

Not a timed test: it asserts that every row has its figures, not what they are.
"""

from __future__ import annotations

from bench import mcp_bench


async def test_mcp_bench_rows_have_figures_beside_references() -> None:
    rows = await mcp_bench.run(sizes=(1, 5, 70))
    by_name = {row["scenario"]: row for row in rows}
    assert len(by_name) == len(rows) == 8
    for row in rows:
        assert row["ours"] > 0 and row["reference"] > 0, row
    throughput = by_name[f"mcp tools/call {mcp_bench.CONCURRENCY} in flight"]
    assert throughput["target"] == mcp_bench.TARGET
    assert "node" in by_name["mcp server CPU per call"]["note"]
