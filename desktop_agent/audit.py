"""The node's tamper-evident audit log: `<home>/audit.log`, a hash chain in JSON Lines (CONTRACT §8).

Sits under the engine (`desktop_agent.engine`), which appends `tool.*` records around every call, and the
connection, which appends `node.*` records; `cortex-agent audit verify|show` use `cli_verify`/`cli_show`.
No I/O library beyond the file system.

Record: ``v`` (1), ``seq`` (1, 2, 3 ... no gaps), ``ts`` (RFC 3339 UTC), ``event``, ``request_id``, ``tool``,
``arguments``, ``caller``, extra fields of the event (``status``, ``exit_code``, ``duration_ms``,
``output_sha256``, ``output_bytes`` on ``tool.finished``; ``reason`` on ``tool.denied`` ...), ``prev`` and
``hash`` = SHA-256 hex of the record without ``hash`` as
``json.dumps(r, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")``.

Rules:
1. One writer: appends are serialised by an asyncio lock; the write and its fsync run in a thread, so the
   event loop never blocks. An append, once called, completes even if its caller is cancelled (the
   record is on disk when `append` returns *or* raises CancelledError).
2. Arguments are stored with secret-looking values redacted (keys matching TOKEN, SECRET, PASSWORD,
   PASSWD, KEY, CREDENTIAL, AUTH, at any depth, e.g. inside ``env``; ``NAME=value`` and ``Bearer x``
   inside strings) and strings longer than 4096 characters cut, keeping their length and SHA-256.
3. Torn last line: a crash in the middle of a write can leave a last line that is not a record. On open
   it is kept as is, ended with a newline, and followed by an ``audit.recovered`` record carrying
   ``torn_line_sha256`` (SHA-256 of the torn line's bytes, without the newline) and ``torn_line_bytes``;
   the chain continues from the last good record. `verify` accepts an unparseable line only when the
   very next line is such an ``audit.recovered`` record naming its hash, and only then skips it.
   An unparseable *last* line (crash not yet recovered) is reported ok with a note.
4. `verify` reports the first record whose ``seq``, ``prev`` or ``hash`` does not check, by its ``seq``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

__all__ = [
    "AUDIT_FILE",
    "GENESIS",
    "AuditError",
    "AuditLog",
    "VerifyReport",
    "cli_show",
    "cli_verify",
    "record_hash",
    "redact",
    "verify",
]

AUDIT_FILE = "audit.log"
GENESIS = "0" * 64
RECORD_VERSION = 1
REDACTED = "[REDACTED]"
MAX_AUDIT_STRING = 4096
MAX_READ_LIMIT = 1000
_SECRET_KEY = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|KEY|CREDENTIAL|AUTH", re.IGNORECASE)
_SECRET_ASSIGN = re.compile(
    r"(?i)\b([A-Z0-9_]*(?:TOKEN|SECRET|PASSWORD|PASSWD|KEY|CREDENTIAL|AUTH)[A-Z0-9_]*)(\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|\S+)"
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
_TAIL_BLOCK = 1 << 16


class AuditError(OSError):
    """The audit log could not be read or written."""


def record_hash(record: dict[str, Any]) -> str:
    """SHA-256 hex of `record` without its ``hash`` key, serialised as CONTRACT §8 says."""
    body = {k: v for k, v in record.items() if k != "hash"}
    data = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def _redact_string(text: str) -> str:
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _SECRET_ASSIGN.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    if len(text) > MAX_AUDIT_STRING:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        text = f"{text[:MAX_AUDIT_STRING]}...[cut: {len(text)} chars, sha256 {digest}]"
    return text


def redact(value: Any) -> Any:
    """A copy of `value` with secret-looking values replaced by "[REDACTED]" (rule 2)."""
    if isinstance(value, dict):
        return {
            str(k): (REDACTED if _SECRET_KEY.search(str(k)) and v is not None else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return _redact_string(value)
    return value


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_line(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
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


class AuditLog:
    """The append-only hash chain at `path` (rules 1-3)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seq = 0
        self._hash = GENESIS
        self._fd: int | None = None
        self._lock = asyncio.Lock()
        self._needs_open = True

    # -- opening and recovery -------------------------------------------------------------------
    async def open(self) -> None:
        """Create or reopen the log, find the head of the chain, recover a torn last line (rule 3)."""
        async with self._lock:
            await asyncio.to_thread(self._open_sync)

    def _open_sync(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            last_good, torn, ends_with_newline = _scan_tail(fd)
            self._seq, self._hash = (last_good["seq"], last_good["hash"]) if last_good else (0, GENESIS)
            self._fd = fd
            if not ends_with_newline:
                os.write(fd, b"\n")
            if torn is not None:
                self._write_sync(
                    self._build(
                        "audit.recovered",
                        {
                            "reason": "torn last line (interrupted write)",
                            "torn_line_sha256": hashlib.sha256(torn).hexdigest(),
                            "torn_line_bytes": len(torn),
                        },
                    )
                )
        except BaseException:
            os.close(fd)
            self._fd = None
            raise
        self._needs_open = False

    # -- appending ------------------------------------------------------------------------------
    def _build(self, event: str, fields: dict[str, Any]) -> dict[str, Any]:
        record: dict[str, Any] = {
            "v": RECORD_VERSION,
            "seq": self._seq + 1,
            "ts": _now(),
            "event": event,
            "request_id": None,
            "tool": None,
            "arguments": None,
            "caller": None,
        }
        for key, value in fields.items():
            if key in ("v", "seq", "ts", "event", "prev", "hash"):
                raise ValueError(f"audit field {key!r} is set by the log itself")
            record[key] = redact(value) if key == "arguments" else value
        record["prev"] = self._hash
        record["hash"] = record_hash(record)
        return record

    def _write_sync(self, record: dict[str, Any]) -> None:
        assert self._fd is not None
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
        try:
            written = os.write(self._fd, line)
            if written != len(line):
                raise AuditError(f"short write to {self.path}")
            os.fsync(self._fd)
        except OSError:
            self._needs_open = True  # the next append re-scans and recovers a torn line
            raise
        self._seq, self._hash = record["seq"], record["hash"]

    async def _append_locked(self, event: str, fields: dict[str, Any]) -> dict[str, Any]:
        async with self._lock:
            if self._needs_open:
                await asyncio.to_thread(self._open_sync)
            record = self._build(event, fields)
            await asyncio.to_thread(self._write_sync, record)
            return record

    async def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one record (fsync'd) and return it; see rule 1 on cancellation."""
        task = asyncio.ensure_future(self._append_locked(event, fields))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                await asyncio.wait([task])
            raise

    def head(self) -> dict[str, Any]:
        return {"seq": self._seq, "hash": self._hash}

    async def read(self, after_seq: int, limit: int) -> list[dict[str, Any]]:
        """Records with seq > after_seq, oldest first, at most `limit` (capped at 1000)."""
        return await asyncio.to_thread(read_records, self.path, after_seq, limit)

    async def aclose(self) -> None:
        async with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._needs_open = True


def _scan_tail(fd: int) -> tuple[dict[str, Any] | None, bytes | None, bool]:
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
            record = _parse_line(line)
            if record is not None:
                return record, torn, ends_with_newline
            if first:
                torn = line
            first = False
        if pos == 0:
            return None, torn, ends_with_newline
        step = min(_TAIL_BLOCK, pos)
        pos -= step
        buf = os.pread(fd, step, pos) + (carry or b"")


def _iter_lines(f: IO[bytes]) -> Any:
    for raw in f:
        yield raw[:-1] if raw.endswith(b"\n") else raw


def _first_offset_after(f: IO[bytes], size: int, after_seq: int) -> int:
    """Byte offset of a line start at or before the first record with seq > after_seq (binary search)."""
    lo, hi = 0, size
    while hi - lo > _TAIL_BLOCK:
        mid = (lo + hi) // 2
        f.seek(mid)
        f.readline()  # skip to the next line start
        start = f.tell()
        seq = None
        for _ in range(4):  # step over torn lines
            line = f.readline()
            if not line:
                break
            record = _parse_line(line)
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
            record = _parse_line(line)
            if record is not None and record["seq"] > after_seq:
                out.append(record)
                if len(out) >= limit:
                    break
    return out


def verify(path: Path) -> VerifyReport:
    """Check the whole chain (rules 3 and 4); a missing file is an empty, intact log."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return VerifyReport(ok=True, count=0)
    count, expected_prev, expected_seq = 0, GENESIS, 1
    pending_torn: bytes | None = None
    with f:
        for line in _iter_lines(f):
            if not line and pending_torn is None:
                continue
            record = _parse_line(line)
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
            count, expected_prev, expected_seq = count + 1, record["hash"], seq + 1
    if pending_torn is not None:
        return VerifyReport(True, count, None, "torn last line awaiting recovery")
    return VerifyReport(True, count)


def cli_verify(home: Path) -> int:
    """`cortex-agent audit verify`: `ok <N> records` and 0, the first bad seq and 1, or 2 with no log."""
    if not (home / AUDIT_FILE).is_file():
        print(f"no audit log at {home / AUDIT_FILE} (is --home right?)", file=sys.stderr)
        return 2
    report = verify(home / AUDIT_FILE)
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
    for key in ("status", "exit_code", "duration_ms", "reason"):
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
            last, _torn, _nl = _scan_tail(f.fileno())
    except FileNotFoundError:
        print(f"no audit log at {path} (is --home right?)", file=sys.stderr)
        return 2
    head = last["seq"] if last else 0
    for record in read_records(path, max(0, head - n), n):
        print(_describe(record))
    return 0
