"""The headline benchmark's code path (bench/agent_bench.py) at a tiny N, so it cannot rot."""

from __future__ import annotations

from pathlib import Path

from bench.agent_bench import fsync_cost_us, run
from bench.harness import raise_fd_limit


async def test_agent_bench_rows_and_header(tmp_path: Path) -> None:
    raise_fd_limit()
    rows, header = await run(True, tmp_path, trials=1, seq_calls=5, load_calls=70)
    names = [r.scenario for r in rows]
    assert any("tmpfs" in n for n in names) or any("n/a" in h for h in header)
    assert any("real disk" in n for n in names)
    assert all(r.ours is not None and r.reference is not None for r in rows)
    assert "fsync" in header[0]


def test_fsync_cost_is_measured(tmp_path: Path) -> None:
    assert fsync_cost_us(tmp_path, n=5) > 0
