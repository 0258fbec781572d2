"""Server state (server.store, server.stores, server.admin): enrollment, hashed credentials, revocation,
the signing key — the same suite on both engines, SQLite and a real PostgreSQL (the ``database`` fixture).

"Another process" is simulated by a second store on the same state, and for real by running
``cortex-server revoke-node`` in a child process.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from server import admin
from server.auth import TokenAuthority
from server.revocation_feed import SQLiteRevocationFeed
from server.store import (
    InvalidName,
    NodeExists,
    NodeRecord,
    ServerStore,
    Store,
    StoreError,
    StoreUnavailable,
)
from server.stores.sqlite import SQLiteStore
from tests.support.engines import Database

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "server-home"


@pytest.fixture
async def store(database: Database) -> AsyncIterator[Store]:
    """The store under test, once per engine (SQLite and a real PostgreSQL)."""
    s = await database.open()
    yield s
    await s.close()


@pytest.fixture
def sqlite_store(data_dir: Path) -> Iterator[ServerStore]:
    s = ServerStore(data_dir)
    yield s
    s.close()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- enrollment and credentials (both engines) -------------------------------------------------------


async def test_enroll_then_verify_credential(store: Store) -> None:
    credential = await store.enroll_node("laptop", "team")
    assert credential.startswith("cnc_") and len(credential) >= 40
    record = await store.verify_credential("laptop", credential)
    assert isinstance(record, NodeRecord)
    assert (record.name, record.workspace, record.revoked_at) == ("laptop", "team", None)


async def test_credentials_are_unique(store: Store) -> None:
    assert await store.enroll_node("a", "team") != await store.enroll_node("b", "team")


@pytest.mark.parametrize(
    ("name", "credential_of"),
    [("laptop", "desktop"), ("nobody", "laptop"), ("laptop", None)],
)
async def test_wrong_or_unknown_credential_is_refused(
    store: Store, name: str, credential_of: str | None
) -> None:
    creds = {n: await store.enroll_node(n, "team") for n in ("laptop", "desktop")}
    laptop = creds["laptop"]
    # One character off (never the same one: a credential ending in "A" would otherwise be guessed right).
    guess = creds[credential_of] if credential_of else laptop[:-1] + ("B" if laptop.endswith("A") else "A")
    assert await store.verify_credential(name, guess) is None


@pytest.mark.parametrize("credential", ["", "cnc_", "x" * 10_000])
async def test_junk_credentials_are_refused(store: Store, credential: str) -> None:
    await store.enroll_node("laptop", "team")
    assert await store.verify_credential("laptop", credential) is None


@pytest.mark.parametrize(("name", "credential"), [(None, "x"), ("laptop", None), ("x" * 100, "cnc_x")])
async def test_non_string_or_oversized_names_are_refused(
    store: Store, name: object, credential: object
) -> None:
    await store.enroll_node("laptop", "team")
    assert await store.verify_credential(name, credential) is None  # type: ignore[arg-type]


async def test_replayed_enrollment_is_refused(store: Store) -> None:
    first = await store.enroll_node("laptop", "team")
    with pytest.raises(NodeExists):
        await store.enroll_node("laptop", "team")
    with pytest.raises(NodeExists):
        await store.enroll_node("laptop", "other-team")
    # The original credential still works and the workspace did not change.
    record = await store.verify_credential("laptop", first)
    assert record is not None and record.workspace == "team"


async def test_revoked_name_cannot_be_enrolled_again(store: Store) -> None:
    await store.enroll_node("laptop", "team")
    assert await store.revoke_node("laptop")
    with pytest.raises(NodeExists):
        await store.enroll_node("laptop", "team")


@pytest.mark.parametrize(
    "name", ["", "-laptop", "Laptop", "lap_top", "lap top", "../etc", "a" * 64, "läptop"]
)
async def test_invalid_node_names_are_refused(store: Store, name: str) -> None:
    with pytest.raises(InvalidName):
        await store.enroll_node(name, "team")
    with pytest.raises(InvalidName):
        await store.enroll_node("laptop", name)
    assert await store.list_nodes() == []


async def test_longest_valid_name(store: Store) -> None:
    name = "a" + "-" * 61 + "z"
    await store.enroll_node(name, "0")
    assert await store.get_node(name) is not None


def test_store_errors_share_a_root() -> None:
    for error in (NodeExists, InvalidName, StoreUnavailable):
        assert issubclass(error, StoreError)


async def test_two_stores_share_enrollments_and_revocations(database: Database) -> None:
    """What one process (an admin command, another replica) writes, the other reads at once."""
    a, b = await database.open(), await database.open()
    try:
        credential = await a.enroll_node("laptop", "team")
        assert await b.verify_credential("laptop", credential) is not None
        assert await b.revoke_node("laptop")
        assert await a.verify_credential("laptop", credential) is None
        assert await a.revocations_after(0) == await b.revocations_after(0)
    finally:
        await a.close()
        await b.close()


async def test_concurrent_enrollment(store: Store) -> None:
    await asyncio.gather(*(store.enroll_node(f"node-{i}", "team") for i in range(16)))
    assert len(await store.list_nodes()) == 16


async def test_concurrent_enrollment_of_one_name_has_one_winner(database: Database) -> None:
    stores = [await database.open() for _ in range(4)]
    try:
        results = await asyncio.gather(
            *(s.enroll_node("laptop", "team") for s in stores), return_exceptions=True
        )
    finally:
        for s in stores:
            await s.close()
    assert sum(isinstance(r, str) for r in results) == 1
    assert sum(isinstance(r, NodeExists) for r in results) == 3


# -- signing key (both engines) ----------------------------------------------------------------------


async def test_signing_key_survives_reopen(database: Database) -> None:
    first = await database.open()
    key = await first.load_or_create_signing_key()
    token, _ = TokenAuthority(key).mint_node_token("laptop", "team")
    await first.close()
    second = await database.open()
    try:
        again = await second.load_or_create_signing_key()
        assert again.kid == key.kid and again.is_private
        assert TokenAuthority(again).verify_node_token(token).sub == "laptop"
        assert [k.kid for k in await second.signing_keys()] == [key.kid]
    finally:
        await second.close()


async def test_stores_opening_at_once_agree_on_one_key(database: Database) -> None:
    """Replicas starting together: each creates-or-loads at the same moment; exactly one key results."""
    stores = await asyncio.gather(*(database.open() for _ in range(5)))
    try:
        keys = await asyncio.gather(*(s.load_or_create_signing_key() for s in stores))
        assert len({k.kid for k in keys}) == 1
        assert [k.kid for k in await stores[0].signing_keys()] == [keys[0].kid]
    finally:
        for s in stores:
            await s.close()


# -- queries and revocation (both engines) -----------------------------------------------------------


async def test_get_and_list_nodes(store: Store) -> None:
    await store.enroll_node("b-node", "team")
    await store.enroll_node("a-node", "team")
    await store.enroll_node("c-node", "other")
    assert [n.name for n in await store.list_nodes()] == ["a-node", "b-node", "c-node"]
    assert [n.name for n in await store.list_nodes("team")] == ["a-node", "b-node"]
    assert await store.list_nodes("nobody") == []
    node = await store.get_node("c-node")
    assert node is not None and node.workspace == "other" and node.created_at > 0
    assert await store.get_node("missing") is None


async def test_revoke_kills_the_credential(store: Store) -> None:
    credential = await store.enroll_node("laptop", "team")
    assert await store.revoke_node("laptop") is True
    assert await store.verify_credential("laptop", credential) is None
    node = await store.get_node("laptop")
    assert node is not None and node.revoked_at is not None and node.revoked
    assert await store.is_revoked("laptop") and not await store.is_revoked("missing")
    assert await store.revoke_node("laptop") is False
    assert await store.revoke_node("missing") is False


async def test_revocation_sequence(store: Store) -> None:
    assert await store.last_revocation_seq() == 0
    for name in ("a", "b", "c"):
        await store.enroll_node(name, "team")
    await store.revoke_node("a")
    await store.revoke_node("a")  # no second row for an already revoked node
    await store.revoke_node("c")
    entries = await store.revocations_after(0)
    assert [n for _, n in entries] == ["a", "c"]
    assert await store.last_revocation_seq() == entries[-1][0]
    assert await store.revocations_after(entries[0][0]) == entries[1:]
    assert await store.revocations_after(await store.last_revocation_seq()) == []


async def test_enrollment_sequence(store: Store) -> None:
    assert await store.last_enrollment_seq() == 0
    for name in ("b", "a", "c"):
        await store.enroll_node(name, "team")
    await store.revoke_node("a")
    entries = await store.enrollments_after(0)
    assert [r.name for _, r in entries] == ["b", "a", "c"]  # in enrollment order, revoked ones too
    assert entries[1][1].revoked
    seqs = [seq for seq, _ in entries]
    assert seqs == sorted(seqs) and await store.last_enrollment_seq() == seqs[-1]
    assert await store.enrollments_after(seqs[0]) == entries[1:]
    assert await store.enrollments_after(seqs[-1]) == []


async def test_user_revocation_sequence(store: Store) -> None:
    first = await store.revoke_user("alice", "team")
    second = await store.revoke_user("bob")
    assert 0 < first.seq < second.seq
    assert (second.sub, second.workspace) == ("bob", None)
    assert await store.user_revocations_after(0) == [first, second]
    assert await store.user_revocations_after(first.seq) == [second]
    for bad_sub in ("", "x" * 129, "a\nb"):
        with pytest.raises(StoreError):
            await store.revoke_user(bad_sub)
    with pytest.raises(InvalidName):
        await store.revoke_user("carol", "Bad Workspace")
    assert len(await store.user_revocations_after(0)) == 2


# -- what is written (per engine) --------------------------------------------------------------------


async def _stored_text(database: Database, store: Store) -> str:
    """Everything the engine holds for this state, as text (the files, or every table's rows)."""
    if database.url is None:
        return b"".join(p.read_bytes() for p in database.data_dir.iterdir() if p.is_file()).decode("latin-1")
    import psycopg

    async with await psycopg.AsyncConnection.connect(database.url) as conn:
        rows = await (
            await conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        ).fetchall()
        parts = []
        for (table,) in rows:
            dump = await (await conn.execute(f'SELECT t::text FROM "{table}" t')).fetchall()
            parts.extend(str(r[0]) for r in dump)
    return "\n".join(parts)


async def test_database_holds_no_plaintext_credential(database: Database) -> None:
    store = await database.open()
    credentials = [await store.enroll_node(f"node-{i}", "team") for i in range(3)]
    await store.close()
    blob = await _stored_text(database, store)
    assert "node-0" in blob  # what was read is what holds the data
    for credential in credentials:
        secret = credential.removeprefix("cnc_")
        assert secret not in blob
        assert secret[:16] not in blob


async def test_each_credential_hash_has_its_own_salt(database: Database) -> None:
    store = await database.open()
    await store.enroll_node("a", "team")
    await store.enroll_node("b", "team")
    await store.close()
    salts = set(re.findall(r"sha256\$([0-9a-f]{32})\$", await _stored_text(database, store)))
    assert len(salts) == 2


# -- files (SQLite) ----------------------------------------------------------------------------------


def test_files_are_private_even_with_a_lax_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        data_dir = tmp_path / "home"
        s = ServerStore(data_dir)
        s.enroll_node("laptop", "team")
        s.load_or_create_signing_key()
    finally:
        os.umask(old)
    try:
        assert mode(data_dir) == 0o700
        files = [p for p in data_dir.iterdir()]
        assert data_dir / "cortex.db" in files
        for path in files:
            assert mode(path) == 0o600, path
    finally:
        s.close()


def test_existing_data_dir_is_tightened(tmp_path: Path) -> None:
    data_dir = tmp_path / "home"
    data_dir.mkdir(mode=0o755)
    ServerStore(data_dir).close()
    assert mode(data_dir) == 0o700


def test_database_uses_wal(sqlite_store: ServerStore) -> None:
    assert sqlite_store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_concurrent_enrollment_from_threads(sqlite_store: ServerStore) -> None:
    errors: list[BaseException] = []

    def enroll(i: int) -> None:
        try:
            sqlite_store.enroll_node(f"node-{i}", "team")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=enroll, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(sqlite_store.list_nodes()) == 16


async def test_a_locked_sqlite_database_is_unavailable_not_a_crash(data_dir: Path) -> None:
    store = await SQLiteStore.open(data_dir)
    blocker = sqlite3.connect(data_dir / "cortex.db", isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        store.sync._db.execute("PRAGMA busy_timeout = 50")
        with pytest.raises(StoreUnavailable):
            await store.enroll_node("laptop", "team")
    finally:
        blocker.close()
        await store.close()


# -- revocation feed (both engines) ------------------------------------------------------------------


async def test_feed_sees_revocation_from_another_store(database: Database) -> None:
    server, cli = await database.open(), await database.open()
    try:
        await server.enroll_node("laptop", "team")
        seen: asyncio.Queue[str] = asyncio.Queue()

        async def on_revoked(name: str) -> None:
            await seen.put(name)

        feed = SQLiteRevocationFeed(server, interval=0.02)
        task = asyncio.create_task(feed.watch(on_revoked))
        async with asyncio.timeout(5):  # the feed has taken its starting point
            await feed.ready.wait()
        assert await cli.revoke_node("laptop")
        async with asyncio.timeout(5):
            assert await seen.get() == "laptop"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await server.close()
        await cli.close()


async def test_feed_accepts_sync_callbacks_and_survives_a_failing_one(store: Store) -> None:
    for name in ("a", "b"):
        await store.enroll_node(name, "team")
    seen: list[str] = []
    done = asyncio.Event()

    def on_revoked(name: str) -> None:
        seen.append(name)
        if name == "a":
            raise RuntimeError("handler bug")
        done.set()

    feed = SQLiteRevocationFeed(store, interval=0.01, after_seq=0)
    await store.revoke_node("a")
    await store.revoke_node("b")
    task = asyncio.create_task(feed.watch(on_revoked))
    try:
        async with asyncio.timeout(5):
            await done.wait()
    finally:
        task.cancel()
    assert seen == ["a", "b"]


async def test_feed_does_not_replay_old_revocations(store: Store) -> None:
    for name in ("old", "new"):
        await store.enroll_node(name, "team")
    await store.revoke_node("old")
    seen: asyncio.Queue[str] = asyncio.Queue()
    feed = SQLiteRevocationFeed(store, interval=0.01)
    task = asyncio.create_task(feed.watch(seen.put_nowait))
    try:
        async with asyncio.timeout(5):
            await feed.ready.wait()
        await store.revoke_node("new")
        async with asyncio.timeout(5):
            assert await seen.get() == "new"
        assert seen.empty()
    finally:
        task.cancel()


async def test_feed_sees_revoke_node_run_in_another_process(database: Database) -> None:
    server = await database.open()
    try:
        await server.enroll_node("laptop", "team")
        seen: asyncio.Queue[str] = asyncio.Queue()
        feed = SQLiteRevocationFeed(server)  # the default 0.5 s interval
        task = asyncio.create_task(feed.watch(seen.put_nowait))
        async with asyncio.timeout(5):
            await feed.ready.wait()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "server.cli",
            "revoke-node",
            "laptop",
            "--data-dir",
            str(database.data_dir),
            *database.cli_args,
            cwd=REPO,
            stderr=subprocess.PIPE,
            env=_child_env(),
        )
        _, err = await proc.communicate()
        assert proc.returncode == 0, err
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.timeout(5):
            assert await seen.get() == "laptop"
        assert loop.time() - started < 1.5
        task.cancel()
    finally:
        await server.close()


def test_feed_refuses_a_zero_interval(sqlite_store: ServerStore) -> None:
    with pytest.raises(ValueError):
        SQLiteRevocationFeed(SQLiteStore(sqlite_store), interval=0)


# -- admin commands (both engines) -------------------------------------------------------------------


def test_admin_commands_round_trip(database: Database) -> None:
    data_dir, url = database.data_dir, database.url
    credential = admin.enroll_node(data_dir, "laptop", "team", url)
    with pytest.raises(NodeExists):
        admin.enroll_node(data_dir, "laptop", "team", url)
    token = admin.issue_token(data_dir, "alice", "team", "admin", 600, url)
    key = admin.with_store(data_dir, url, lambda s: s.load_or_create_signing_key())
    claims = TokenAuthority(key).verify_user_token(token)
    assert (claims.sub, claims.ws, claims.role) == ("alice", "team", "admin")
    assert admin.with_store(data_dir, url, lambda s: s.verify_credential("laptop", credential)) is not None
    assert admin.revoke_node(data_dir, "laptop", url) is True
    assert admin.revoke_node(data_dir, "laptop", url) is False
    assert admin.with_store(data_dir, url, lambda s: s.verify_credential("laptop", credential)) is None
    assert admin.revoke_user(data_dir, "alice", None, url).sub == "alice"
    assert [n.name for n in admin.list_nodes(data_dir, url)] == ["laptop"]


async def test_admin_commands_work_under_a_running_event_loop(database: Database) -> None:
    assert admin.enroll_node(database.data_dir, "laptop", "team", database.url).startswith("cnc_")


def test_admin_issue_token_validates(data_dir: Path) -> None:
    with pytest.raises(ValueError):
        admin.issue_token(data_dir, "alice", "team", "root", 600)


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CORTEX_SERVER_HOME", str(tmp_path / "x"))
    assert admin.default_data_dir() == tmp_path / "x"
    monkeypatch.delenv("CORTEX_SERVER_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert admin.default_data_dir() == tmp_path / ".cortex-server"


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORTEX_")}
    env["PYTHONPATH"] = str(REPO)
    return env
