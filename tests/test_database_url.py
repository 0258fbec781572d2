"""``--database-url``: which engine a URL names, and that its password never shows (server.stores)."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import ServerConfig
from server.store import StoreError
from server.stores import ENGINE_POSTGRESQL, ENGINE_SQLITE, engine_of, redact_url


@pytest.mark.parametrize(
    ("url", "engine"),
    [
        (None, ENGINE_SQLITE),
        ("", ENGINE_SQLITE),
        ("postgresql://cortex@127.0.0.1:5432/cortex", ENGINE_POSTGRESQL),
        ("postgres://u:p@db.example/cortex?sslmode=require", ENGINE_POSTGRESQL),
    ],
)
def test_engine_of(url: str | None, engine: str) -> None:
    assert engine_of(url) == engine


@pytest.mark.parametrize(
    "url",
    [
        "mysql://u:pw@h/db",
        "sqlite:///x.db",
        "redis://h:6379/0",
        "postgresql:nohost",
        "cortex.db",
        "://",
        "POSTGRESQL://u@h/db",
    ],
)
def test_other_urls_are_refused_naming_the_accepted_form(url: str) -> None:
    with pytest.raises(StoreError) as caught:
        engine_of(url)
    assert "postgresql://" in str(caught.value)
    assert ":pw@" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://cortex:s3cret@h:5432/db", "postgresql://cortex:***@h:5432/db"),
        ("postgresql://cortex:p@ss@h/db", "postgresql://cortex:***@h/db"),  # an unescaped @ in the password
        (
            "postgresql://cortex@h/db?password=s3cret&sslmode=require",
            "postgresql://cortex@h/db?password=***&sslmode=require",
        ),
        ("postgresql://h/db", "postgresql://h/db"),
        ("not a url", "not a url"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_the_config_repr_never_shows_the_database_url(tmp_path: Path) -> None:
    config = ServerConfig(data_dir=tmp_path, database_url="postgresql://cortex:s3cret@h/db")
    assert "s3cret" not in repr(config)
