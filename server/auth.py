"""Short-lived JWT access tokens: minting and strict verification.

Where it sits: above `server.store` (which keeps the Ed25519 key) and below the app. ``/oauth/token``
calls `TokenAuthority.mint_node_token` after checking a node credential; the tunnel handshake calls
`verify_node_token`; the REST/RPC/MCP endpoints call `verify_user_token`; ``/.well-known/jwks.json``
serves `TokenAuthority.jwks`. It does no I/O besides logging.

The server only ever verifies tokens it minted itself, so verification accepts exactly one shape and
refuses everything else. The checks, in order (each failure is an `AuthError` with the reason shown):

1. The compact form: a ``str`` of at most 8 KiB, ASCII, exactly three non-empty base64url segments, a
   header and a payload that are JSON objects without duplicate members.       -> malformed / oversized
2. ``alg`` is exactly ``Ed25519`` (no ``none``, no HMAC, RSA, ECDSA, not even ``EdDSA``).  -> bad_algorithm
3. The header holds only ``alg``, ``typ``, ``kid``: ``jku``/``jwk``/``x5u``/``x5c``/``crit``/... are
   refused, never fetched or honoured.                                           -> forbidden_header
4. ``kid`` is the kid of one of our keys: the signing key or a *trusted* one (another active key of
   the shared store, in the JWKS too). It is compared, never used as a path or URL.  -> unknown_kid
5. ``typ`` is ``at+jwt`` (RFC 9068).                                             -> bad_type
6. The Ed25519 signature (64 bytes) over ``header.payload``.                      -> bad_signature
7. Claims present and typed: ``iss sub aud ws iat exp jti`` (+ ``role``).      -> missing_claim / bad_claim
8. ``iss`` is ours.                                                              -> wrong_issuer
9. Time, with a leeway of at most 5 s: ``now < exp + leeway``; ``iat <= now + leeway``; ``nbf`` (if
   present) ``<= now + leeway``; ``iat < exp``.  -> expired / issued_in_future / not_yet_valid / bad_claim
10. ``aud`` is the verifier's audience: ``cortex-node`` for the tunnel, ``cortex-api`` for the API. A
    genuine, current token carrying the other audience is a valid token in the wrong place: status 403;
    every other failure is 401.                                                   -> wrong_audience
    Then ``exp - iat`` within the maximum lifetime (900 s node, 30 days user).    -> lifetime_exceeded
11. Node tokens only: the optional *is_revoked* hook.                             -> revoked

Tokens are never logged: a refusal logs its reason, and ``sub``/``jti`` only once the signature proved
they are ours.

A user token that passed every check is remembered, claims and all (LRU, at most `USER_CACHE_SIZE`; an
MCP client presents the same token on every HTTP request): its next use re-checks only what can change
— time (9) against its remembered claims, and *is_user_revoked* — and on any doubt it is verified afresh
from 1, so it is refused with the same reason as without the cache. Only the exact same string hits.

Exception tree::

    AuthError           -- a token was refused; ``reason`` (short code above) and ``status`` (401/403)
"""

from __future__ import annotations

import base64
import json
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey

from server.store import NAME_PATTERN

__all__ = [
    "ALGORITHM",
    "MAX_NODE_TTL",
    "MAX_USER_TTL",
    "NODE_AUDIENCE",
    "REPLICA_AUDIENCE",
    "TOKEN_TYPE",
    "USER_AUDIENCE",
    "AuthError",
    "NodeClaims",
    "TokenAuthority",
    "UserClaims",
]

logger = logging.getLogger(__name__)

ALGORITHM = "Ed25519"
"""The only JWS algorithm minted or accepted (RFC 9864 fully-specified EdDSA)."""

TOKEN_TYPE = "at+jwt"
"""The ``typ`` header of every token (RFC 9068 JWT access token)."""

NODE_AUDIENCE = "cortex-node"
USER_AUDIENCE = "cortex-api"
REPLICA_AUDIENCE = "cortex-replica"
"""Replica-to-replica links of a cluster (`server.replica_link`): useless on the tunnel and the API."""
REPLICA_TTL = 60

MAX_NODE_TTL = 900
"""Hard ceiling of a node token's lifetime (CONTRACT §3); ``max_ttl`` may lower it, never raise it."""

MAX_USER_TTL = 7 * 24 * 3600
"""Ceiling of a user token's lifetime. User tokens are issued by an operator (``issue-token``) and pasted
into a dashboard or script, so they are allowed to live longer than node tokens, which are re-minted
automatically from the node credential; a week bounds the damage of a leaked one, and
``cortex-server revoke-user`` ends it at once."""

MAX_LEEWAY = 5
SIGNATURE_CACHE_SIZE = 4096  # tokens remembered as correctly signed (LRU); a miss only costs a verify
USER_CACHE_SIZE = 4096  # user tokens remembered as verified, with their claims (LRU; see the docstring)
MAX_TOKEN_BYTES = 8 * 1024
"""Anything longer than this is refused before any parsing (ours are ~400 bytes)."""

_ALLOWED_HEADER = frozenset({"alg", "typ", "kid"})
_B64URL = re.compile(r"^[A-Za-z0-9_-]+$")
_ROLES = ("member", "admin")
_MAX_SUB_LEN = 128
_MAX_JTI_LEN = 128


class AuthError(Exception):
    """A token was refused.

    ``reason`` is a short stable code (malformed, oversized, bad_algorithm, forbidden_header, unknown_kid,
    bad_type, bad_signature, missing_claim, bad_claim, wrong_issuer, expired, issued_in_future,
    not_yet_valid, lifetime_exceeded, wrong_audience, revoked); ``status`` is the HTTP status to answer
    with: 403 for ``wrong_audience`` (a genuine token used in the wrong place), 401 for everything else.
    The message never contains the token.
    """

    def __init__(self, reason: str, status: int = 401) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status

    def __repr__(self) -> str:
        return f"AuthError(reason={self.reason!r}, status={self.status})"


@dataclass(frozen=True, slots=True)
class NodeClaims:
    """A verified node access token: ``sub`` is the node name, ``ws`` its workspace."""

    sub: str
    ws: str
    exp: int
    jti: str


@dataclass(frozen=True, slots=True)
class UserClaims:
    """A verified user token: ``role`` is ``member`` (own workspace only) or ``admin`` (all)."""

    sub: str
    ws: str
    role: Literal["member", "admin"]
    exp: int
    jti: str
    iat: int = field(default=0, compare=False)
    """When it was issued (``cortex-server revoke-user`` kills tokens issued up to a time)."""


def _b64decode(segment: str) -> bytes:
    # Strict base64url without padding: the alphabet was checked by the caller; reject non-canonical
    # trailing bits by re-encoding, so one token has exactly one spelling.
    raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != segment:
        raise ValueError("non-canonical base64url")
    return raw


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            # Two "alg" or two "aud" members are read differently by different parsers: refuse.
            raise ValueError(f"duplicate member {key!r}")
        result[key] = value
    return result


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except RecursionError:  # nested past the C parser's limit: read before the signature, so anyone's
        raise ValueError("nested too deep") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _int_claim(claims: dict[str, Any], name: str, required: bool = True) -> int | None:
    if name not in claims:
        if required:
            raise AuthError("missing_claim")
        return None
    value = claims[name]
    # bool is an int subclass; floats are refused because we only ever mint integers.
    if type(value) is not int:
        raise AuthError("bad_claim")
    return value


def _str_claim(claims: dict[str, Any], name: str, max_len: int = _MAX_SUB_LEN) -> str:
    if name not in claims:
        raise AuthError("missing_claim")
    value = claims[name]
    if not isinstance(value, str) or not value or len(value) > max_len or not value.isprintable():
        raise AuthError("bad_claim")
    return value


class TokenAuthority:
    """Mints and verifies the server's tokens with one Ed25519 key.

    *key* is the private `OKPKey` from `Store.load_or_create_signing_key`. *node_ttl* is the
    default node token lifetime, *max_ttl* the longest accepted (≤ 900), *leeway* the clock skew
    tolerated (≤ 5 s). *clock* returns Unix seconds (tests pass a fixed one). *is_revoked*, if given, is
    asked about every node token's ``sub`` after all other checks (keep it fast: an in-memory set);
    *is_user_revoked(sub, ws, iat)* likewise about every user token (``cortex-server revoke-user``).
    *trusted* are further keys (the store's other active keys, `Store.signing_keys`): tokens they
    signed verify and the JWKS lists them, but only *key* signs.
    """

    def __init__(
        self,
        key: OKPKey,
        issuer: str = "cortex",
        node_ttl: int = 300,
        max_ttl: int = MAX_NODE_TTL,
        leeway: int = 5,
        *,
        clock: Callable[[], float] = time.time,
        is_revoked: Callable[[str], bool] | None = None,
        is_user_revoked: Callable[[str, str, int], bool] | None = None,
        trusted: Sequence[OKPKey] = (),
    ) -> None:
        if not isinstance(key, OKPKey) or key.curve_name != "Ed25519" or not key.is_private:
            raise ValueError("the signing key must be a private Ed25519 OKPKey")
        if not 1 <= max_ttl <= MAX_NODE_TTL:
            raise ValueError(f"max_ttl must be between 1 and {MAX_NODE_TTL} seconds")
        if not 1 <= node_ttl <= max_ttl:
            raise ValueError(f"node_ttl must be between 1 and max_ttl ({max_ttl}) seconds")
        if not 0 <= leeway <= MAX_LEEWAY:
            raise ValueError(f"leeway must be between 0 and {MAX_LEEWAY} seconds")
        if not issuer:
            raise ValueError("issuer must not be empty")
        self._key = key
        self._kid: str = key.kid or key.thumbprint()
        # kid -> key, the signing key first (the JWKS order); a trusted key is used only to verify.
        self._keys: dict[str, OKPKey] = {self._kid: key}
        for other in trusted:
            if not isinstance(other, OKPKey) or other.curve_name != "Ed25519":
                raise ValueError("a trusted key must be an Ed25519 OKPKey")
            self._keys.setdefault(other.kid or other.thumbprint(), other)
        self._issuer = issuer
        self._node_ttl = node_ttl
        self._max_ttl = max_ttl
        self._leeway = leeway
        self._clock = clock
        self._is_revoked = is_revoked
        self._is_user_revoked = is_user_revoked
        # Tokens whose Ed25519 signature already checked out under this key (a pure function of token
        # and key): an MCP client presents the same token on every HTTP request, and the signature is
        # most of the cost of checking it. Every claim check (exp, aud, revocation...) still runs.
        self._signed_ok: OrderedDict[str, None] = OrderedDict()
        # Verified user tokens -> (claims, the later of iat and nbf): the docstring's last paragraph.
        self._user_ok: OrderedDict[str, tuple[UserClaims, int]] = OrderedDict()
        self._header = {"alg": ALGORITHM, "typ": TOKEN_TYPE, "kid": self._kid}

    @property
    def kid(self) -> str:
        return self._kid

    @property
    def issuer(self) -> str:
        return self._issuer

    @property
    def leeway(self) -> int:
        """Seconds past ``exp`` a token still verifies (≤ `MAX_LEEWAY`)."""
        return self._leeway

    # -- minting -------------------------------------------------------------------------------------

    def _mint(self, claims: dict[str, Any]) -> str:
        return jwt.encode(self._header, claims, self._key, algorithms=[ALGORITHM])

    def mint_node_token(self, name: str, workspace: str, ttl: int | None = None) -> tuple[str, int]:
        """A node access token for *name*; returns ``(token, expires_in)``. *ttl* is capped at max_ttl."""
        if not NAME_PATTERN.fullmatch(name) or not NAME_PATTERN.fullmatch(workspace):
            raise ValueError("invalid node name or workspace")
        lifetime = self._node_ttl if ttl is None else min(int(ttl), self._max_ttl)
        if lifetime < 1:
            raise ValueError("ttl must be positive")
        now = int(self._clock())
        claims = {
            "iss": self._issuer,
            "sub": name,
            "aud": NODE_AUDIENCE,
            "ws": workspace,
            "iat": now,
            "exp": now + lifetime,
            "jti": secrets.token_urlsafe(16),
        }
        return self._mint(claims), lifetime

    def mint_user_token(self, sub: str, workspace: str, role: str = "member", ttl: int = 3600) -> str:
        """A user token for the API/RPC/MCP/dashboard. *ttl* from 1 s to 30 days (`MAX_USER_TTL`)."""
        if not isinstance(sub, str) or not sub or len(sub) > _MAX_SUB_LEN or not sub.isprintable():
            raise ValueError("invalid user name")
        if not NAME_PATTERN.fullmatch(workspace):
            raise ValueError("invalid workspace")
        if role not in _ROLES:
            raise ValueError("role must be 'member' or 'admin'")
        if not 1 <= int(ttl) <= MAX_USER_TTL:
            raise ValueError(f"ttl must be between 1 and {MAX_USER_TTL} seconds")
        now = int(self._clock())
        claims = {
            "iss": self._issuer,
            "sub": sub,
            "aud": USER_AUDIENCE,
            "ws": workspace,
            "role": role,
            "iat": now,
            "exp": now + int(ttl),
            "jti": secrets.token_urlsafe(16),
        }
        return self._mint(claims)

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The public key set for ``/.well-known/jwks.json`` (never the private part)."""
        entries = []
        for kid, key in self._keys.items():
            public = key.as_dict(private=False)
            entries.append(
                {
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": str(public["x"]),
                    "kid": kid,
                    "alg": ALGORITHM,
                    "use": "sig",
                }
            )
        return {"keys": entries}

    # -- verification --------------------------------------------------------------------------------

    def verify_node_token(self, token: str) -> NodeClaims:
        """Check a node access token (the tunnel handshake). Raises `AuthError`."""
        claims = self._verify(token, NODE_AUDIENCE, self._max_ttl, "node")
        sub, jti = claims["sub"], claims["jti"]
        if not NAME_PATTERN.fullmatch(sub):
            raise self._refuse("bad_claim", "node", sub, jti)
        if self._is_revoked is not None and self._is_revoked(sub):
            raise self._refuse("revoked", "node", sub, jti)
        return NodeClaims(sub=sub, ws=claims["ws"], exp=claims["exp"], jti=jti)

    def verify_user_token(self, token: str) -> UserClaims:
        """Check a user token (REST, RPC, MCP, dashboard). Raises `AuthError`."""
        known = self._user_ok.get(token) if isinstance(token, str) else None
        if known is not None:
            remembered, valid_from = known
            now, leeway = self._clock(), self._leeway
            if (
                now < remembered.exp + leeway
                and valid_from <= now + leeway
                and not (
                    self._is_user_revoked is not None
                    and self._is_user_revoked(remembered.sub, remembered.ws, remembered.iat)
                )
            ):
                self._user_ok.move_to_end(token)
                return remembered
            del self._user_ok[token]  # verified afresh below: refused with its reason, and logged
        claims = self._verify(token, USER_AUDIENCE, MAX_USER_TTL, "user")
        role = claims.get("role")
        if role is None:
            raise self._refuse("missing_claim", "user", claims["sub"], claims["jti"])
        if role not in _ROLES:
            raise self._refuse("bad_claim", "user", claims["sub"], claims["jti"])
        if self._is_user_revoked is not None and self._is_user_revoked(
            claims["sub"], claims["ws"], claims["iat"]
        ):
            raise self._refuse("revoked", "user", claims["sub"], claims["jti"])
        verified = UserClaims(
            sub=claims["sub"],
            ws=claims["ws"],
            role=role,
            exp=claims["exp"],
            jti=claims["jti"],
            iat=claims["iat"],
        )
        self._user_ok[token] = (verified, max(claims["iat"], claims.get("nbf") or claims["iat"]))
        if len(self._user_ok) > USER_CACHE_SIZE:
            self._user_ok.popitem(last=False)
        return verified

    def _refuse(self, reason: str, kind: str, sub: str | None = None, jti: str | None = None) -> AuthError:
        status = 403 if reason == "wrong_audience" else 401
        if sub is None:
            logger.info("refused %s token: %s", kind, reason)
        else:
            logger.info("refused %s token: %s (sub=%r jti=%r)", kind, reason, sub, jti)
        return AuthError(reason, status)

    def _verify(self, token: str, audience: str, max_lifetime: int, kind: str) -> dict[str, Any]:
        # 1-6: everything before the signature. Nothing from an unverified token is logged.
        try:
            key = self._check_header(self._check_compact(token))
            self._check_signature(token, key)
            claims = _json_object(_b64decode(token.split(".")[1]))
        except AuthError as exc:
            raise self._refuse(exc.reason, kind) from None
        except (ValueError, UnicodeError):
            raise self._refuse("malformed", kind) from None
        # 7-10: the claims, now known to be ours.
        raw_sub, raw_jti = claims.get("sub"), claims.get("jti")
        sub = raw_sub if isinstance(raw_sub, str) and raw_sub.isprintable() else None
        jti = raw_jti if isinstance(raw_jti, str) and raw_jti.isprintable() else None
        try:
            self._check_claims(claims, audience, max_lifetime)
        except AuthError as exc:
            raise self._refuse(exc.reason, kind, sub, jti) from None
        return claims

    @staticmethod
    def _check_compact(token: str) -> dict[str, Any]:
        if not isinstance(token, str):
            raise AuthError("malformed")
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthError("oversized")
        parts = token.split(".")
        if len(parts) != 3 or not all(_B64URL.fullmatch(p) for p in parts):
            raise AuthError("malformed")
        return _json_object(_b64decode(parts[0]))

    def _check_header(self, header: dict[str, Any]) -> OKPKey:
        """Rules 2-5; returns the key whose kid the header names."""
        alg = header.get("alg")
        if alg != ALGORITHM:  # exact, case-sensitive: "none", "NONE", "HS256", "EdDSA" ... all refused
            raise AuthError("bad_algorithm")
        if not header.keys() <= _ALLOWED_HEADER:
            raise AuthError("forbidden_header")
        kid = header.get("kid")
        key = None
        if isinstance(kid, str):
            for known, candidate in self._keys.items():
                if secrets.compare_digest(kid.encode(), known.encode()):
                    key = candidate
        if key is None:
            raise AuthError("unknown_kid")
        if header.get("typ") != TOKEN_TYPE:
            raise AuthError("bad_type")
        return key

    def _check_signature(self, token: str, key: OKPKey) -> None:
        if token in self._signed_ok:
            self._signed_ok.move_to_end(token)
            return
        if len(_b64decode(token.rsplit(".", 1)[1])) != 64:
            raise AuthError("bad_signature")
        try:
            # algorithms pinned: joserfc's default list would admit HS256/RS256/ES256.
            jws.deserialize_compact(token, key, algorithms=[ALGORITHM])
        except JoseError:
            raise AuthError("bad_signature") from None
        self._signed_ok[token] = None
        if len(self._signed_ok) > SIGNATURE_CACHE_SIZE:
            self._signed_ok.popitem(last=False)

    def _check_claims(self, claims: dict[str, Any], audience: str, max_lifetime: int) -> None:
        iss = _str_claim(claims, "iss")
        _str_claim(claims, "sub")
        _str_claim(claims, "ws")
        _str_claim(claims, "jti", _MAX_JTI_LEN)
        if "aud" not in claims:
            raise AuthError("missing_claim")
        aud = claims["aud"]
        exp = _int_claim(claims, "exp")
        iat = _int_claim(claims, "iat")
        nbf = _int_claim(claims, "nbf", required=False)
        assert exp is not None and iat is not None
        if not secrets.compare_digest(iss.encode(), self._issuer.encode()):
            raise AuthError("wrong_issuer")
        now = self._clock()
        leeway = self._leeway
        if now >= exp + leeway:
            raise AuthError("expired")
        if iat > now + leeway:
            raise AuthError("issued_in_future")
        if nbf is not None and nbf > now + leeway:
            raise AuthError("not_yet_valid")
        if exp <= iat:
            raise AuthError("bad_claim")
        # After the time checks, so 403 means "a genuine, current token of ours, meant for the other
        # side" (a user token on the tunnel, a node token on the API).
        if aud != audience:
            raise AuthError("wrong_audience" if isinstance(aud, str | list) else "bad_claim")
        if exp - iat > max_lifetime:
            raise AuthError("lifetime_exceeded")

    # -- replica links (server.replica_link) -----------------------------------------------------------

    def mint_replica_token(self, replica_id: str) -> str:
        """A short-lived token one replica shows another when it opens a replica link."""
        if not NAME_PATTERN.fullmatch(replica_id):
            raise ValueError("invalid replica id")
        now = int(self._clock())
        claims = {
            "iss": self._issuer,
            "sub": replica_id,
            "aud": REPLICA_AUDIENCE,
            "ws": "cluster",
            "iat": now,
            "exp": now + REPLICA_TTL,
            "jti": secrets.token_urlsafe(16),
        }
        return self._mint(claims)

    def verify_replica_token(self, token: str) -> str:
        """The replica id of a replica token, after every check a node token gets; raises AuthError."""
        claims = self._verify(token, REPLICA_AUDIENCE, REPLICA_TTL, "replica")
        return str(claims["sub"])
