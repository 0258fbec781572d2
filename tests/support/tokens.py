"""Token helpers shared by the server.auth tests: a fixed clock, crafted tokens, the fixtures.

Layering: test support only (tests/test_auth.py, tests/test_auth_claims.py); the fixtures are imported
by name into those modules.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc.jwk import OKPKey

from server.auth import (
    NODE_AUDIENCE,
    USER_AUDIENCE,
    AuthError,
    TokenAuthority,
)

NOW = 1_700_000_000


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64json(obj: Any) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


@pytest.fixture
def key() -> OKPKey:
    return OKPKey.generate_key("Ed25519", auto_kid=True)


@pytest.fixture
def authority(key: OKPKey) -> TokenAuthority:
    return TokenAuthority(key, clock=lambda: NOW)


@pytest.fixture
def header(key: OKPKey) -> dict[str, Any]:
    return {"alg": "Ed25519", "typ": "at+jwt", "kid": key.kid}


def node_claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": "cortex",
        "sub": "laptop",
        "aud": NODE_AUDIENCE,
        "ws": "team",
        "iat": NOW,
        "exp": NOW + 300,
        "jti": "jti-1",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not ...}


def user_claims(**overrides: Any) -> dict[str, Any]:
    claims = node_claims(sub="alice", aud=USER_AUDIENCE, role="member", exp=NOW + 3600)
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not ...}


def ed25519_signer(key: OKPKey) -> Callable[[bytes], bytes]:
    private = key.get_op_key("sign")
    assert isinstance(private, Ed25519PrivateKey)
    return private.sign


def craft(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    signing_input = f"{b64json(header)}.{b64json(claims)}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


@pytest.fixture
def sign(key: OKPKey) -> Callable[[bytes], bytes]:
    return ed25519_signer(key)


def refused(verify: Callable[[str], object], token: Any) -> AuthError:
    with pytest.raises(AuthError) as info:
        verify(token)
    return info.value
