"""bench/store_bench.py runs end to end on a tiny N (the figures themselves are the benchmark's job)."""

from __future__ import annotations

import pytest

from bench import store_bench
from tests.support.engines import postgres_bindir


async def test_store_bench_measures_both_engines() -> None:
    if postgres_bindir() is None:
        pytest.skip("PostgreSQL binaries absent: apt-get install postgresql (as .ci/run does)")
    results = await store_bench.run(5)
    assert results is not None and set(results) == {"sqlite", "postgresql"}
    for figures in results.values():
        assert set(figures) == {"verify_p50_us", "verify_64_per_s", "revoke_follow_p50_us"}
        assert all(value > 0 for value in figures.values())
