"""Several active signing keys (a shared store may hold more than one): every one is in the JWKS and
verifies its tokens on every replica; only the newest signs. Unit level on `TokenAuthority`, then the
real app on both engines."""

from __future__ import annotations

import json
import time

import pytest
from joserfc.jwk import OKPKey
from starlette.testclient import TestClient

from server.app import build_app
from server.auth import AuthError, TokenAuthority
from server.config import ServerConfig
from tests.support.engines import Database


def _key() -> OKPKey:
    return OKPKey.generate_key("Ed25519", auto_kid=True)


def test_trusted_keys_are_published_and_verify_but_never_sign() -> None:
    current, older = _key(), _key()
    authority = TokenAuthority(current, trusted=[older])
    assert [k["kid"] for k in authority.jwks()["keys"]] == [current.kid, older.kid]
    assert all("d" not in k for k in authority.jwks()["keys"])  # public halves only
    old_token, _ = TokenAuthority(older).mint_node_token("laptop", "team")
    assert authority.verify_node_token(old_token).sub == "laptop"
    fresh, _ = authority.mint_node_token("laptop", "team")
    assert TokenAuthority(current).verify_node_token(fresh).sub == "laptop"
    with pytest.raises(AuthError):
        TokenAuthority(older).verify_node_token(fresh)  # signed with the current key, not the older


def test_a_key_not_in_the_set_is_refused() -> None:
    authority = TokenAuthority(_key(), trusted=[_key()])
    stranger, _ = TokenAuthority(_key()).mint_node_token("laptop", "team")
    with pytest.raises(AuthError) as caught:
        authority.verify_node_token(stranger)
    assert caught.value.reason == "unknown_kid"


def test_a_trusted_key_must_be_ed25519() -> None:
    from joserfc.jwk import ECKey

    with pytest.raises(ValueError):
        TokenAuthority(_key(), trusted=[ECKey.generate_key("P-256")])  # type: ignore[list-item]


async def _add_key(database: Database, key: OKPKey, created_at: float) -> None:
    row = (key.kid, json.dumps(key.as_dict(private=True)), created_at)
    if database.url is None:
        from server.store import ServerStore

        with ServerStore(database.data_dir) as store:
            store._db.execute("INSERT INTO signing_keys (kid, jwk, created_at) VALUES (?, ?, ?)", row)
        return
    import psycopg

    async with await psycopg.AsyncConnection.connect(database.url, autocommit=True) as conn:
        await conn.execute("INSERT INTO signing_keys (kid, jwk, created_at) VALUES (%s, %s, %s)", row)


async def test_the_app_serves_every_active_key(database: Database) -> None:
    store = await database.open()
    first = await store.load_or_create_signing_key()
    await store.close()
    newer = _key()
    await _add_key(database, newer, time.time() + 10)
    old_token, _ = TokenAuthority(first).mint_node_token("laptop", "team")
    config = ServerConfig(data_dir=database.data_dir, database_url=database.url)
    with TestClient(build_app(config)) as client:
        kids = [k["kid"] for k in client.get("/.well-known/jwks.json").json()["keys"]]
        assert kids == [newer.kid, first.kid]
        authority = client.app.state.cortex.authority  # type: ignore[attr-defined]
        assert authority.kid == newer.kid
        assert authority.verify_node_token(old_token).sub == "laptop"
