"""PostgreSQL-only store behaviour: what replicas sharing one database rely on beyond the common suite
(tests/test_store.py runs that suite on both engines).

Revocation sequences must commit in order (`server.stores.postgres` rule 3): a follower reading
``seq > last`` would otherwise skip a row that got its number first but committed last.
"""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from server.schema import SCHEMA_VERSION
from server.store import Store, StoreError, StoreUnavailable
from server.stores import open_store
from server.stores.postgres import PostgresStore
from server.stores.postgres_schema import ENROLLMENTS_LOCK, REVOCATIONS_LOCK

_HOLD = 4242  # an advisory lock the test holds to stall one revocation between its INSERT and COMMIT


async def _wait_for(predicate, what: str) -> None:  # type: ignore[no-untyped-def]
    for _ in range(500):  # bounded: 500 times 10 ms
        if await predicate():
            return
        await asyncio.sleep(0.01)
    raise TimeoutError(what)


async def _late_commit_is_not_skipped(
    pg_url: str, table: str, column: str, lock: int, action, follow
) -> None:  # type: ignore[no-untyped-def]
    """*action(store, name)* for "slow" stalls after its row (and number) exist, before COMMIT; then
    *action* for "fast"; a follower reading by number during the stall must still see both in the end."""
    store = await PostgresStore.open(pg_url)
    admin = await psycopg.AsyncConnection.connect(pg_url, autocommit=True)
    try:
        await admin.execute(
            "CREATE FUNCTION stall() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            f" IF NEW.{column} = 'slow' THEN PERFORM pg_advisory_lock({_HOLD});"
            f" PERFORM pg_advisory_unlock({_HOLD});"
            " END IF; RETURN NEW; END $$"
        )
        await admin.execute(
            f"CREATE TRIGGER stall AFTER INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION stall()"
        )
        await admin.execute("SELECT pg_advisory_lock(%s)", (_HOLD,))

        async def waiting_on(key: int) -> bool:
            cur = await admin.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND ((classid::bigint << 32) | objid::bigint) = %s",
                (key,),
            )
            row = await cur.fetchone()
            return bool(row and row[0])

        slow = asyncio.create_task(action(store, "slow"))
        await _wait_for(lambda: waiting_on(_HOLD), "the slow write did not reach its stall")
        fast = asyncio.create_task(action(store, "fast"))

        async def fast_done_or_queued() -> bool:
            return fast.done() or await waiting_on(lock)

        await _wait_for(fast_done_or_queued, "the fast write neither finished nor queued")
        seen = await follow(store, 0)  # a follower's read while "slow" is still open
        last = max((seq for seq, _ in seen), default=0)
        await admin.execute("SELECT pg_advisory_unlock(%s)", (_HOLD,))
        async with asyncio.timeout(30):
            await slow
            await fast
        later = await follow(store, last)
        assert sorted(name for _, name in seen + later) == ["fast", "slow"]
    finally:
        await admin.close()
        await store.close()


async def test_a_revocation_that_commits_late_is_not_skipped_by_a_follower(pg_url: str) -> None:
    setup = await PostgresStore.open(pg_url)
    for name in ("slow", "fast"):
        await setup.enroll_node(name, "team")
    await setup.close()

    async def revoke(store: PostgresStore, name: str) -> None:
        assert await store.revoke_node(name)

    await _late_commit_is_not_skipped(
        pg_url, "revocations", "node", REVOCATIONS_LOCK, revoke, PostgresStore.revocations_after
    )


async def test_an_enrollment_that_commits_late_is_not_skipped_by_a_follower(pg_url: str) -> None:
    async def enroll(store: PostgresStore, name: str) -> None:
        await store.enroll_node(name, "team")

    async def follow(store: PostgresStore, seq: int) -> list[tuple[int, str]]:
        return [(n, record.name) for n, record in await store.enrollments_after(seq)]

    await (await PostgresStore.open(pg_url)).close()  # the schema first: the trigger needs the table
    await _late_commit_is_not_skipped(pg_url, "nodes", "name", ENROLLMENTS_LOCK, enroll, follow)


async def test_replicas_starting_together_migrate_once_and_share_one_key(pg_url: str) -> None:
    stores: list[Store] = list(await asyncio.gather(*(PostgresStore.open(pg_url) for _ in range(6))))
    try:
        keys = await asyncio.gather(*(s.load_or_create_signing_key() for s in stores))
        assert len({k.kid for k in keys}) == 1
        jwks_sets = [{k.kid for k in await s.signing_keys()} for s in stores]
        assert all(j == jwks_sets[0] for j in jwks_sets)
    finally:
        for s in stores:
            await s.close()
    async with await psycopg.AsyncConnection.connect(pg_url) as conn:
        rows = await (await conn.execute("SELECT version FROM schema_version")).fetchall()
    assert len(rows) == 1


async def test_every_active_key_is_listed_on_every_replica(pg_url: str) -> None:
    """A second key (made by a rotation, say) is published by every store; the newest one signs."""
    from joserfc.jwk import OKPKey

    a, b = await PostgresStore.open(pg_url), await PostgresStore.open(pg_url)
    try:
        first = await a.load_or_create_signing_key()
        newer = OKPKey.generate_key("Ed25519", auto_kid=True)
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
            import json
            import time

            await conn.execute(
                "INSERT INTO signing_keys (kid, jwk, created_at) VALUES (%s, %s, %s)",
                (newer.kid, json.dumps(newer.as_dict(private=True)), time.time() + 1),
            )
        assert [k.kid for k in await b.signing_keys()] == [newer.kid, first.kid]
        assert (await b.load_or_create_signing_key()).kid == newer.kid
        assert [k.kid for k in await a.signing_keys()] == [newer.kid, first.kid]
    finally:
        await a.close()
        await b.close()


async def test_an_unreachable_database_is_unavailable_and_the_password_never_shown(postgres) -> None:  # type: ignore[no-untyped-def]
    from tests.support.procs import free_port

    url = f"postgresql://cortex:s3cret-pw@127.0.0.1:{free_port()}/nothing"
    with pytest.raises(StoreUnavailable) as caught:
        await PostgresStore.open(url, connect_timeout=1)
    assert "s3cret-pw" not in str(caught.value)
    assert "***" in str(caught.value)


async def test_a_closed_database_makes_calls_unavailable_then_recovers(postgres, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    store = await PostgresStore.open(pg_url, pool_timeout=2)
    try:
        async with await psycopg.AsyncConnection.connect(postgres.url(), autocommit=True) as conn:
            name = pg_url.rsplit("/", 1)[1]
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            await conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
            )
            try:
                with pytest.raises(StoreUnavailable):
                    for _ in range(3):  # the pool may hand out a connection before it notices
                        await store.list_nodes()
            finally:
                await conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        for _ in range(50):  # bounded: the pool reconnects on its own
            try:
                assert await store.list_nodes() == []
                break
            except StoreUnavailable:
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("the store did not recover after the database came back")
    finally:
        await store.close()


async def test_open_store_picks_postgresql_by_url(pg_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = await open_store(pg_url, tmp_path / "unused")
    try:
        assert store.engine == "postgresql"
        assert not (tmp_path / "unused").exists()  # nothing written to the data dir
    finally:
        await store.close()


@pytest.mark.parametrize(
    "url", ["mysql://u:pw@h/db", "sqlite:///x.db", "http://h", "postgresql:/nohost", "x"]
)
async def test_other_urls_are_a_clear_error_without_the_password(url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(StoreError) as caught:
        await open_store(url, tmp_path)
    assert "postgresql://" in str(caught.value)
    assert "pw@" not in str(caught.value)


async def test_replica_processes_starting_at_once_on_a_fresh_database_agree(pg_url: str) -> None:
    """Separate processes (as replicas are), all opening an empty database at the same moment."""
    import os
    import sys

    from tests.support.procs import REPO

    code = (
        "import asyncio, sys\n"
        "from server.stores.postgres import PostgresStore\n"
        "async def main():\n"
        "    s = await PostgresStore.open(sys.argv[1])\n"
        "    print((await s.load_or_create_signing_key()).kid, flush=True)\n"
        "    await s.close()\n"
        "asyncio.run(main())\n"
    )
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CORTEX_")}, "PYTHONPATH": str(REPO)}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            code,
            pg_url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        for _ in range(4)
    ]
    async with asyncio.timeout(120):
        outputs = [await p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err for _, err in outputs]
    assert len({out.strip() for out, _ in outputs}) == 1
    async with await psycopg.AsyncConnection.connect(pg_url) as conn:
        assert await (await conn.execute("SELECT version FROM schema_version")).fetchall() == [
            (SCHEMA_VERSION,)
        ]
        assert await (await conn.execute("SELECT count(*) FROM signing_keys")).fetchone() == (1,)
