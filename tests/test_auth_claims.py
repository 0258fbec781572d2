"""Token verification (server.auth), claims: every stale, misplaced or malformed token is refused, and no
refused token reaches the log. Forged tokens (algorithm, signature, header): tests/test_auth.py.

Time-dependent checks use a fixed clock and tokens crafted with chosen iat/exp instead of sleeping.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from joserfc.jwk import OKPKey

from server.auth import (
    MAX_USER_TTL,
    AuthError,
    TokenAuthority,
)
from tests.support import tokens
from tests.support.tokens import (
    NOW,
    b64,
    b64json,
    craft,
    node_claims,
    refused,
    user_claims,
)

# The shared fixtures, bound by name in this module so pytest finds them.
key, authority, header, sign = tokens.key, tokens.authority, tokens.header, tokens.sign

# -- claims ------------------------------------------------------------------------------------------


def test_expired_token_is_refused(authority: TokenAuthority, header: dict[str, Any], sign: Any) -> None:
    token = craft(header, node_claims(iat=NOW - 400, exp=NOW - 100), sign)
    err = refused(authority.verify_node_token, token)
    assert (err.reason, err.status) == ("expired", 401)


@pytest.mark.parametrize(("offset", "accepted"), [(0, True), (-4, True), (-5, False), (-6, False)])
def test_expiry_boundary_with_leeway(
    authority: TokenAuthority, header: dict[str, Any], sign: Any, offset: int, accepted: bool
) -> None:
    exp = NOW + offset
    token = craft(header, node_claims(iat=exp - 300, exp=exp), sign)
    if accepted:
        assert authority.verify_node_token(token).exp == exp
    else:
        assert refused(authority.verify_node_token, token).reason == "expired"


def test_zero_leeway_refuses_at_exp(key: OKPKey, header: dict[str, Any], sign: Any) -> None:
    strict = TokenAuthority(key, leeway=0, clock=lambda: NOW)
    assert strict.verify_node_token(craft(header, node_claims(iat=NOW - 299, exp=NOW + 1), sign))
    token = craft(header, node_claims(iat=NOW - 300, exp=NOW), sign)
    assert refused(strict.verify_node_token, token).reason == "expired"


def test_minted_token_expires_on_the_clock(key: OKPKey) -> None:
    now = [float(NOW)]
    authority = TokenAuthority(key, node_ttl=60, clock=lambda: now[0])
    token, _ = authority.mint_node_token("laptop", "team")
    now[0] = NOW + 64.9
    assert authority.verify_node_token(token).sub == "laptop"
    now[0] = NOW + 65
    assert refused(authority.verify_node_token, token).reason == "expired"


@pytest.mark.parametrize("claim", ["exp", "iat", "jti", "sub", "iss", "ws", "aud"])
def test_missing_claim_is_refused(
    authority: TokenAuthority, header: dict[str, Any], sign: Any, claim: str
) -> None:
    token = craft(header, node_claims(**{claim: ...}), sign)
    err = refused(authority.verify_node_token, token)
    assert (err.reason, err.status) == ("missing_claim", 401)


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("exp", str(NOW + 300)),
        ("exp", float(NOW + 300)),
        ("iat", True),
        ("jti", ""),
        ("jti", 5),
        ("sub", ["laptop"]),
        ("sub", "Laptop"),
        ("ws", None),
        ("nbf", "0"),
        ("exp", NOW),  # exp == iat: no lifetime at all
    ],
)
def test_badly_typed_claim_is_refused(
    authority: TokenAuthority, header: dict[str, Any], sign: Any, claim: str, value: object
) -> None:
    token = craft(header, node_claims(**{claim: value}), sign)
    assert refused(authority.verify_node_token, token).reason == "bad_claim"


@pytest.mark.parametrize(("skew", "accepted"), [(5, True), (6, False), (3600, False)])
def test_iat_in_the_future(
    authority: TokenAuthority, header: dict[str, Any], sign: Any, skew: int, accepted: bool
) -> None:
    token = craft(header, node_claims(iat=NOW + skew, exp=NOW + skew + 300), sign)
    if accepted:
        assert authority.verify_node_token(token).sub == "laptop"
    else:
        assert refused(authority.verify_node_token, token).reason == "issued_in_future"


@pytest.mark.parametrize(("skew", "accepted"), [(-10, True), (5, True), (6, False), (60, False)])
def test_nbf_in_the_future(
    authority: TokenAuthority, header: dict[str, Any], sign: Any, skew: int, accepted: bool
) -> None:
    token = craft(header, node_claims(nbf=NOW + skew), sign)
    if accepted:
        assert authority.verify_node_token(token).sub == "laptop"
    else:
        assert refused(authority.verify_node_token, token).reason == "not_yet_valid"


@pytest.mark.parametrize(("lifetime", "accepted"), [(900, True), (901, False), (86400, False)])
def test_node_token_lifetime_over_maximum(
    authority: TokenAuthority, header: dict[str, Any], sign: Any, lifetime: int, accepted: bool
) -> None:
    token = craft(header, node_claims(iat=NOW, exp=NOW + lifetime), sign)
    if accepted:
        assert authority.verify_node_token(token).exp == NOW + lifetime
    else:
        assert refused(authority.verify_node_token, token).reason == "lifetime_exceeded"


def test_configured_max_ttl_lowers_the_node_lifetime(key: OKPKey, header: dict[str, Any], sign: Any) -> None:
    authority = TokenAuthority(key, node_ttl=60, max_ttl=120, clock=lambda: NOW)
    token = craft(header, node_claims(iat=NOW, exp=NOW + 121), sign)
    assert refused(authority.verify_node_token, token).reason == "lifetime_exceeded"


def test_user_token_lifetime_over_maximum(
    authority: TokenAuthority, header: dict[str, Any], sign: Any
) -> None:
    token = craft(header, user_claims(iat=NOW, exp=NOW + MAX_USER_TTL + 1), sign)
    assert refused(authority.verify_user_token, token).reason == "lifetime_exceeded"
    ok = craft(header, user_claims(iat=NOW, exp=NOW + MAX_USER_TTL), sign)
    assert authority.verify_user_token(ok).sub == "alice"


@pytest.mark.parametrize("iss", ["evil", "Cortex", "cortex ", ""])
def test_wrong_issuer_is_refused(
    authority: TokenAuthority, header: dict[str, Any], sign: Any, iss: str
) -> None:
    token = craft(header, node_claims(iss=iss), sign)
    assert refused(authority.verify_node_token, token).reason in (
        ("wrong_issuer",) if iss else ("bad_claim",)
    )


@pytest.mark.parametrize("aud", ["cortex-api", "other", ["cortex-node", "cortex-api"], ["cortex-node"]])
def test_wrong_audience_is_refused_with_403(
    authority: TokenAuthority, header: dict[str, Any], sign: Any, aud: object
) -> None:
    token = craft(header, node_claims(aud=aud), sign)
    err = refused(authority.verify_node_token, token)
    assert (err.reason, err.status) == ("wrong_audience", 403)


def test_user_token_is_useless_on_the_tunnel(authority: TokenAuthority) -> None:
    token = authority.mint_user_token("laptop", "team", role="admin", ttl=600)
    err = refused(authority.verify_node_token, token)
    assert (err.reason, err.status) == ("wrong_audience", 403)


def test_node_token_is_useless_on_the_api(authority: TokenAuthority) -> None:
    token, _ = authority.mint_node_token("laptop", "team")
    err = refused(authority.verify_user_token, token)
    assert (err.reason, err.status) == ("wrong_audience", 403)


@pytest.mark.parametrize(
    ("role", "reason"), [(..., "missing_claim"), ("root", "bad_claim"), (1, "bad_claim")]
)
def test_user_token_role_is_checked(
    authority: TokenAuthority, header: dict[str, Any], sign: Any, role: object, reason: str
) -> None:
    token = craft(header, user_claims(role=role), sign)
    assert refused(authority.verify_user_token, token).reason == reason


def test_revoked_node_is_refused(key: OKPKey) -> None:
    revoked = {"laptop"}
    authority = TokenAuthority(key, clock=lambda: NOW, is_revoked=revoked.__contains__)
    token, _ = authority.mint_node_token("laptop", "team")
    err = refused(authority.verify_node_token, token)
    assert (err.reason, err.status) == ("revoked", 401)
    other, _ = authority.mint_node_token("desktop", "team")
    assert authority.verify_node_token(other).sub == "desktop"


# -- garbage -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "a.b",
        "a.b.c",
        "..",
        "a..c",
        "Bearer x.y.z",
        "é.é.é",
        "eyJ.eyJ.sig=",
        None,
        b"x.y.z",
        42,
    ],
)
def test_garbage_is_refused(authority: TokenAuthority, token: object) -> None:
    err = refused(authority.verify_node_token, token)
    assert (err.reason, err.status) == ("malformed", 401)
    assert refused(authority.verify_user_token, token).reason == "malformed"


def test_five_segment_token_is_refused(authority: TokenAuthority) -> None:
    token, _ = authority.mint_node_token("laptop", "team")
    head, payload, sig = token.split(".")
    jwe_shaped = f"{head}.{payload}.{sig}.{sig}.{sig}"
    assert refused(authority.verify_node_token, jwe_shaped).reason == "malformed"


def test_oversized_token_is_refused(authority: TokenAuthority, header: dict[str, Any], sign: Any) -> None:
    token = craft(header, node_claims(pad="x" * 8192), sign)
    err = refused(authority.verify_node_token, token)
    assert (err.reason, err.status) == ("oversized", 401)


@pytest.mark.parametrize(
    "raw_header",
    [
        b"[1,2]",
        b"not json",
        b'{"alg":"none","alg":"Ed25519","typ":"at+jwt"}',
        b"\xff\xfe",
    ],
)
def test_malformed_header_is_refused(authority: TokenAuthority, raw_header: bytes) -> None:
    token = f"{b64(raw_header)}.{b64json(node_claims())}.{b64(bytes(64))}"
    assert refused(authority.verify_node_token, token).reason == "malformed"


def test_payload_with_duplicate_claims_is_refused(
    authority: TokenAuthority, header: dict[str, Any], sign: Any
) -> None:
    payload = json.dumps(node_claims())[:-1] + ',"sub":"admin"}'
    signing_input = f"{b64json(header)}.{b64(payload.encode())}"
    token = f"{signing_input}.{b64(sign(signing_input.encode()))}"
    assert refused(authority.verify_node_token, token).reason == "malformed"


def test_non_object_payload_is_refused(authority: TokenAuthority, header: dict[str, Any], sign: Any) -> None:
    signing_input = f"{b64json(header)}.{b64json(['laptop'])}"
    token = f"{signing_input}.{b64(sign(signing_input.encode()))}"
    assert refused(authority.verify_node_token, token).reason == "malformed"


# -- logging -----------------------------------------------------------------------------------------


def test_refused_tokens_are_never_logged(
    authority: TokenAuthority, header: dict[str, Any], sign: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good, _ = authority.mint_node_token("laptop", "team")
    head, _, sig = good.split(".")
    bad = {
        "tampered": f"{head}.{b64json(node_claims(sub='server'))}.{sig}",
        "expired": craft(header, node_claims(iat=NOW - 1000, exp=NOW - 700), sign),
        "audience": authority.mint_user_token("alice", "team"),
        "garbage": "x" * 50 + "." + "y" * 50 + "." + "z" * 50,
    }
    for token in bad.values():
        with pytest.raises(AuthError):
            authority.verify_node_token(token)
    text = caplog.text
    assert "bad_signature" in text and "expired" in text and "wrong_audience" in text
    assert "jti-1" in text  # sub/jti of a genuine (expired) token help the operator
    for token in [*bad.values(), good]:
        for segment in token.split("."):
            assert segment not in text
    # Claims from an unverified (tampered) token are attacker-controlled and not logged.
    assert "'server'" not in text
