"""Store benchmark: the shared PostgreSQL store beside the embedded SQLite one, same operations, same run.

Where it sits: outside the product, beside the other benchmarks; ``python3 -m bench.store_bench``
(``--quick`` for a short run), and a module of ``python3 -m bench``. It starts a real PostgreSQL 15 in a
temporary directory (`tests.support.engines.PostgresServer`; skipped with a note when it is absent) and
times, through the async `server.store.Store` interface both engines implement:

- a credential check (`verify_credential`: the ``/oauth/token`` hot path), sequential p50;
- the same with 64 in flight (calls/s): what a wave of reconnecting nodes asks of the store;
- a node revocation and a follower's ``revocations_after`` read that sees it (p50): the store's part of
  revocation delivery.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from server.store import Store
from server.stores import open_store

__all__ = ["main", "run"]


async def _p50_us(calls: int, fn: Any) -> float:
    samples = []
    for i in range(calls):
        started = time.perf_counter()
        await fn(i)
        samples.append((time.perf_counter() - started) * 1e6)
    return statistics.median(samples)


async def _measure(store: Store, n: int) -> dict[str, float]:
    names = [f"bench-{i}" for i in range(n + 1)]
    credentials = {name: await store.enroll_node(name, "bench") for name in names}
    first = names[0]
    for _ in range(20):  # warm-up: pool connections, prepared plans, page cache
        await store.verify_credential(first, credentials[first])
    verify = await _p50_us(n, lambda i: store.verify_credential(names[i], credentials[names[i]]))
    flight, started = 64, time.perf_counter()
    total = n * 4
    queue = iter(range(total))

    async def worker() -> None:
        for i in queue:
            name = names[i % n]
            assert await store.verify_credential(name, credentials[name]) is not None

    await asyncio.gather(*(worker() for _ in range(flight)))
    rate = total / (time.perf_counter() - started)
    last = await store.last_revocation_seq()

    async def revoke_and_follow(i: int) -> None:
        nonlocal last
        assert await store.revoke_node(names[i])
        rows = await store.revocations_after(last)
        assert rows and rows[-1][1] == names[i]
        last = rows[-1][0]

    revoke = await _p50_us(n, revoke_and_follow)
    return {"verify_p50_us": verify, "verify_64_per_s": rate, "revoke_follow_p50_us": revoke}


async def run(n: int = 300) -> dict[str, dict[str, float]] | None:
    """Figures per engine, or None when PostgreSQL is not installed."""
    from tests.support.engines import PostgresServer, postgres_bindir

    bindir = postgres_bindir()
    if bindir is None:
        return None
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="cortex-store-bench-") as tmp, PostgresServer(bindir) as pg:
        for engine, url in (("sqlite", None), ("postgresql", pg.create_database())):
            store = await open_store(url, Path(tmp) / engine)
            try:
                results[engine] = await _measure(store, n)
            finally:
                await store.close()
    return results


def main(quick: bool = False) -> list[dict[str, Any]]:
    """PostgreSQL store figures beside SQLite's, as rows for `python3 -m bench`."""
    results = asyncio.run(run(60 if quick else 300))
    if results is None:
        return [
            {"scenario": "store: PostgreSQL vs SQLite", "ours": None, "reference": None, "unit": "",
             "note": "PostgreSQL not installed: skipped"}
        ]  # fmt: skip
    pg, lite = results["postgresql"], results["sqlite"]
    for engine, figures in results.items():
        print(engine, {k: round(v, 1) for k, v in figures.items()})
    note = "PostgreSQL 15 on loopback (-F) vs SQLite WAL (synchronous=FULL), same run"

    def row(scenario: str, key: str, unit: str, higher: bool) -> dict[str, Any]:
        return {
            "scenario": f"store: {scenario}, PostgreSQL vs SQLite",
            "ours": pg[key],
            "reference": lite[key],
            "unit": unit,
            "higher_is_better": higher,
            "note": note,
        }

    return [
        row("credential check p50 (/oauth/token)", "verify_p50_us", "µs", False),
        row("credential checks, 64 in flight", "verify_64_per_s", "calls/s", True),
        row("revoke + follower read p50", "revoke_follow_p50_us", "µs", False),
    ]


if __name__ == "__main__":
    main("--quick" in sys.argv)
