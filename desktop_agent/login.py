"""`cortex-agent login`: check a node credential against the server before it is stored.

Layering: a leaf of `desktop_agent` used by cli.py only; it speaks the same client-credentials grant as
`NodeAgent.mint_token` (connection.py) with one synchronous HTTP request.

Rules:
1. 200 with an access token: the credential is good; the token's `ws` claim names the workspace.
2. 400/401/403 at `/oauth/token`: REFUSED, nothing is stored (exit 3).
3. The server cannot be reached (connection refused, DNS, TLS, timeout, 5xx): UNREACHABLE; the caller
   stores the credential anyway with a warning (a laptop may be set up while offline).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import httpx2

from desktop_agent.connection import token_workspace

__all__ = ["CredentialCheck", "CredentialVerdict", "check_credential"]


class CredentialVerdict(StrEnum):
    ACCEPTED = "accepted"
    REFUSED = "refused"
    UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class CredentialCheck:
    verdict: CredentialVerdict
    detail: str = ""
    workspace: str | None = None


def check_credential(
    server: str, name: str, credential: str, *, ssl_context: ssl.SSLContext | None = None, timeout: float = 10
) -> CredentialCheck:
    verify: Any = ssl_context or True
    try:
        response = httpx2.post(
            server.rstrip("/") + "/oauth/token",
            data={"grant_type": "client_credentials", "client_id": name, "client_secret": credential},
            verify=verify,
            timeout=timeout,
        )
    except (httpx2.HTTPError, OSError, ssl.SSLError) as exc:
        return CredentialCheck(CredentialVerdict.UNREACHABLE, f"{type(exc).__name__}: {exc}")
    if response.status_code in (400, 401, 403):
        return CredentialCheck(CredentialVerdict.REFUSED, f"HTTP {response.status_code}")
    if response.status_code != 200:
        return CredentialCheck(CredentialVerdict.UNREACHABLE, f"HTTP {response.status_code}")
    try:
        token = str(response.json()["access_token"])
    except (ValueError, KeyError, TypeError):
        return CredentialCheck(CredentialVerdict.UNREACHABLE, "the answer was not a token response")
    return CredentialCheck(CredentialVerdict.ACCEPTED, workspace=token_workspace(token))
