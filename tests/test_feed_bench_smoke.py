"""bench/feed_bench.py still runs: both of its measurements, tiny, against a real PostgreSQL and SQLite."""

from __future__ import annotations

from bench import feed_bench


async def test_feed_bench_measures_both_feeds(pg_url: str) -> None:
    ours = await feed_bench._postgres_latencies(pg_url, 3, 2)
    reference = await feed_bench._sqlite_latencies(2)
    assert len(ours) == 3 and len(reference) == 2
    assert all(0 <= x < 10 for x in ours + reference)
