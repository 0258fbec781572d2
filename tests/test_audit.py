"""The audit log: hash chain, fsync'd appends, torn-line recovery, verify and the CLI helpers."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import re
import stat
import time as audit_time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from desktop_agent.audit import GENESIS, AuditLog, cli_show, cli_verify, record_hash, redact, verify
from desktop_agent.audit_file import read_state


async def make_log(home: Path, n: int, **fields: Any) -> AuditLog:
    log = AuditLog(home / "audit.log")
    await log.open()
    for i in range(n):
        await log.append("tool.requested", request_id=i, tool="echo", arguments={"text": f"t{i}"}, **fields)
    return log


def lines(home: Path) -> list[bytes]:
    return (home / "audit.log").read_bytes().splitlines()


def write_lines(home: Path, rows: list[bytes]) -> None:
    (home / "audit.log").write_bytes(b"\n".join(rows) + b"\n")


async def test_records_form_a_chain_on_disk(tmp_path: Path) -> None:
    log = await make_log(tmp_path, 3, caller={"sub": "alice", "ws": "w1"})
    records = [json.loads(x) for x in lines(tmp_path)]
    assert [r["seq"] for r in records] == [1, 2, 3]
    assert records[0]["prev"] == GENESIS
    for before, after in itertools.pairwise(records):
        assert after["prev"] == before["hash"]
    for r in records:
        assert r["hash"] == record_hash(r)
        body = {k: v for k, v in r.items() if k != "hash"}
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        assert r["hash"] == hashlib.sha256(canonical).hexdigest()
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["ts"])
        assert r["v"] == 1 and r["caller"] == {"sub": "alice", "ws": "w1"} and r["event"] == "tool.requested"
    assert log.head() == {"seq": 3, "hash": records[-1]["hash"]}
    assert stat.S_IMODE((tmp_path / "audit.log").stat().st_mode) == 0o600
    await log.aclose()


async def test_reopen_continues_the_chain(tmp_path: Path) -> None:
    log = await make_log(tmp_path, 2)
    await log.aclose()
    again = AuditLog(tmp_path / "audit.log")
    await again.open()
    assert again.head()["seq"] == 2
    record = await again.append("node.connected", server="http://x")
    assert record["seq"] == 3 and record["server"] == "http://x" and record["tool"] is None
    assert verify(tmp_path / "audit.log").ok
    await again.aclose()


async def test_concurrent_appends_keep_seq_gapless(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    await log.open()
    got = await asyncio.gather(*(log.append("tool.requested", request_id=i) for i in range(200)))
    assert sorted(r["seq"] for r in got) == list(range(1, 201))
    assert [json.loads(x)["seq"] for x in lines(tmp_path)] == list(range(1, 201))
    report = verify(tmp_path / "audit.log")
    assert (report.ok, report.count) == (True, 200)
    await log.aclose()


async def test_cancelled_append_still_lands_whole(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    await log.open()
    task = asyncio.ensure_future(log.append("tool.requested", request_id=1))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await log.append("tool.requested", request_id=2)
    assert verify(tmp_path / "audit.log").count == 2
    await log.aclose()


def test_redaction_of_secret_looking_values() -> None:
    args = {
        "command": "export GITHUB_TOKEN=ghp_abc123 && curl -H 'Authorization: Bearer abcdefghijklmnop' x",
        "env": {"API_KEY": "k1", "db_password": "p1", "PATH": "/bin"},
        "nested": [{"Secret": "s1"}, {"credentials": {"x": "y"}}],
        "auth_header": "a1",
        "text": "hello",
    }
    out = json.dumps(redact(args))
    for secret in ("ghp_abc123", "abcdefghijklmnop", "k1", "p1", "s1", '"y"', "a1"):
        assert secret not in out, secret
    assert redact(args)["env"]["PATH"] == "/bin" and redact(args)["text"] == "hello"
    long = redact({"content": "x" * 100_000})["content"]
    assert len(long) < 5000 and "100000 chars" in long


async def test_secrets_never_reach_the_file(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    await log.append(
        "tool.requested", tool="shell_exec", arguments={"command": "ls", "env": {"MY_TOKEN": "zz9"}}
    )
    assert b"zz9" not in (tmp_path / "audit.log").read_bytes()
    await log.aclose()


async def test_verify_names_an_edited_record(tmp_path: Path) -> None:
    await (await make_log(tmp_path, 5)).aclose()
    rows = lines(tmp_path)
    rows[2] = rows[2].replace(b'"t2"', b'"t9"')
    write_lines(tmp_path, rows)
    report = verify(tmp_path / "audit.log")
    assert (report.ok, report.bad_seq, report.count) == (False, 3, 2)


async def test_verify_names_the_record_after_a_deleted_one(tmp_path: Path) -> None:
    await (await make_log(tmp_path, 5)).aclose()
    rows = lines(tmp_path)
    del rows[2]
    write_lines(tmp_path, rows)
    assert verify(tmp_path / "audit.log").bad_seq == 4


async def test_verify_names_an_inserted_record(tmp_path: Path) -> None:
    await (await make_log(tmp_path, 5)).aclose()
    rows = lines(tmp_path)
    forged = json.loads(rows[3])
    forged["tool"] = "shell_exec"
    forged["hash"] = record_hash(forged)  # self-consistent, but its prev already used by seq 4
    rows.insert(2, json.dumps(forged).encode())
    write_lines(tmp_path, rows)
    assert verify(tmp_path / "audit.log").bad_seq == 4


async def test_verify_names_reordered_records(tmp_path: Path) -> None:
    await (await make_log(tmp_path, 5)).aclose()
    rows = lines(tmp_path)
    rows[2], rows[3] = rows[3], rows[2]
    write_lines(tmp_path, rows)
    assert verify(tmp_path / "audit.log").bad_seq == 4


async def test_verify_catches_a_rehashed_edit(tmp_path: Path) -> None:
    await (await make_log(tmp_path, 4)).aclose()
    rows = lines(tmp_path)
    edited = json.loads(rows[1])
    edited["arguments"] = {"text": "forged"}
    edited["hash"] = record_hash(edited)
    rows[1] = json.dumps(edited).encode()
    write_lines(tmp_path, rows)
    assert verify(tmp_path / "audit.log").bad_seq == 3


async def test_torn_last_line_is_recovered_and_verifies(tmp_path: Path) -> None:
    await (await make_log(tmp_path, 3)).aclose()
    torn = b'{"v":1,"seq":4,"ts":"2025-'
    (tmp_path / "audit.log").write_bytes((tmp_path / "audit.log").read_bytes() + torn)
    pending = verify(tmp_path / "audit.log")
    assert pending.ok and pending.count == 3 and pending.reason

    log = AuditLog(tmp_path / "audit.log")
    await log.open()
    rows = lines(tmp_path)
    assert rows[3] == torn  # kept as is
    recovered = json.loads(rows[4])
    assert recovered["event"] == "audit.recovered" and recovered["seq"] == 4
    assert recovered["torn_line_sha256"] == hashlib.sha256(torn).hexdigest()
    assert recovered["prev"] == json.loads(rows[2])["hash"]
    await log.append("tool.requested", request_id="after")
    report = verify(tmp_path / "audit.log")
    assert (report.ok, report.count) == (True, 5)
    await log.aclose()

    rows = lines(tmp_path)
    rows[3] = b'{"v":1,"seq":4,"ts":"2026-'  # editing the torn line is tampering
    write_lines(tmp_path, rows)
    assert verify(tmp_path / "audit.log").bad_seq == 4


async def test_garbage_line_in_the_middle_fails(tmp_path: Path) -> None:
    await (await make_log(tmp_path, 3)).aclose()
    rows = lines(tmp_path)
    rows.insert(1, b"not json")
    write_lines(tmp_path, rows)
    report = verify(tmp_path / "audit.log")
    assert not report.ok and report.bad_seq == 2


async def test_a_line_nested_past_the_parser_is_unparseable_not_a_crash(tmp_path: Path) -> None:
    """A line nested deeper than json's recursion limit (a hand-edited or corrupted log) is reported
    like any unparseable line: in the middle verify fails at it, as the last line the agent recovers it
    as torn and goes on. Before, json.loads's RecursionError escaped verify, the ranged read and the
    agent's start (found by a mutation fuzz of audit logs)."""
    await (await make_log(tmp_path, 3)).aclose()
    deep = b"[" * 5000 + b"]" * 5000
    rows = lines(tmp_path)
    write_lines(tmp_path, [*rows[:1], deep, *rows[1:]])
    report = verify(tmp_path / "audit.log")
    assert not report.ok and report.bad_seq == 2

    write_lines(tmp_path, [*rows, deep])
    assert verify(tmp_path / "audit.log").ok
    log = AuditLog(tmp_path / "audit.log")
    await log.open()  # the deep last line is kept as a torn line and followed by audit.recovered
    await log.append("tool.requested", request_id="after")
    await log.aclose()
    assert [r["seq"] for r in _read_all(tmp_path)] == [1, 2, 3, 4, 5]
    assert verify(tmp_path / "audit.log").ok


def test_a_head_file_nested_past_the_parser_or_oversized_is_ignored(tmp_path: Path) -> None:
    """`audit.head` is read as at most its own fixed size and parsed without letting a RecursionError out."""
    head = tmp_path / "audit.head"
    head.write_bytes(b"[" * 1000 + b"\n")
    assert read_state(head) is None
    head.write_bytes(b'{"seq":1,"hash":"' + b"a" * 64 + b'"}' + b" " * 5000)
    assert read_state(head) is None


def _read_all(home: Path) -> list[dict[str, Any]]:
    return [json.loads(row) for row in lines(home) if row.startswith(b'{"')]


async def test_read_after_seq_and_limit(tmp_path: Path) -> None:
    log = await make_log(tmp_path, 150, note="y" * 1000)  # > 128 KiB: exercises the binary search
    assert [r["seq"] for r in await log.read(120, 5)] == [121, 122, 123, 124, 125]
    assert [r["seq"] for r in await log.read(0, 3)] == [1, 2, 3]
    assert [r["seq"] for r in await log.read(148, 100)] == [149, 150]
    assert await log.read(150, 10) == []
    assert len(await log.read(0, 5000)) == 150
    await log.aclose()


async def test_cli_verify_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_verify(tmp_path) == 2  # no audit log at this home (CONTRACT §1)
    assert capsys.readouterr().out == ""
    await (await make_log(tmp_path, 4, caller={"sub": "bob", "ws": "w"})).aclose()
    assert cli_verify(tmp_path) == 0
    assert capsys.readouterr().out.strip() == "ok 4 records"
    assert cli_show(tmp_path, 2) == 0
    shown = capsys.readouterr().out.splitlines()
    assert len(shown) == 2 and shown[0].startswith("#3") and "bob@w" in shown[0]
    rows = lines(tmp_path)
    rows[1] = rows[1].replace(b'"t1"', b'"tX"')
    write_lines(tmp_path, rows)
    assert cli_verify(tmp_path) == 1
    assert "2" in capsys.readouterr().out


def test_ts_is_rfc3339_utc_milliseconds_for_any_instant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The formatter keeps the date and time of day per second and adds the milliseconds itself.
    log = AuditLog(tmp_path / "audit.log")
    for ms in (0, 999, 1000, 1_780_000_000_000, 1_780_000_000_999, 1_780_000_001_000, 4_102_444_799_999):
        monkeypatch.setattr(audit_time, "time_ns", lambda ms=ms: ms * 1_000_000 + 123)
        expected = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
        assert log._stamp() == expected.replace("+00:00", "Z")
