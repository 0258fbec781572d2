"""`POST /oauth/token`: the OAuth 2.0 client-credentials grant (RFC 6749 §4.4) by which nodes get tokens.

Errors use RFC 6749 §5.2 bodies: ``invalid_request`` (400), ``unsupported_grant_type`` (400),
``invalid_client`` (401). The credential is checked against its hash in the store; it is never logged.
Failed attempts back off per ``client_id`` and per remote address (`server.backoff`): a blocked one is
answered 429 ``too_many_requests`` with ``Retry-After`` before any credential is checked.
"""

from __future__ import annotations

import base64
import logging
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.backoff import FailureBackoff

if TYPE_CHECKING:
    from server.state import ServerState

__all__ = ["token_endpoint"]

logger = logging.getLogger(__name__)

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _oauth_error(status: int, error: str, description: str) -> JSONResponse:
    headers = dict(_NO_STORE)
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="cortex"'
    return JSONResponse(
        {"error": error, "error_description": description}, status_code=status, headers=headers
    )


def _slow_down(seconds: float) -> JSONResponse:
    headers = {**_NO_STORE, "Retry-After": FailureBackoff.header_value(seconds)}
    return JSONResponse(
        {"error": "too_many_requests", "error_description": "too many failed attempts; retry later"},
        status_code=429,
        headers=headers,
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
    # Its size is bounded before we get here: the limits middleware answers 413 past 64 KiB (CONTRACT §1).
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
    backoff = state.oauth_backoff
    address = request.client.host if request.client is not None else "unknown"
    client_key = client_id[:128]  # bounded: the table must not hold megabyte keys
    # The address table guards only names that are not enrolled (spraying made-up client ids): nodes
    # behind one NAT or load balancer share an address, and a hostile one must not lock the others out.
    # An enrolled name is guarded by its own table.
    by_address = not state.nodes.is_enrolled(client_key)
    wait = await backoff.clients.retry_after(client_key)
    if by_address:
        wait = max(wait, await backoff.addresses.retry_after(address))
    if wait > 0:
        state.metrics.refused("backoff")
        return _slow_down(wait)
    if not client_id or not secret:
        await backoff.addresses.failed(address)
        return _oauth_error(401, "invalid_client", "client authentication failed")
    record = await state.store.verify_credential(client_id, secret)
    if record is None:
        if by_address:
            await backoff.addresses.failed(address)
        await backoff.clients.failed(client_key)
        state.metrics.refused("invalid_client")
        logger.info("token request refused for client %r", client_id[:64])
        return _oauth_error(401, "invalid_client", "client authentication failed")
    await backoff.clients.succeeded(client_key)
    token, expires_in = state.authority.mint_node_token(record.name, record.workspace)
    return JSONResponse(
        {"access_token": token, "token_type": "Bearer", "expires_in": expires_in}, headers=_NO_STORE
    )
