"""A tiny run of every benchmark code path (very small N) so the bench suite cannot rot.

Not a timed test: it asserts that each scenario produces its rows with figures, not what they are.
"""

from __future__ import annotations

from pathlib import Path

from bench import roundtrip, scale
from bench.__main__ import collect_extra, format_table
from bench.harness import Row, raise_fd_limit


async def test_roundtrip_rows_have_figures_beside_references(tmp_path: Path) -> None:
    rows = await roundtrip.run(True, tmp_path, seq_calls=5, load_calls=70)
    by_name = {r.scenario: r for r in rows}
    for name in (
        "sequential echo p50 (real agent)",
        "sequential echo p50 (sim node)",
        "64 in flight, 1 node (real agent) calls/s",
        "64 in flight, 10 sim nodes calls/s",
        "64 in flight, 100 sim nodes calls/s",
    ):
        row = by_name[name]
        assert row.ours is not None and row.ours > 0, name
        assert row.reference is not None and row.reference > 0, name
        assert row.ratio is not None
    # fs_read and the screenshot are rows either way (n/a when the agent lacks the tools)
    assert any(r.scenario.startswith("fs_read 1 MiB") for r in rows)
    assert any(r.scenario.startswith("full-page screenshot") for r in rows)
    table = format_table(rows)
    assert "sequential echo p50 (real agent)" in table and "ratio" in table


async def test_scale_storm_and_idle_rows(tmp_path: Path) -> None:
    raise_fd_limit()
    rows = await scale.run(True, tmp_path, storm_n=20, idle_counts=[10, 20], window=0.5, heartbeat=0.5)
    names = [r.scenario for r in rows]
    assert names[0].startswith("connection storm, 20 nodes")
    assert rows[0].ours is not None and rows[0].ours > 0 and rows[0].reference
    idle = [r for r in rows if r.scenario.startswith("idle nodes held: 20")]
    assert len(idle) == 2
    rss, cpu = idle
    assert rss.unit == "KB" and rss.ours is not None
    assert cpu.unit == "% core" and cpu.ours is not None and cpu.ours >= 0
    assert "pings/s" in cpu.note and "dropped" not in cpu.note


def test_extra_modules_are_collected_or_skipped_with_a_note() -> None:
    rows, notes, ran = collect_extra(True, names=("no_such_bench", "auth_bench"))
    assert ran == {"auth_bench"} and rows and rows[0].unit == "verifications/s"
    assert any("no_such_bench" in n and "not present" in n for n in notes)
    table = format_table([Row("x", None, 2.0, "ms", note="n/a")])
    assert "n/a" in table
