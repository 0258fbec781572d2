"""`POST /oauth/token`: the OAuth 2.0 client-credentials grant (RFC 6749 §4.4) by which nodes get tokens.

Errors use RFC 6749 §5.2 bodies: ``invalid_request`` (400), ``unsupported_grant_type`` (400),
``invalid_client`` (401). The credential is checked against its hash in the store; it is never logged.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

if TYPE_CHECKING:
    from server.app import ServerState

__all__ = ["token_endpoint"]

logger = logging.getLogger(__name__)

_MAX_BODY = 8192
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _oauth_error(status: int, error: str, description: str) -> JSONResponse:
    headers = dict(_NO_STORE)
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="cortex"'
    return JSONResponse(
        {"error": error, "error_description": description}, status_code=status, headers=headers
    )


def _basic_auth(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return (unquote(user), unquote(password)) if sep else None


async def token_endpoint(request: Request) -> Response:
    state: ServerState = request.app.state.cortex
    body = await request.body()
    if len(body) > _MAX_BODY:
        return _oauth_error(400, "invalid_request", "request body too large")
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return _oauth_error(400, "invalid_request", "use application/x-www-form-urlencoded")
    try:
        form = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False))
    except UnicodeDecodeError:
        return _oauth_error(400, "invalid_request", "the body is not UTF-8")
    if form.get("grant_type") != "client_credentials":
        return _oauth_error(400, "unsupported_grant_type", "only client_credentials is supported")
    client = _basic_auth(request.headers.get("authorization", ""))
    client_id, secret = client if client else (form.get("client_id", ""), form.get("client_secret", ""))
    if not client_id or not secret:
        return _oauth_error(401, "invalid_client", "client authentication failed")
    record = await asyncio.to_thread(state.store.verify_credential, client_id, secret)
    if record is None:
        state.metrics.refused("invalid_client")
        logger.info("token request refused for client %r", client_id[:64])
        return _oauth_error(401, "invalid_client", "client authentication failed")
    token, expires_in = state.authority.mint_node_token(record.name, record.workspace)
    return JSONResponse(
        {"access_token": token, "token_type": "Bearer", "expires_in": expires_in}, headers=_NO_STORE
    )
