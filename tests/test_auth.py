"""Token minting and verification (server.auth): the happy path, then forged tokens (algorithm, signature,
header) are refused. Claims (stale, misplaced), garbage and logging: tests/test_auth_claims.py.

Time-dependent checks use a fixed clock and tokens crafted with chosen iat/exp instead of sleeping.
Hand-crafted tokens are signed with the real key unless the attack is about the signature, so each test
isolates the one check it targets.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from joserfc import jws, jwt
from joserfc.jwk import ECKey, OKPKey, RSAKey

from server.auth import (
    MAX_USER_TTL,
    NodeClaims,
    TokenAuthority,
    UserClaims,
)
from tests.support import tokens
from tests.support.tokens import (
    NOW,
    b64,
    b64json,
    craft,
    ed25519_signer,
    node_claims,
    refused,
    user_claims,
)

# The shared fixtures, bound by name in this module so pytest finds them.
key, authority, header, sign = tokens.key, tokens.authority, tokens.header, tokens.sign

# -- the happy path (so every refusal below is meaningful) ---------------------------------------------


def test_minted_node_token_verifies_with_all_claims(authority: TokenAuthority, key: OKPKey) -> None:
    token, expires_in = authority.mint_node_token("laptop", "team")
    assert expires_in == 300
    claims = authority.verify_node_token(token)
    assert isinstance(claims, NodeClaims)
    assert (claims.sub, claims.ws, claims.exp) == ("laptop", "team", NOW + 300)
    decoded = jwt.decode(token, key, algorithms=["Ed25519"])
    assert decoded.header == {"alg": "Ed25519", "typ": "at+jwt", "kid": key.kid}
    assert decoded.claims == {
        "iss": "cortex",
        "sub": "laptop",
        "aud": "cortex-node",
        "ws": "team",
        "iat": NOW,
        "exp": NOW + 300,
        "jti": claims.jti,
    }


def test_minted_user_token_verifies(authority: TokenAuthority) -> None:
    token = authority.mint_user_token("alice", "team", role="admin", ttl=7200)
    claims = authority.verify_user_token(token)
    assert claims == UserClaims(sub="alice", ws="team", role="admin", exp=NOW + 7200, jti=claims.jti)
    assert claims.jti


def test_every_token_gets_a_fresh_jti(authority: TokenAuthority) -> None:
    jtis = {authority.verify_node_token(authority.mint_node_token("laptop", "team")[0]).jti for _ in range(5)}
    assert len(jtis) == 5


def test_crafted_reference_token_verifies(
    authority: TokenAuthority, header: dict[str, Any], sign: Any
) -> None:
    assert authority.verify_node_token(craft(header, node_claims(), sign)).sub == "laptop"
    assert authority.verify_user_token(craft(header, user_claims(), sign)).role == "member"


def test_node_ttl_is_capped_at_max(authority: TokenAuthority) -> None:
    token, expires_in = authority.mint_node_token("laptop", "team", ttl=5000)
    assert expires_in == 900
    assert authority.verify_node_token(token).exp == NOW + 900


@pytest.mark.parametrize(
    "kwargs", [{"max_ttl": 901}, {"node_ttl": 1000}, {"leeway": 6}, {"leeway": -1}, {"node_ttl": 0}]
)
def test_authority_refuses_unsafe_settings(key: OKPKey, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        TokenAuthority(key, **kwargs)


def test_authority_needs_a_private_ed25519_key(key: OKPKey) -> None:
    public = OKPKey.import_key(key.as_dict(private=False))
    with pytest.raises(ValueError):
        TokenAuthority(public)


@pytest.mark.parametrize(
    ("sub", "ws", "role", "ttl"),
    [
        ("", "team", "member", 60),
        ("alice", "Team", "member", 60),
        ("alice", "team", "root", 60),
        ("alice", "team", "member", 0),
        ("alice", "team", "member", MAX_USER_TTL + 1),
    ],
)
def test_mint_user_token_validates_input(
    authority: TokenAuthority, sub: str, ws: str, role: str, ttl: int
) -> None:
    with pytest.raises(ValueError):
        authority.mint_user_token(sub, ws, role=role, ttl=ttl)


@pytest.mark.parametrize(("name", "ws"), [("Laptop", "team"), ("laptop", "../etc"), ("", "team")])
def test_mint_node_token_validates_names(authority: TokenAuthority, name: str, ws: str) -> None:
    with pytest.raises(ValueError):
        authority.mint_node_token(name, ws)


def test_jwks_has_public_key_only_and_verifies_tokens(authority: TokenAuthority, key: OKPKey) -> None:
    jwks = authority.jwks()
    assert len(jwks["keys"]) == 1
    entry: dict[str, Any] = jwks["keys"][0]
    assert entry == {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": entry["x"],
        "kid": key.kid,
        "alg": "Ed25519",
        "use": "sig",
    }
    public = OKPKey.import_key(entry)
    assert not public.is_private
    token, _ = authority.mint_node_token("laptop", "team")
    jws.deserialize_compact(token, public, algorithms=["Ed25519"])


# -- algorithm confusion -----------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_with_empty_signature_is_refused(authority: TokenAuthority, key: OKPKey, alg: str) -> None:
    token = f"{b64json({'alg': alg, 'typ': 'at+jwt', 'kid': key.kid})}.{b64json(node_claims())}."
    err = refused(authority.verify_node_token, token)
    assert (err.reason, err.status) == ("malformed", 401)


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_with_any_signature_is_refused(authority: TokenAuthority, key: OKPKey, alg: str) -> None:
    token = craft({"alg": alg, "typ": "at+jwt", "kid": key.kid}, node_claims(), lambda _: b"x" * 64)
    err = refused(authority.verify_node_token, token)
    assert (err.reason, err.status) == ("bad_algorithm", 401)
    assert refused(authority.verify_user_token, token).reason == "bad_algorithm"


def _public_key_forms(key: OKPKey) -> list[bytes]:
    public = key.get_op_key("verify")
    return [
        public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw),
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        json.dumps(key.as_dict(private=False)).encode(),
        str(key.as_dict(private=False)["x"]).encode(),
    ]


@pytest.mark.parametrize("form", range(4))
def test_hs256_signed_with_the_public_key_is_refused(
    authority: TokenAuthority, key: OKPKey, header: dict[str, Any], form: int
) -> None:
    secret = _public_key_forms(key)[form]
    forged = craft(
        {**header, "alg": "HS256"}, node_claims(), lambda msg: hmac.new(secret, msg, hashlib.sha256).digest()
    )
    err = refused(authority.verify_node_token, forged)
    assert (err.reason, err.status) == ("bad_algorithm", 401)


def test_correctly_signed_es256_is_refused(authority: TokenAuthority, key: OKPKey) -> None:
    ec_key = ECKey.generate_key("P-256")
    token = jwt.encode(
        {"alg": "ES256", "typ": "at+jwt", "kid": key.kid}, node_claims(), ec_key, algorithms=["ES256"]
    )
    jwt.decode(token, ec_key, algorithms=["ES256"])  # it is a genuine ES256 token
    assert refused(authority.verify_node_token, token).reason == "bad_algorithm"


def test_correctly_signed_rs256_is_refused(authority: TokenAuthority, key: OKPKey) -> None:
    rsa_key = RSAKey.generate_key(2048)
    token = jwt.encode(
        {"alg": "RS256", "typ": "at+jwt", "kid": key.kid}, node_claims(), rsa_key, algorithms=["RS256"]
    )
    assert refused(authority.verify_node_token, token).reason == "bad_algorithm"


def test_eddsa_alias_is_refused_even_with_a_valid_signature(
    authority: TokenAuthority, header: dict[str, Any], sign: Any
) -> None:
    token = craft({**header, "alg": "EdDSA"}, node_claims(), sign)
    assert refused(authority.verify_node_token, token).reason == "bad_algorithm"


def test_missing_alg_is_refused(authority: TokenAuthority, header: dict[str, Any], sign: Any) -> None:
    token = craft({k: v for k, v in header.items() if k != "alg"}, node_claims(), sign)
    assert refused(authority.verify_node_token, token).reason == "bad_algorithm"


# -- signature -------------------------------------------------------------------------------------


def test_tampered_payload_is_refused(authority: TokenAuthority) -> None:
    token, _ = authority.mint_node_token("laptop", "team")
    head, _, sig = token.split(".")
    forged = f"{head}.{b64json(node_claims(sub='server', ws='other'))}.{sig}"
    err = refused(authority.verify_node_token, forged)
    assert (err.reason, err.status) == ("bad_signature", 401)


def test_tampered_header_is_refused(authority: TokenAuthority, key: OKPKey) -> None:
    token, _ = authority.mint_node_token("laptop", "team")
    _, payload, sig = token.split(".")
    reordered = b64json({"kid": key.kid, "alg": "Ed25519", "typ": "at+jwt"})
    assert refused(authority.verify_node_token, f"{reordered}.{payload}.{sig}").reason == "bad_signature"


def test_truncated_signature_is_refused(authority: TokenAuthority) -> None:
    token, _ = authority.mint_node_token("laptop", "team")
    head, payload, sig = token.split(".")
    short = b64(base64.urlsafe_b64decode(sig + "==")[:-1])
    assert refused(authority.verify_node_token, f"{head}.{payload}.{short}").reason == "bad_signature"
    # Cut in the text form: no longer valid base64url of a signature at all.
    assert refused(authority.verify_node_token, token[:-1]).status == 401


def test_zero_signature_is_refused(authority: TokenAuthority) -> None:
    token, _ = authority.mint_node_token("laptop", "team")
    head, payload, _ = token.split(".")
    assert (
        refused(authority.verify_node_token, f"{head}.{payload}.{b64(bytes(64))}").reason == "bad_signature"
    )


def test_token_signed_by_another_key_claiming_our_kid_is_refused(
    authority: TokenAuthority, header: dict[str, Any]
) -> None:
    attacker = OKPKey.generate_key("Ed25519", auto_kid=True)
    token = craft(header, node_claims(), ed25519_signer(attacker))
    assert refused(authority.verify_node_token, token).reason == "bad_signature"


def test_token_of_another_server_is_refused(authority: TokenAuthority) -> None:
    other = TokenAuthority(OKPKey.generate_key("Ed25519", auto_kid=True), clock=lambda: NOW)
    token, _ = other.mint_node_token("laptop", "team")
    assert refused(authority.verify_node_token, token).reason == "unknown_kid"


# -- header parameters -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("jku", "https://attacker.example/jwks.json"),
        ("x5u", "https://attacker.example/cert.pem"),
        ("x5c", ["MIIBszCCAVmgAwIBAgIU"]),
        ("crit", ["exp"]),
        ("b64", False),
        ("cty", "JWT"),
    ],
)
def test_forbidden_header_parameters_are_refused(
    authority: TokenAuthority, header: dict[str, Any], sign: Any, param: str, value: Any
) -> None:
    token = craft({**header, param: value}, node_claims(), sign)
    err = refused(authority.verify_node_token, token)
    assert (err.reason, err.status) == ("forbidden_header", 401)


def test_embedded_jwk_is_refused(authority: TokenAuthority, header: dict[str, Any]) -> None:
    attacker = OKPKey.generate_key("Ed25519", auto_kid=True)
    token = craft({**header, "jwk": attacker.as_dict(private=False)}, node_claims(), ed25519_signer(attacker))
    assert refused(authority.verify_node_token, token).reason == "forbidden_header"


@pytest.mark.parametrize("kid", ["other", "../../../../etc/passwd", "../signing_key", "", 7, None])
def test_unknown_kid_is_refused(
    authority: TokenAuthority, header: dict[str, Any], sign: Any, kid: object
) -> None:
    token = craft({**header, "kid": kid}, node_claims(), sign)
    assert refused(authority.verify_node_token, token).reason == "unknown_kid"


def test_our_kid_with_path_suffix_is_refused(
    authority: TokenAuthority, header: dict[str, Any], sign: Any, key: OKPKey
) -> None:
    token = craft({**header, "kid": f"{key.kid}/../{key.kid}"}, node_claims(), sign)
    assert refused(authority.verify_node_token, token).reason == "unknown_kid"


def test_missing_kid_is_refused(authority: TokenAuthority, header: dict[str, Any], sign: Any) -> None:
    token = craft({"alg": "Ed25519", "typ": "at+jwt"}, node_claims(), sign)
    assert refused(authority.verify_node_token, token).reason == "unknown_kid"


@pytest.mark.parametrize("typ", ["JWT", "jwt", "application/jwt", "", ...])
def test_wrong_or_missing_typ_is_refused(
    authority: TokenAuthority, header: dict[str, Any], sign: Any, typ: object
) -> None:
    hdr = {k: v for k, v in {**header, "typ": typ}.items() if v is not ...}
    token = craft(hdr, node_claims(), sign)
    assert refused(authority.verify_node_token, token).reason == "bad_type"


def test_a_header_nested_past_the_parser_is_malformed(authority: TokenAuthority) -> None:
    # The header is read before the signature, so anyone can send one: a RecursionError out of
    # json.loads was an internal error (HTTP 500 and a traceback) on every surface that takes a token.
    deep = base64.urlsafe_b64encode(b"[" * 3000).rstrip(b"=").decode()
    token = f"{deep}.{b64json(node_claims())}.{'A' * 86}"
    for verify in (authority.verify_node_token, authority.verify_user_token):
        err = refused(verify, token)
        assert (err.reason, err.status) == ("malformed", 401)
