"""Which engine keeps the server's state: ``--database-url`` parsed, redacted for logs, and opened.

Where it sits: between the entry points (`server.cli`, `server.admin`, `server.app`) and the `Store`
implementations, `server.stores.sqlite.SQLiteStore` (the embedded default) and
`server.stores.postgres.PostgresStore` (state shared by replicas). The interface itself, `Store`, lives in
`server.store` with the data types and the error tree.

Rules:

1. No URL (None or empty): the SQLite file ``cortex.db`` in the data directory, as always.
2. ``postgresql://`` or ``postgres://`` (libpq's two spellings): PostgreSQL. Any other scheme, or a URL
   libpq cannot parse, is a `StoreError` that names the accepted forms.
3. A database URL is never shown as given: `redact_url` replaces the password (in the authority or as a
   ``password=`` query parameter) before the URL reaches a log line or an error message.
"""

from __future__ import annotations

import re
from pathlib import Path

from server.store import Store, StoreError

__all__ = ["ENGINE_POSTGRESQL", "ENGINE_SQLITE", "engine_of", "open_store", "redact_url"]

ENGINE_SQLITE = "sqlite"
ENGINE_POSTGRESQL = "postgresql"

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_PASSWORD_PARAM = re.compile(r"(?i)([?&]password=)[^&#]*")
_FORMS = "postgresql://user[:password]@host:port/database, or no --database-url for the SQLite file"


def redact_url(url: str) -> str:
    """*url* with any password replaced by ``***`` (rule 3); safe on malformed input."""
    text = str(url)
    head, sep, rest = text.partition("://")
    if sep:
        at = rest.rfind("@")
        if at >= 0:
            userinfo, host = rest[:at], rest[at:]
            user, colon, _password = userinfo.partition(":")
            rest = f"{user}:***{host}" if colon else rest
        text = head + sep + rest
    return _PASSWORD_PARAM.sub(r"\1***", text)


def engine_of(database_url: str | None) -> str:
    """`ENGINE_SQLITE` or `ENGINE_POSTGRESQL` for *database_url* (rules 1-2); `StoreError` otherwise."""
    if not database_url:
        return ENGINE_SQLITE
    match = _SCHEME.match(database_url)
    scheme = match.group(1).lower() if match else ""
    if scheme not in ("postgresql", "postgres") or not database_url[len(scheme) + 1 :].startswith("//"):
        raise StoreError(f"unsupported --database-url {redact_url(database_url)!r}: use {_FORMS}")
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(database_url)
    except Exception:  # libpq's message may quote the URL: say it in our own words
        raise StoreError(
            f"--database-url {redact_url(database_url)!r} is not a valid URL: use {_FORMS}"
        ) from None
    return ENGINE_POSTGRESQL


async def open_store(database_url: str | None, data_dir: Path) -> Store:
    """Open (and migrate) the store *database_url* names; the SQLite one in *data_dir* by default."""
    if engine_of(database_url) == ENGINE_SQLITE:
        from server.stores.sqlite import SQLiteStore

        return await SQLiteStore.open(data_dir)
    from server.stores.postgres import PostgresStore

    assert database_url is not None
    return await PostgresStore.open(database_url)
