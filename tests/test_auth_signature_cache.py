"""TokenAuthority remembers verified signatures, never a verdict: every claim is checked on every use."""

from __future__ import annotations

import pytest
from joserfc.jwk import OKPKey

from server import auth
from server.auth import AuthError, TokenAuthority


def test_a_known_token_skips_only_the_signature_check(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_000_000.0]
    authority = TokenAuthority(OKPKey.generate_key("Ed25519", auto_kid=True), clock=lambda: now[0])
    token = authority.mint_user_token("alice", "w1", ttl=60)
    calls = 0
    real = auth.jws.deserialize_compact

    def counting(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(auth.jws, "deserialize_compact", counting)
    for _ in range(5):
        assert authority.verify_user_token(token).sub == "alice"
    assert calls == 1  # one Ed25519 verify for five uses
    now[0] += 120  # past exp: the cached signature does not make an expired token good
    with pytest.raises(AuthError):
        authority.verify_user_token(token)
    head, payload, signature = token.split(".")
    forged = f"{head}.{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}"
    with pytest.raises(AuthError):
        authority.verify_user_token(forged)  # a different string is verified afresh, and fails


def test_a_token_of_another_key_is_not_taken_on_trust() -> None:
    one = TokenAuthority(OKPKey.generate_key("Ed25519", auto_kid=True))
    other = TokenAuthority(OKPKey.generate_key("Ed25519", auto_kid=True))
    token = one.mint_user_token("alice", "w1")
    assert one.verify_user_token(token).sub == "alice"
    with pytest.raises(AuthError):
        other.verify_user_token(token)
