"""The redaction pre-check (`desktop_agent.redaction._ANY`): one search that lets an ordinary string skip
the ten redaction passes. It must be exact: whenever any pass would change a text, the pre-check matches.
Checked against the full passes over the shapes of CONTRACT §8 and ordinary text, and per pattern; and
the one-word fast path of `is_secret_key` against its RE2 split."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from desktop_agent import redaction
from desktop_agent.redaction import _ANY, _ANY_SET, _redact_passes, redact_text
from tests.test_redaction import ORDINARY_TEXT, STRING_CASES

# One sample per pattern, each matching that pattern (and changed by the full passes where it is a secret).
PER_PATTERN = {
    "_PEM": "-----BEGIN RSA PRIVATE KEY-----\nabc\n-----END RSA PRIVATE KEY-----",
    "_TOKENS": "ghs_" + "Z" * 30,
    "_HEADER": "proxy-authorization: basic-ish",
    "_BEARER": "Bearer abcdefgh12",
    "_URL_CREDENTIALS": "ftp://u:p@host",
    "_USER_OPTION": "wget --proxy-user=me:pw1",
    "_MYSQL": "mariadb-dump -pS3cret db",
    "_SSHPASS": "sshpass -p pw2 ssh h",
    "_OPTION": "tool --client-secret=abc",
    "_ASSIGN": "TOKEN=abc",
}


@pytest.mark.parametrize("name", sorted(PER_PATTERN))
def test_every_pattern_is_part_of_the_precheck(name: str) -> None:
    text = PER_PATTERN[name]
    assert getattr(redaction, name).search(text), "the sample must match its own pattern"
    assert _ANY.search(text)
    assert redact_text(text) == _redact_passes(text) != text


@pytest.mark.parametrize(
    "text",
    [t for t, _secret in STRING_CASES]
    + ORDINARY_TEXT
    + list(PER_PATTERN.values())
    + ["x" * 64, "", "a=b c=d", "--verbose --out=x", "KEY", "pat=1", "héllo wörld ✓", "-p 8080", "\n" * 3],
)
def test_precheck_gives_what_the_full_passes_give(text: str) -> None:
    assert redact_text(text) == _redact_passes(text)
    assert bool(_ANY_SET.Match(text)) == bool(_ANY.search(text))
    if not _ANY.search(text):
        assert _redact_passes(text) == text  # skipping the passes lost nothing


# Pieces of every pattern's shapes, so generated texts often come near a match (and often make one).
_PIECES = [
    "TOKEN", "token", "key", "KEY", "pass", "PWD", "pat", "auth", "Bearer ", "basic ", "://", "@", ":",
    "=", " ", "-", "--", "-u ", "-p", "_", ".", '"', "'", "ghp_", "sk-", "AKIA", "eyJ", "xoxb-",
    "glpat-", "AIza", "mysql ", "sshpass ", "-----BEGIN ", "PRIVATE KEY-----", "\n", "\r\n", "é", "✓",
    "abcdefghij", "ABCDEFGHIJKLMNOP", "0123456789",
]  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_PIECES) | st.text(max_size=6), max_size=24).map("".join))
def test_the_precheck_set_matches_exactly_where_the_alternation_does(text: str) -> None:
    """`_redact_window` asks the RE2 set; the set must say yes exactly where `_ANY.search` finds a match."""
    assert bool(_ANY_SET.Match(text)) == bool(_ANY.search(text))
    assert redact_text(text) == _redact_passes(text)


@pytest.mark.parametrize(
    "name",
    [
        "text",
        "PWD",
        "pat",
        "apikey",
        "passcode",
        "keyboard",
        "monkey",
        "path",
        "KEY",
        "x9",
        "DBPWD",
        "\u0131",  # dotless i: upper-cases to ASCII I
        "\u017f",  # long s: upper-cases to ASCII S
    ],
)
def test_one_word_key_fast_path_agrees_with_the_split(name: str) -> None:
    # A trailing "_" sends the same words through the RE2 split: both paths must agree.
    assert redaction.is_secret_key(name) == redaction.is_secret_key(name + "_")
