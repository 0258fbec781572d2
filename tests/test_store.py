"""Server state (server.store, server.admin): enrollment, hashed credentials, revocation, the signing key.

"Another process" is simulated by a second `ServerStore` on the same directory, and once for real by
running `server.admin.revoke_node` in a child Python process.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from server import admin
from server.auth import TokenAuthority
from server.store import (
    InvalidName,
    NodeExists,
    NodeRecord,
    ServerStore,
    SQLiteRevocationFeed,
    StoreError,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "server-home"


@pytest.fixture
def store(data_dir: Path) -> Iterator[ServerStore]:
    s = ServerStore(data_dir)
    yield s
    s.close()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- enrollment and credentials ----------------------------------------------------------------------


def test_enroll_then_verify_credential(store: ServerStore) -> None:
    credential = store.enroll_node("laptop", "team")
    assert credential.startswith("cnc_") and len(credential) >= 40
    record = store.verify_credential("laptop", credential)
    assert isinstance(record, NodeRecord)
    assert (record.name, record.workspace, record.revoked_at) == ("laptop", "team", None)


def test_credentials_are_unique(store: ServerStore) -> None:
    assert store.enroll_node("a", "team") != store.enroll_node("b", "team")


@pytest.mark.parametrize(
    ("name", "credential_of"),
    [("laptop", "desktop"), ("nobody", "laptop"), ("laptop", None)],
)
def test_wrong_or_unknown_credential_is_refused(
    store: ServerStore, name: str, credential_of: str | None
) -> None:
    creds = {"laptop": store.enroll_node("laptop", "team"), "desktop": store.enroll_node("desktop", "team")}
    laptop = creds["laptop"]
    # One character off (never the same one: a credential ending in "A" would otherwise be guessed right).
    guess = creds[credential_of] if credential_of else laptop[:-1] + ("B" if laptop.endswith("A") else "A")
    assert store.verify_credential(name, guess) is None


@pytest.mark.parametrize("credential", ["", "cnc_", "x" * 10_000])
def test_junk_credentials_are_refused(store: ServerStore, credential: str) -> None:
    store.enroll_node("laptop", "team")
    assert store.verify_credential("laptop", credential) is None


def test_replayed_enrollment_is_refused(store: ServerStore) -> None:
    first = store.enroll_node("laptop", "team")
    with pytest.raises(NodeExists):
        store.enroll_node("laptop", "team")
    with pytest.raises(NodeExists):
        store.enroll_node("laptop", "other-team")
    # The original credential still works and the workspace did not change.
    record = store.verify_credential("laptop", first)
    assert record is not None and record.workspace == "team"


def test_revoked_name_cannot_be_enrolled_again(store: ServerStore) -> None:
    store.enroll_node("laptop", "team")
    assert store.revoke_node("laptop")
    with pytest.raises(NodeExists):
        store.enroll_node("laptop", "team")


@pytest.mark.parametrize(
    "name", ["", "-laptop", "Laptop", "lap_top", "lap top", "../etc", "a" * 64, "läptop"]
)
def test_invalid_node_names_are_refused(store: ServerStore, name: str) -> None:
    with pytest.raises(InvalidName):
        store.enroll_node(name, "team")
    with pytest.raises(InvalidName):
        store.enroll_node("laptop", name)
    assert store.list_nodes() == []


def test_longest_valid_name(store: ServerStore) -> None:
    name = "a" + "-" * 61 + "z"
    store.enroll_node(name, "0")
    assert store.get_node(name) is not None


def test_store_errors_share_a_root() -> None:
    assert issubclass(NodeExists, StoreError) and issubclass(InvalidName, StoreError)


def test_database_holds_no_plaintext_credential(store: ServerStore, data_dir: Path) -> None:
    credentials = [store.enroll_node(f"node-{i}", "team") for i in range(3)]
    store.close()
    blob = b"".join(p.read_bytes() for p in data_dir.iterdir() if p.is_file())
    assert b"node-0" in blob  # the files read are the ones holding the data
    for credential in credentials:
        secret = credential.removeprefix("cnc_").encode()
        assert secret not in blob
        assert secret[:16] not in blob


def test_each_credential_hash_has_its_own_salt(store: ServerStore, data_dir: Path) -> None:
    store.enroll_node("a", "team")
    store.enroll_node("b", "team")
    rows = store._db.execute("SELECT credential_hash FROM nodes").fetchall()
    salts = {row[0].split("$")[1] for row in rows}
    assert len(salts) == 2


# -- files -------------------------------------------------------------------------------------------


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


def test_database_uses_wal(store: ServerStore) -> None:
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# -- signing key -------------------------------------------------------------------------------------


def test_signing_key_survives_reopen(data_dir: Path) -> None:
    first = ServerStore(data_dir)
    key = first.load_or_create_signing_key()
    token, _ = TokenAuthority(key).mint_node_token("laptop", "team")
    first.close()
    second = ServerStore(data_dir)
    try:
        again = second.load_or_create_signing_key()
        assert again.kid == key.kid and again.is_private
        assert TokenAuthority(again).verify_node_token(token).sub == "laptop"
    finally:
        second.close()


def test_two_stores_agree_on_one_key(data_dir: Path) -> None:
    a, b = ServerStore(data_dir), ServerStore(data_dir)
    try:
        assert a.load_or_create_signing_key().kid == b.load_or_create_signing_key().kid
    finally:
        a.close()
        b.close()


# -- queries and revocation --------------------------------------------------------------------------


def test_get_and_list_nodes(store: ServerStore) -> None:
    store.enroll_node("b-node", "team")
    store.enroll_node("a-node", "team")
    store.enroll_node("c-node", "other")
    assert [n.name for n in store.list_nodes()] == ["a-node", "b-node", "c-node"]
    assert [n.name for n in store.list_nodes("team")] == ["a-node", "b-node"]
    assert store.list_nodes("nobody") == []
    node = store.get_node("c-node")
    assert node is not None and node.workspace == "other" and node.created_at > 0
    assert store.get_node("missing") is None


def test_revoke_kills_the_credential(store: ServerStore) -> None:
    credential = store.enroll_node("laptop", "team")
    assert store.revoke_node("laptop") is True
    assert store.verify_credential("laptop", credential) is None
    node = store.get_node("laptop")
    assert node is not None and node.revoked_at is not None and node.revoked
    assert store.is_revoked("laptop") and not store.is_revoked("missing")
    assert store.revoke_node("laptop") is False
    assert store.revoke_node("missing") is False


def test_revocation_sequence(store: ServerStore) -> None:
    assert store.last_revocation_seq() == 0
    for name in ("a", "b", "c"):
        store.enroll_node(name, "team")
    store.revoke_node("a")
    store.revoke_node("a")  # no second row for an already revoked node
    store.revoke_node("c")
    entries = store.revocations_after(0)
    assert [n for _, n in entries] == ["a", "c"]
    assert store.last_revocation_seq() == entries[-1][0]
    assert store.revocations_after(entries[0][0]) == entries[1:]
    assert store.revocations_after(store.last_revocation_seq()) == []


def test_concurrent_enrollment_from_threads(store: ServerStore) -> None:
    errors: list[BaseException] = []

    def enroll(i: int) -> None:
        try:
            store.enroll_node(f"node-{i}", "team")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=enroll, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.list_nodes()) == 16


# -- revocation feed ---------------------------------------------------------------------------------


async def test_feed_sees_revocation_from_another_store(data_dir: Path) -> None:
    server, cli = ServerStore(data_dir), ServerStore(data_dir)
    try:
        server.enroll_node("laptop", "team")
        seen: asyncio.Queue[str] = asyncio.Queue()

        async def on_revoked(name: str) -> None:
            await seen.put(name)

        feed = SQLiteRevocationFeed(server, interval=0.02)
        task = asyncio.create_task(feed.watch(on_revoked))
        async with asyncio.timeout(2):  # the feed has taken its starting point
            await feed.ready.wait()
        assert await asyncio.to_thread(cli.revoke_node, "laptop")
        async with asyncio.timeout(2):
            assert await seen.get() == "laptop"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        server.close()
        cli.close()


async def test_feed_accepts_sync_callbacks_and_survives_a_failing_one(store: ServerStore) -> None:
    for name in ("a", "b"):
        store.enroll_node(name, "team")
    seen: list[str] = []
    done = asyncio.Event()

    def on_revoked(name: str) -> None:
        seen.append(name)
        if name == "a":
            raise RuntimeError("handler bug")
        done.set()

    feed = SQLiteRevocationFeed(store, interval=0.01, after_seq=0)
    store.revoke_node("a")
    store.revoke_node("b")
    task = asyncio.create_task(feed.watch(on_revoked))
    try:
        async with asyncio.timeout(2):
            await done.wait()
    finally:
        task.cancel()
    assert seen == ["a", "b"]


async def test_feed_does_not_replay_old_revocations(store: ServerStore) -> None:
    for name in ("old", "new"):
        store.enroll_node(name, "team")
    store.revoke_node("old")
    seen: asyncio.Queue[str] = asyncio.Queue()
    feed = SQLiteRevocationFeed(store, interval=0.01)
    task = asyncio.create_task(feed.watch(seen.put_nowait))
    try:
        async with asyncio.timeout(2):
            await feed.ready.wait()
        store.revoke_node("new")
        async with asyncio.timeout(2):
            assert await seen.get() == "new"
        assert seen.empty()
    finally:
        task.cancel()


async def test_feed_sees_revoke_node_run_in_another_process(data_dir: Path) -> None:
    server = ServerStore(data_dir)
    try:
        server.enroll_node("laptop", "team")
        seen: asyncio.Queue[str] = asyncio.Queue()
        feed = SQLiteRevocationFeed(server)  # the default 0.5 s interval
        task = asyncio.create_task(feed.watch(seen.put_nowait))
        async with asyncio.timeout(2):
            await feed.ready.wait()
        code = f"from server.admin import revoke_node; print(revoke_node({str(data_dir)!r}, 'laptop'))"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, cwd=REPO, stdout=subprocess.PIPE
        )
        out, _ = await proc.communicate()
        assert out.strip() == b"True"
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.timeout(2):
            assert await seen.get() == "laptop"
        assert loop.time() - started < 1.5
        task.cancel()
    finally:
        server.close()


def test_feed_refuses_a_zero_interval(store: ServerStore) -> None:
    with pytest.raises(ValueError):
        SQLiteRevocationFeed(store, interval=0)


# -- admin commands ----------------------------------------------------------------------------------


def test_admin_commands_round_trip(data_dir: Path) -> None:
    credential = admin.enroll_node(data_dir, "laptop", "team")
    with pytest.raises(NodeExists):
        admin.enroll_node(data_dir, "laptop", "team")
    token = admin.issue_token(data_dir, "alice", "team", "admin", 600)
    with ServerStore(data_dir) as s:
        authority = TokenAuthority(s.load_or_create_signing_key())
        assert s.verify_credential("laptop", credential) is not None
    claims = authority.verify_user_token(token)
    assert (claims.sub, claims.ws, claims.role) == ("alice", "team", "admin")
    assert admin.revoke_node(data_dir, "laptop") is True
    assert admin.revoke_node(data_dir, "laptop") is False
    with ServerStore(data_dir) as s:
        assert s.verify_credential("laptop", credential) is None


def test_admin_issue_token_validates(data_dir: Path) -> None:
    with pytest.raises(ValueError):
        admin.issue_token(data_dir, "alice", "team", "root", 600)


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CORTEX_SERVER_HOME", str(tmp_path / "x"))
    assert admin.default_data_dir() == tmp_path / "x"
    monkeypatch.delenv("CORTEX_SERVER_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert admin.default_data_dir() == tmp_path / ".cortex-server"
