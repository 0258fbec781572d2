"""Redaction (CONTRACT §8's list): a table of secret shapes that never reach audit.log, and ordinary text
that is left alone; then real tool calls through a real agent, with the log searched for every secret."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from desktop_agent.redaction import MAX_AUDIT_STRING, MAX_VALUES, REDACTED, is_secret_key, redact, redact_text
from sdk import AsyncClient
from tests.support.procs import AgentProc, ServerProc

# (text, the secret in it). Every secret is unique so a search of the log finds exactly that one.
STRING_CASES = [
    ("export PGPASSWORD=pg-Secret-1 && psql", "pg-Secret-1"),
    ("GITHUB_PAT=patvalue2 gh repo list", "patvalue2"),
    ("SESSION_ID=sess-value-3 ./run", "sess-value-3"),
    ("MY_PRIVATE_X='priv value 4' make", "priv value 4"),
    ("curl -H 'Authorization: Bearer bearer-val-5' https://h", "bearer-val-5"),
    ("curl -H 'Authorization: token tokval6xx' https://h", "tokval6xx"),
    ("curl -H 'Cookie: sid=cookie-val-7; theme=dark' https://h", "cookie-val-7"),
    ("git clone https://alice:url-pw-8@git.example/repo.git", "url-pw-8"),
    ("psql postgresql://cortex:pgurlpw9@127.0.0.1:5432/db", "pgurlpw9"),
    ("mysql -uroot -pmysqlpw10 shop", "mysqlpw10"),
    ("mysqldump --user=root -p'dumppw11' shop > x.sql", "dumppw11"),
    ("app --password hunter12 --verbose", "hunter12"),
    ("app --password=hunter13", "hunter13"),
    ("app --api-key apikeyval14", "apikeyval14"),
    ("curl -u bob:curlpw15 https://h", "curlpw15"),
    ("curl --user 'bob:curlpw16' https://h", "curlpw16"),
    ("sshpass -p sshpw17 ssh host", "sshpw17"),
    ("token ghp_" + "A" * 36 + " leaked", "ghp_" + "A" * 36),
    ("github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz", "github_pat_11ABCDEFG0123456789"),
    ("key sk-ant-api03-" + "b" * 40, "sk-ant-api03-" + "b" * 40),
    ("OPENAI sk-proj-" + "c" * 40, "sk-proj-" + "c" * 40),
    ("slack xoxb-1234567890-abcdefghij", "xoxb-1234567890-abcdefghij"),
    ("aws AKIAIOSFODNN7EXAMPLE ok", "AKIAIOSFODNN7EXAMPLE"),
    (
        "jwt eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXZhbHVl end",
        "eyJzdWIiOiJhbGljZSJ9",
    ),
    ('{"password": "json-pw-25", "user": "x"}', "json-pw-25"),
    ("db_password: yaml-pw-26", "yaml-pw-26"),
    (
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk27\n-----END OPENSSH PRIVATE KEY-----",
        "b3BlbnNzaC1rZXk27",
    ),
    ("X-Api-Key: apikey-hdr-28", "apikey-hdr-28"),
]

# Keys whose value is a secret, and keys that are ordinary.
SECRET_KEYS = [
    "PGPASSWORD", "GITHUB_PAT", "SESSION_ID", "MY_PRIVATE_X", "AWS_SECRET_ACCESS_KEY", "api_key", "apiKey",
    "Authorization", "OAUTH_TOKEN", "cookie", "DB_PASS", "dbpass", "passwd", "MYSQL_PWD", "credentials",
    "private_key", "access_key", "xsrfToken", "passphrase", "PWD",
]  # fmt: skip
ORDINARY_KEYS = ["monkey", "keyboard", "passage", "compass", "author", "authors", "path", "text", "command"]
ORDINARY_TEXT = [
    "the keyboard is in the passage",
    "turn the key and pass the monkey",
    "author: Jane Doe",
    "mkdir -p build/out && docker run -p 8080:80 img",
    "see https://example.com/path?q=1 and user@example.com",
    "ls -la /home/x; echo done",
    "the password policy is documented in README",
    "desk-organizer-for-small-rooms",
    "sort -u names.txt",
]


@pytest.mark.parametrize(("text", "secret"), STRING_CASES)
def test_every_listed_shape_is_redacted(text: str, secret: str) -> None:
    out = redact_text(text)
    assert secret not in out and REDACTED in out


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_secret_keys_lose_their_values(key: str) -> None:
    assert is_secret_key(key)
    assert redact({"env": {key: "value-xyz"}}) == {"env": {key: REDACTED}}


@pytest.mark.parametrize("key", ORDINARY_KEYS)
def test_ordinary_keys_keep_their_values(key: str) -> None:
    assert not is_secret_key(key)
    assert redact({key: "keyboard passage"}) == {key: "keyboard passage"}


@pytest.mark.parametrize("text", ORDINARY_TEXT)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact_text(text) == text


def test_long_strings_are_cut_with_length_and_digest_and_a_secret_across_the_cut_is_caught() -> None:
    secret = "ghp_" + "Z" * 36
    text = "x" * (MAX_AUDIT_STRING - 10) + " " + secret + "y" * 100
    out = redact_text(text)
    assert secret[:10] not in out and out.startswith("x" * 100)
    assert f"cut: {len(text)} chars, sha256 {hashlib.sha256(text.encode()).hexdigest()}" in out


def test_hostile_inputs_cost_linear_time_and_no_recursion() -> None:
    # Python's re needs quadratic time for these with patterns like `[A-Z_]*(?:TOKEN)[A-Z_]*`.
    started = time.monotonic()
    for text in ("A" * 200_000, "-" * 200_000, "a=" * 100_000, "://" * 60_000):
        redact_text(text[: MAX_AUDIT_STRING + 512])
        redact_text(text)
    assert time.monotonic() - started < 2.0
    deep: object = "PASSWORD=x"
    for _ in range(10_000):
        deep = [deep]
    redact(deep)  # no RecursionError


def test_one_record_costs_bounded_time_however_many_values_it_has() -> None:
    many = {
        "paths": ["PASSWORD=early-secret"] + [f"file{i}.txt" for i in range(200_000)] + ["ghp_" + "Q" * 36]
    }
    started = time.monotonic()
    out = redact(many)
    assert time.monotonic() - started < 1.0  # without the cap: ~13 s, on the audit log's event loop
    text = json.dumps(out)
    assert "early-secret" not in text and "Q" * 36 not in text and "more entries not recorded" in text
    wide = redact({f"K{i}": "v" for i in range(100_000)})
    assert len(wide) <= MAX_VALUES + 1 and "[cut]" in wide
    for pair in ("a=b ", "PASSWORD=b ", "--token b "):  # a candidate match every few characters
        dense = [pair * (4000 // len(pair)) + "TOKEN=dense-secret"] * 1500
        started = time.monotonic()
        text = json.dumps(redact({"lines": dense}))
        assert time.monotonic() - started < 1.0, pair
        assert "dense-secret" not in text and "not searched" in text


async def test_no_secret_of_the_list_reaches_audit_log_through_a_real_agent(
    server_proc: ServerProc, start_node: Callable[..., AgentProc], tmp_path: Path
) -> None:
    agent = start_node("laptop")
    root = tmp_path / "laptop-root"
    secrets = [secret for _, secret in STRING_CASES]
    env = {key: f"envsecret-{i}" for i, key in enumerate(SECRET_KEYS) if key != "PWD"}
    async with AsyncClient(server_proc.url, token=server_proc.token()) as client:
        for i, (text, _) in enumerate(STRING_CASES):
            await client.call("laptop", "echo", {"text": text})
            await client.call("laptop", "fs_write", {"path": str(root / f"f{i}.txt"), "content": text})
        await client.call(
            "laptop",
            "shell_exec",
            {"command": "true " + " ; ".join(t for t, _ in STRING_CASES[:6]), "env": env},
        )
    log = (agent.home / "audit.log").read_text()
    records = [json.loads(line) for line in log.splitlines()]
    assert sum(r["event"] == "tool.requested" for r in records) == 2 * len(STRING_CASES) + 1
    leaked = [s for s in [*secrets, *env.values()] if s in log]
    assert leaked == []
    # and the ordinary parts of those calls are still readable
    assert "gh repo list" in log and "keyboard" not in log
