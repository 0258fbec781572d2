"""The audit log's file, read side: record hash, line parsing, the saved head, ranged reads and `verify`.

Layering: under desktop_agent.audit (the writer, `AuditLog`, and the `cortex-agent audit` helpers), which
re-exports the public names; no writer state here, only functions of the file's bytes (and the
`cortex-agent audit verify/show` commands built on them). The record format
and the numbered rules (6: saved head, 7: what `verify` reports) are in desktop_agent.audit's docstring.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

__all__ = [
    "AUDIT_FILE",
    "GENESIS",
    "MAX_READ_LIMIT",
    "RECORD_VERSION",
    "STATE_BYTES",
    "STATE_FILE",
    "TAIL_BLOCK",
    "VerifyReport",
    "cli_show",
    "cli_verify",
    "filesystem_type",
    "parse_line",
    "read_records",
    "read_saved_head",
    "read_state",
    "record_hash",
    "scan_tail",
    "verify",
]

AUDIT_FILE = "audit.log"
STATE_FILE = "audit.head"  # the last durable head, for rule 6 (a cut tail is visible to `verify`)
STATE_BYTES = 1024
GENESIS = "0" * 64
RECORD_VERSION = 1
MAX_READ_LIMIT = 1000
TAIL_BLOCK = 1 << 16


def record_hash(record: dict[str, Any]) -> str:
    """SHA-256 hex of `record` without its ``hash`` key, serialised as CONTRACT §8 says."""
    body = {k: v for k, v in record.items() if k != "hash"}
    data = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def parse_line(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's recursion limit
        return None
    if not isinstance(record, dict) or not isinstance(record.get("seq"), int) or "hash" not in record:
        return None
    return record


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    count: int
    bad_seq: int | None = None
    reason: str | None = None


def read_saved_head(path: Path) -> tuple[int, str] | None:
    """(seq, hash) from an `audit.head` file, or None when it is missing or unreadable."""
    state = read_state(path)
    return None if state is None else (state[0], state[1])


def read_state(path: Path) -> tuple[int, str, str | None] | None:
    """(seq, hash, failure or None) from an `audit.head` file (rule 6)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(STATE_BYTES + 1)  # the file is STATE_BYTES long; a bigger one is not ours
        if len(raw) > STATE_BYTES:
            return None
        data = json.loads(raw)
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    seq, digest, failure = data.get("seq"), data.get("hash"), data.get("failure")
    if type(seq) is not int or seq < 0 or not isinstance(digest, str) or len(digest) != 64:
        return None
    return seq, digest, failure if isinstance(failure, str) else None


def scan_tail(fd: int) -> tuple[dict[str, Any] | None, bytes | None, bool]:
    """(last good record, torn last line or None, file ends with a newline) by reading backwards."""
    size = os.fstat(fd).st_size
    if size == 0:
        return None, None, True
    ends_with_newline = os.pread(fd, 1, size - 1) == b"\n"
    buf, pos, torn = b"", size, None
    first = True
    while True:
        # Collect whole lines from the end; the first (partial) piece of buf is kept for the next block.
        lines = buf.split(b"\n")
        carry = lines[0] if pos > 0 else None
        complete = lines[1:] if pos > 0 else lines
        for line in reversed(complete):
            if not line:
                continue
            record = parse_line(line)
            if record is not None:
                return record, torn, ends_with_newline
            if first:
                torn = line
            first = False
        if pos == 0:
            return None, torn, ends_with_newline
        step = min(TAIL_BLOCK, pos)
        pos -= step
        buf = os.pread(fd, step, pos) + (carry or b"")


def _iter_lines(f: IO[bytes]) -> Any:
    for raw in f:
        yield raw[:-1] if raw.endswith(b"\n") else raw


def _first_offset_after(f: IO[bytes], size: int, after_seq: int) -> int:
    """Byte offset of a line start at or before the first record with seq > after_seq (binary search)."""
    lo, hi = 0, size
    while hi - lo > TAIL_BLOCK:
        mid = (lo + hi) // 2
        f.seek(mid)
        f.readline()  # skip to the next line start
        start = f.tell()
        seq = None
        for _ in range(4):  # step over torn lines
            line = f.readline()
            if not line:
                break
            record = parse_line(line)
            if record is not None:
                seq = record["seq"]
                break
        if seq is None or seq > after_seq:
            hi = mid
        else:
            lo = start
    return lo


def read_records(path: Path, after_seq: int, limit: int) -> list[dict[str, Any]]:
    """Blocking read of records with seq > after_seq (for `AuditLog.read` and the CLI)."""
    limit = max(0, min(limit, MAX_READ_LIMIT))
    out: list[dict[str, Any]] = []
    if limit == 0:
        return out
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return out
    with f:
        size = os.fstat(f.fileno()).st_size
        offset = _first_offset_after(f, size, after_seq) if after_seq > 0 else 0
        f.seek(offset)
        if offset:
            f.seek(offset - 1)
            f.readline()
        for line in _iter_lines(f):
            record = parse_line(line)
            if record is not None and record["seq"] > after_seq:
                out.append(record)
                if len(out) >= limit:
                    break
    return out


def verify(path: Path, state_path: Path | None = None) -> VerifyReport:
    """Check the whole chain (rules 3, 4 and 6); a missing file with no saved head is an empty, intact log.

    *state_path* is the agent's saved head (default `audit.head` beside the log). It is read before the
    log: the agent saves it only after the records it names are durable, so a log read afterwards that
    does not reach it, or holds another record at its seq, was cut or replaced.
    """
    saved = read_saved_head(state_path if state_path is not None else path.with_name(STATE_FILE))
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        if saved is not None and saved[0] > 0:
            return VerifyReport(False, 0, 1, f"the log is gone; the agent last wrote seq {saved[0]}")
        return VerifyReport(ok=True, count=0)
    count, expected_prev, expected_seq = 0, GENESIS, 1
    pending_torn: bytes | None = None
    with f:
        for line in _iter_lines(f):
            if not line and pending_torn is None:
                continue
            record = parse_line(line)
            if pending_torn is not None:
                digest = hashlib.sha256(pending_torn).hexdigest()
                if (
                    record is None
                    or record.get("event") != "audit.recovered"
                    or (record.get("torn_line_sha256") != digest)
                ):
                    return VerifyReport(
                        False, count, expected_seq, "unparseable line not marked as recovered"
                    )
                pending_torn = None
            if record is None:
                pending_torn = line
                continue
            seq = record["seq"]
            if seq != expected_seq:
                return VerifyReport(False, count, seq, f"seq {seq} where {expected_seq} was expected")
            if record.get("prev") != expected_prev:
                return VerifyReport(False, count, seq, "prev does not match the previous record's hash")
            if record_hash(record) != record["hash"]:
                return VerifyReport(False, count, seq, "hash does not match the record")
            if saved is not None and seq == saved[0] and record["hash"] != saved[1]:
                return VerifyReport(
                    False, count, seq, "not the record the agent wrote at this seq (replaced)"
                )
            count, expected_prev, expected_seq = count + 1, record["hash"], seq + 1
    if saved is not None and saved[0] >= expected_seq:
        return VerifyReport(
            False, count, expected_seq, f"cut tail: the agent wrote up to seq {saved[0]}, the log ends before"
        )
    if pending_torn is not None:
        return VerifyReport(True, count, None, "torn last line awaiting recovery")
    return VerifyReport(True, count)


def filesystem_type(path: Path) -> str | None:
    """The type of the file system holding *path* (the longest matching mount point), or None."""
    try:
        real = os.path.realpath(path)
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return None
    best, fstype = -1, None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or not tail:
            continue
        mount = fields[4].replace("\\040", " ")
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > best:
            best, fstype = len(mount), tail[0]
    return fstype


# -- `cortex-agent audit verify|show` ----------------------------------------------------------------
def cli_verify(home: Path) -> int:
    """`cortex-agent audit verify`: `ok <N> records` and 0, the first bad seq and 1, or 2 with no log."""
    # No log and no saved head: nothing was ever written here (a wrong --home). A saved head without its
    # log is a deleted or moved log: that is a broken chain (exit 1), reported by `verify` below.
    if not (home / AUDIT_FILE).is_file() and read_saved_head(home / STATE_FILE) is None:
        print(f"no audit log at {home / AUDIT_FILE} (is --home right?)", file=sys.stderr)
        return 2
    report = verify(home / AUDIT_FILE, home / STATE_FILE)
    if report.ok:
        print(f"ok {report.count} records" + (f" ({report.reason})" if report.reason else ""))
        return 0
    print(f"bad seq {report.bad_seq}: {report.reason}")
    return 1


def _describe(record: dict[str, Any]) -> str:
    parts = [f"#{record['seq']}", str(record.get("ts", "")), str(record.get("event", ""))]
    if record.get("tool"):
        parts.append(str(record["tool"]))
    caller = record.get("caller")
    if isinstance(caller, dict) and caller.get("sub"):
        parts.append(f"by {caller.get('sub')}@{caller.get('ws')}")
    if record.get("request_id") is not None:
        parts.append(f"req={record['request_id']}")
    for key in (
        "status",
        "exit_code",
        "duration_ms",
        "reason",
        "approval_id",
        "approver",
        "via",
        "scope",
        "until",
    ):
        if key in record and record[key] is not None:
            parts.append(f"{key}={record[key]}")
    if record.get("arguments"):
        args = json.dumps(record["arguments"], ensure_ascii=False)
        parts.append(args if len(args) <= 200 else args[:197] + "...")
    return "  ".join(parts)


def cli_show(home: Path, n: int = 20) -> int:
    """`cortex-agent audit show -n N`: the last N records, one human-readable line each."""
    path = home / AUDIT_FILE
    try:
        with open(path, "rb") as f:
            last, _torn, _nl = scan_tail(f.fileno())
    except FileNotFoundError:
        print(f"no audit log at {path} (is --home right?)", file=sys.stderr)
        return 2
    head = last["seq"] if last else 0
    for record in read_records(path, max(0, head - n), n):
        print(_describe(record))
    return 0
