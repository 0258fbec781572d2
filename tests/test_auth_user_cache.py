"""TokenAuthority remembers verified user tokens with their claims; time and revocation: checked every use."""

from __future__ import annotations

import pytest
from joserfc.jwk import OKPKey

from server import auth
from server.auth import AuthError, TokenAuthority


def _authority(now: list[float], revoked: set[str]) -> TokenAuthority:
    return TokenAuthority(
        OKPKey.generate_key("Ed25519", auto_kid=True),
        clock=lambda: now[0],
        is_user_revoked=lambda sub, ws, iat: sub in revoked,
    )


def _count_full_checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    real = TokenAuthority._verify

    def counting(self: TokenAuthority, *args: object) -> object:
        calls[0] += 1
        return real(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(TokenAuthority, "_verify", counting)
    return calls


def test_a_known_token_skips_the_checks_that_cannot_change(monkeypatch: pytest.MonkeyPatch) -> None:
    now, revoked = [1_000_000.0], set[str]()
    authority = _authority(now, revoked)
    token = authority.mint_user_token("alice", "w1", role="admin", ttl=60)
    calls = _count_full_checks(monkeypatch)
    first = authority.verify_user_token(token)
    for _ in range(5):
        assert authority.verify_user_token(token) == first
    assert calls[0] == 1 and first.role == "admin" and first.iat == 1_000_000
    other = authority.mint_user_token("bob", "w1", ttl=60)
    assert authority.verify_user_token(other).sub == "bob"  # another string: checked in full
    assert calls[0] == 2


def test_a_revoked_user_is_refused_though_the_token_is_known() -> None:
    now, revoked = [1_000_000.0], set[str]()
    authority = _authority(now, revoked)
    token = authority.mint_user_token("alice", "w1", ttl=60)
    assert authority.verify_user_token(token).sub == "alice"
    revoked.add("alice")
    with pytest.raises(AuthError) as refused:
        authority.verify_user_token(token)
    assert refused.value.reason == "revoked" and refused.value.status == 401


def test_an_expired_or_not_yet_valid_known_token_is_refused() -> None:
    now, revoked = [1_000_000.0], set[str]()
    authority = _authority(now, revoked)
    token = authority.mint_user_token("alice", "w1", ttl=60)
    assert authority.verify_user_token(token).sub == "alice"
    now[0] = 1_000_000 + 60 + authority.leeway - 0.5  # within the leeway: still good
    assert authority.verify_user_token(token).sub == "alice"
    now[0] = 1_000_000 + 60 + authority.leeway
    with pytest.raises(AuthError) as expired:
        authority.verify_user_token(token)
    assert expired.value.reason == "expired"
    # A clock set back before the token was issued: refused as the full check would.
    fresh = authority.mint_user_token("bob", "w1", ttl=600)
    assert authority.verify_user_token(fresh).sub == "bob"
    now[0] -= 60
    with pytest.raises(AuthError) as early:
        authority.verify_user_token(fresh)
    assert early.value.reason == "issued_in_future"


def test_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "USER_CACHE_SIZE", 8)
    now, revoked = [1_000_000.0], set[str]()
    authority = _authority(now, revoked)
    tokens = [authority.mint_user_token(f"user{i}", "w1", ttl=60) for i in range(20)]
    for token in tokens:
        authority.verify_user_token(token)
    assert len(authority._user_ok) == 8
    calls = _count_full_checks(monkeypatch)
    authority.verify_user_token(tokens[-1])  # among the newest: remembered
    authority.verify_user_token(tokens[0])  # the oldest was dropped: checked in full again, and good
    assert calls[0] == 1
