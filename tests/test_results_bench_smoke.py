"""A tiny run of bench/results_bench.py (5 MB, one round) so the benchmark cannot rot.

Not a timed test: it asserts the rows have figures beside references, not what they are.
"""

from __future__ import annotations

from pathlib import Path

from bench import results_bench


async def test_results_bench_rows_have_figures(tmp_path: Path) -> None:
    rows = await results_bench._run(True, tmp_path, size_mb=5, rounds=1)
    throughput, echo = rows
    assert throughput["unit"] == "MB/s" and throughput["ours"] > 0 and throughput["reference"] > 0
    assert "reconnects 0" in throughput["note"]
    assert echo["unit"] == "ms" and echo["ours"] > 0
