"""The audit log's memo of redacted argument keys (`desktop_agent.redaction.KeyMemo`): the same records as
without it, whatever the keys, and bounded however many distinct keys a caller sends."""

from __future__ import annotations

from desktop_agent.redaction import MAX_SEARCHED_CHARS, REDACTED, KeyMemo, redact

ARGUMENTS = [
    {"text": "hello"},
    {"PGPASSWORD": "s3cret", "command": "psql -h db"},
    {"env": {"API_KEY": "k-1", "HOME": "/root", "token=abc": 1}, "path": "/tmp"},
    {"Authorization: Bearer abcdefghijkl": "x", "list": [{"password": "p"}, {"author": "a"}]},
    {"ghp_" + "A" * 30: "a token as a key", "monkey": "banana"},
]


def test_memo_gives_the_same_records_as_no_memo() -> None:
    memo = KeyMemo()
    for _round in range(3):  # first round fills the memo, later rounds answer from it
        for arguments in ARGUMENTS:
            assert redact(arguments, memo) == redact(arguments)
    assert redact({"PGPASSWORD": "s3cret"}, memo) == {"PGPASSWORD": REDACTED}
    assert REDACTED in next(iter(redact({"ghp_" + "A" * 30: 1}, memo)))  # the key itself is redacted


def test_memo_keeps_the_search_budget_exact() -> None:
    # Keys past the search budget are recorded as not searched, memo or not (rule 5).
    # Long keys, so that what the keys are charged decides which entry is the first one not searched.
    memo = KeyMemo()
    value = "y" * 4000
    arguments = {f"{i:03d}" + "k" * 197: value for i in range(MAX_SEARCHED_CHARS // 4200 + 4)}
    redact(arguments, memo)  # fills the memo with the keys searched while the budget lasted
    assert redact(arguments, memo) == redact(arguments)


def test_memo_is_bounded() -> None:
    memo = KeyMemo()
    for start in range(0, KeyMemo.MAX_KEYS + 500, 500):
        redact({f"key-{i}": i for i in range(start, start + 500)}, memo)
    redact({"k" * (KeyMemo.MAX_KEY_CHARS + 1): 1}, memo)
    assert len(memo) == KeyMemo.MAX_KEYS
    assert redact({"PGPASSWORD": "late"}, memo) == {"PGPASSWORD": REDACTED}  # a full memo still redacts
