"""The node's tamper-evident audit log: `<home>/audit.log`, a hash chain in JSON Lines (CONTRACT §8).

Sits under the engine (`desktop_agent.engine`), which appends `tool.*` records around every call, and the
connection, which appends `node.*` records; `cortex-agent audit verify|show` use `cli_verify`/`cli_show`.
The read side (hash, parsing, saved head, ranged reads, `verify`) is desktop_agent.audit_file, whose
public names this module re-exports. No I/O library beyond the file system.

Record: ``v`` (1), ``seq`` (1, 2, 3 ... no gaps), ``ts`` (RFC 3339 UTC), ``event``, ``request_id``, ``tool``,
``arguments``, ``caller``, extra fields of the event (``status``, ``exit_code``, ``duration_ms``,
``output_sha256``, ``output_bytes`` on ``tool.finished``; ``reason`` on ``tool.denied`` ...), ``prev`` and
``hash`` = SHA-256 hex of the record without ``hash`` as
``json.dumps(r, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")``.

Rules:
1. Group commit, one writer: appends go in one hop to a single writer thread (a queue and a condition
   variable). Each time it wakes, the writer takes *every* record waiting at that moment, chains them in
   queue order (seq, prev, hash), writes them with one ``write`` and one ``fsync``, and releases each
   caller (one ``call_soon_threadsafe`` per batch) only once *its* record is durable. The event loop never
   blocks on the disk. Where a write + fsync costs less than the hop (the log on tmpfs or ramfs, read
   from /proc/self/mountinfo on open), the batch gathered during one event-loop iteration is committed
   on the loop instead, under the same lock and in the same order; a caller that knows nothing else is
   being appended (one call in flight, read by itself: `append(alone=True)`) has its record committed
   at once. Calls the link read together (one joined frame) are not alone, so their records wait for
   the end of the loop pass and go as one batch: one write, one identity check, one head save. An
   append, once called, completes even if its caller is cancelled (the record is on disk when `append`
   returns *or* raises CancelledError). A write that fails fails every record of
   its batch (their callers get the error, the head does not move) and the next batch re-scans the file.
2. `enqueue` queues a record without waiting (the engine's ``tool.finished``: the contract asks only
   that ``tool.requested`` is durable before a tool runs, so a call costs one fsync on its path). The
   writer thread does not wake for it alone: it rides the next batch someone waits for (the next
   call's ``tool.requested``), or goes on its own once it has waited ``linger_s`` (0.05 s). So calls
   one after another cost one fsync each, not two (the previous call's ``tool.finished`` would
   otherwise hold the disk when the next ``tool.requested`` comes). The ``linger_s`` is kept by a
   timer on the event loop, armed by the first record queued while none is armed and left running
   when a batch goes earlier: queuing a record wakes no thread (a wake-up of the writer per call, in
   the middle of sending that call's answer, cost the loop a GIL hand-over). When it fires, the
   writer takes what is queued; a log committed on the loop (rule 1's memory file systems) commits
   it there. `read` and `aclose` first wait for everything queued.
3. Arguments are stored with secret-looking values redacted (`redact`) and long strings cut, keeping
   their length and SHA-256.
4. Torn last line: a crash in the middle of a write can leave a last line that is not a record. On open
   it is kept as is, ended with a newline, and followed by an ``audit.recovered`` record carrying
   ``torn_line_sha256`` (SHA-256 of the torn line's bytes, without the newline) and ``torn_line_bytes``;
   the chain continues from the last good record. `verify` accepts an unparseable line only when the
   very next line is such an ``audit.recovered`` record naming its hash, and only then skips it.
   An unparseable *last* line (crash not yet recovered) is reported ok with a note.
5. The log cannot be silenced (CONTRACT §8): before and after each batch's write the writer checks, with
   one ``stat`` of the path, that `<home>/audit.log` is still the file it holds (the device and inode
   its descriptor had on open, not shorter than what it wrote). If it was deleted, moved, replaced or
   cut, the log fails for good: that batch and every later append raise `AuditSilenced` (the engine then
   refuses every tool with an isError result naming the problem) until the agent is restarted.
6. Saved head: after each batch the durable head ``{seq, hash}`` is rewritten in place in
   ``<home>/audit.head`` (0600, a small fixed-size file, no fsync: it only ever lags the log), once the
   batch's callers are on their way (the writer thread saves it after waking the loop; a batch
   committed on the loop has it saved in the loop's next pass, so a call's answer leaves first). On open, a
   log that does not hold that head (deleted, moved, replaced or cut while the agent was stopped, or the
   cause of a refusal before a restart) gets an ``audit.recovered`` record with ``expected_head`` and
   ``found_head``, and the chain continues from what the log holds: from its last good record, or a
   fresh chain from seq 1 when the file is gone. `verify` reads the saved head first and reports a log
   that ends before it (``cut tail``, the first missing seq) or holds another record at its seq.
   When rule 5 fired, the reason is saved there too, and the restarted agent's ``audit.recovered``
   record names it (so even a replacement by an identical copy leaves a trace in the chain).
7. `verify` reports the first record whose ``seq``, ``prev`` or ``hash`` does not check, by its ``seq``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from desktop_agent.audit_file import (
    AUDIT_FILE,
    GENESIS,
    RECORD_VERSION,
    STATE_BYTES,
    STATE_FILE,
    VerifyReport,
    cli_show,
    cli_verify,
    filesystem_type,
    read_records,
    read_saved_head,
    read_state,
    record_hash,
    scan_tail,
    verify,
)
from desktop_agent.redaction import KeyMemo, redact
from spec.json_text import canonical_bytes, compact

__all__ = [
    "AUDIT_FILE",
    "GENESIS",
    "STATE_FILE",
    "AuditError",
    "AuditLog",
    "AuditSilenced",
    "VerifyReport",
    "cli_show",
    "cli_verify",
    "filesystem_type",
    "read_saved_head",
    "record_hash",
    "redact",
    "verify",
]

logger = logging.getLogger(__name__)

_MAX_FAILURE_CHARS = 800
# A thread hop (wake the writer, hand the GIL over, wake the loop) costs tens of µs, far more when the
# cores are busy; on a file system in memory a write + fsync costs a few µs, so it is done on the loop.
MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})


# Rule 2: a queued record (`enqueue`) waits at most this long for a batch someone waits for.
LINGER_S = 0.05

_F = TypeVar("_F", asyncio.Future[Any], None)


class AuditError(OSError):
    """The audit log could not be read or written."""


class AuditSilenced(AuditError):
    """`<home>/audit.log` is no longer the file this agent holds open (rule 5): every append refuses."""


@dataclass
class _Pending:
    """One queued append; `event` None is a barrier (resolves with the head once everything before it ran).

    `future` None: queued by `enqueue`, nobody waits for it (a failure is logged instead).
    """

    event: str | None
    fields: dict[str, Any]
    future: asyncio.Future[Any] | None


_Outcome = tuple[asyncio.Future[Any] | None, Any, BaseException | None]


def _settle(outcomes: list[_Outcome]) -> None:
    for future, value, exc in outcomes:
        if future is None:
            if exc is not None:
                logger.error("a queued audit record could not be written: %s", exc)
            continue
        if future.done():
            continue
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(value)


class AuditLog:
    """The append-only hash chain at `path`, written by one group-committing thread (rules 1, 3, 5, 6)."""

    def __init__(self, path: Path, state_path: Path | None = None, *, linger_s: float = LINGER_S) -> None:
        self.path = path
        self._path_text = os.fspath(path)  # rule 5's stat per batch: no Path conversion each time
        self._clock: tuple[int, str] = (-1, "")  # (ms since the epoch, its `ts` text): one format per ms
        self._second: tuple[int, str] = (-1, "")  # (s since the epoch, its date and time of day)
        self.linger_s = linger_s  # rule 2: how long a queued record may wait for a batch someone waits for
        self.state_path = state_path if state_path is not None else path.with_name(STATE_FILE)
        self._head: tuple[int, str] = (0, GENESIS)  # durable head; replaced whole, so readers see a pair
        self._fd: int | None = None
        self._state_fd: int | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file we hold
        self._size = 0  # bytes the file holds at least: what we found on open plus what we wrote
        self._failure: str | None = None  # rule 5: set once, cleared only by a new process
        self._needs_open = True
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._urgent = 0  # queued entries someone waits for (appends, barriers): the writer goes at once
        self._lingered = False  # rule 2: the loop's timer ended a queued record's wait
        self._closing = False
        self._thread: threading.Thread | None = None
        self._commit_lock = threading.Lock()  # one batch at a time, writer thread or inline
        self._inline = False  # rule 1: set on open when the log lives in memory (fsync is free)
        self._loop: asyncio.AbstractEventLoop | None = None  # where the callers wait (set on each submit)
        self._inline_scheduled = False
        self._linger: asyncio.TimerHandle | None = None  # rule 2 on the loop: a queued record's deadline
        self._head_unsaved = False  # rule 6: the head moved since it was last saved
        self._save_scheduled = False  # rule 6 on the loop: a save is queued for the next pass
        self._state_lock = threading.Lock()  # one pwrite of the head file at a time (loop or writer)
        self._keys = KeyMemo()  # rule 3's redaction of argument keys, remembered (used under _commit_lock)

    # -- the caller's side (event loop) ---------------------------------------------------------
    @property
    def failure(self) -> str | None:
        """Why the log refuses every append (rule 5), or None while it is healthy."""
        return self._failure

    async def open(self) -> None:
        """Create or reopen the log, find the head, recover a torn line or a cut tail (rules 4, 6).

        Raises what opening raised (an unwritable home, a log that is not ours...).
        """
        await asyncio.to_thread(self._open_locked)

    def _open_locked(self) -> None:
        with self._commit_lock:  # no batch runs while the file is (re)opened
            self._open_sync()

    async def append(self, event: str, *, alone: bool = False, **fields: Any) -> dict[str, Any]:
        """Write one record (fsync'd with whatever else is waiting) and return it; see rule 1.

        `alone`: the caller knows no other append is coming in this loop pass (one call in flight), so
        a log committed on the loop writes it at once instead of waiting for the end of the pass."""
        loop = asyncio.get_running_loop()  # once: on Python 3.11 each call is a getpid system call
        future = self._submit(event, fields, loop.create_future(), alone, loop)
        record: dict[str, Any] = await self._wait(future)
        return record

    def enqueue(self, event: str, **fields: Any) -> None:
        """Queue a record for the next group commit without waiting for it (rule 2)."""
        self._submit(event, fields, None)  # no future: nothing to create, resolve or call back per record

    async def flush(self) -> None:
        """Return once every record queued before this call has been written (or has failed)."""
        await self._wait(self._submit(None, {}, asyncio.get_running_loop().create_future()))

    def head(self) -> dict[str, Any]:
        seq, digest = self._head
        return {"seq": seq, "hash": digest}

    async def read(self, after_seq: int, limit: int) -> list[dict[str, Any]]:
        """Records with seq > after_seq, oldest first, at most `limit` (capped at 1000)."""
        if self._thread is not None:
            await self.flush()  # read-your-writes: queued records first
        return await asyncio.to_thread(read_records, self.path, after_seq, limit)

    async def aclose(self) -> None:
        """Write what is queued, then stop the writer and close the file."""
        thread = self._thread
        if thread is None:
            return
        self._save_head()  # a save still queued on the loop (rule 6), before the writer closes the files
        with self._cond:
            self._closing = True
            self._cond.notify()
        await asyncio.to_thread(thread.join)
        self._thread = None
        self._closing = False
        if self._linger is not None:  # the writer wrote what was queued; a later loop arms its own timer
            self._linger.cancel()
            self._linger = None

    async def _wait(self, future: asyncio.Future[Any]) -> Any:
        # No `asyncio.shield` (an extra future and two callbacks per append): a cancellation cancels
        # `future` itself, whose record stays queued, so a barrier queued after it says when it is written.
        try:
            return await future
        except asyncio.CancelledError:
            if future.cancelled():  # rule 1: the record lands whole before the cancellation goes on
                await asyncio.wait([self._submit(None, {}, asyncio.get_running_loop().create_future())])
            raise

    def _submit(
        self,
        event: str | None,
        fields: dict[str, Any],
        future: _F,
        alone: bool = False,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> _F:
        """Queue one record; `future` (None for `enqueue`) resolves once it is durable. Returns `future`."""
        refusal: AuditError | None = None
        if self._failure is not None and event is not None:
            refusal = AuditSilenced(self._failure)
        elif self._closing:
            refusal = AuditError(f"{self.path} is being closed")
        if refusal is not None:
            _settle([(future, None, refusal)])
            return future
        if loop is None:
            loop = asyncio.get_running_loop()
        if loop is not self._loop:  # an earlier loop (ended without `aclose`) runs none of its callbacks
            self._loop, self._linger = loop, None
            self._inline_scheduled = self._save_scheduled = False
        if self._thread is None:
            self._thread = threading.Thread(target=self._writer, name="cortex-audit-writer", daemon=True)
            self._thread.start()
        commit_now = False
        with self._cond:
            self._queue.append(_Pending(event, fields, future))
            if self._inline and not self._needs_open:  # rule 1: a hop would cost more than the write
                if future is not None and alone and not self._inline_scheduled:
                    commit_now = True
                elif future is not None:
                    if not self._inline_scheduled:
                        self._inline_scheduled = True
                        loop.call_soon(self._commit_inline)
                elif self._linger is None:  # rule 2, on the loop
                    self._linger = loop.call_later(self.linger_s, self._linger_ended)
            elif future is not None:
                self._urgent += 1
                if self._urgent == 1:  # the writer waits until someone waits (or the linger ends)
                    self._cond.notify()
            elif self._linger is None:  # rule 2: a timer on the loop, not a wake-up of the writer
                self._linger = loop.call_later(self.linger_s, self._linger_ended)
        if commit_now:  # a batch of this record (and any queued record) with no loop pass to wait for
            self._commit_inline()
        return future

    def _commit_inline(self) -> None:
        """The batch of this loop iteration, committed on the loop (storage whose fsync is nearly free)."""
        with self._commit_lock:
            with self._cond:
                self._inline_scheduled = False
                batch, self._queue, self._urgent = self._queue, [], 0
            if batch:
                _settle(self._commit(batch))
        if self._head_unsaved and not self._save_scheduled and self._loop is not None:
            self._save_scheduled = True  # rule 6: after this pass's callers have run
            self._loop.call_soon(self._save_head)

    def _linger_ended(self) -> None:
        # Left running when a batch goes earlier (no timer churn per batch): whatever is queued now was
        # queued after the timer started, so it has waited at most `linger_s` (rule 2).
        self._linger = None
        if self._inline and not self._needs_open:
            self._commit_inline()
            return
        with self._cond:
            if self._queue and not self._urgent:
                self._lingered = True
                self._cond.notify()

    # -- the writer thread ----------------------------------------------------------------------
    def _writer(self) -> None:
        try:
            while True:
                self._wait_for_batch()
                with self._commit_lock:  # held from taking the batch to its end: batches stay in order
                    with self._cond:
                        batch, self._queue, self._urgent = self._queue, [], 0
                        if not batch and self._closing:
                            return  # nothing left to write
                    if not batch:
                        continue  # an inline commit took it
                    outcomes = self._commit(batch)
                loop = self._loop
                try:
                    if loop is not None and any(future is not None for future, _v, _e in outcomes):
                        loop.call_soon_threadsafe(_settle, outcomes)
                    else:
                        _settle(outcomes)  # only queued records: nothing to wake, failures are logged
                except RuntimeError:  # the loop is gone: nobody waits for these any more
                    pass
                self._save_head()  # rule 6: the callers are woken first
        finally:
            for fd in (self._fd, self._state_fd):
                if fd is not None:
                    os.close(fd)
            self._fd = self._state_fd = None
            self._needs_open = True

    def _wait_for_batch(self) -> None:
        """Rule 2: until someone waits for a queued entry, the log closes, or the loop's linger timer
        says a queued record has waited `linger_s`."""
        with self._cond:
            while not self._closing and not self._urgent and not self._lingered:
                self._cond.wait()
            self._lingered = False

    def _commit(self, batch: list[_Pending]) -> list[_Outcome]:
        """Rule 1: build every waiting record on the chain, one write, one fsync, then the identity check."""
        outcomes: list[_Outcome] = []
        try:
            if self._failure is not None:
                raise AuditSilenced(self._failure)
            if self._needs_open:
                self._open_sync()
            self._check_identity()
        except Exception as exc:
            head = self.head()
            return [
                (p.future, head if p.event is None else None, None if p.event is None else exc) for p in batch
            ]
        seq, prev = self._head
        ts = self._stamp()  # one clock reading per batch: its records become durable together
        chunks: list[bytes] = []
        built: list[tuple[asyncio.Future[Any] | None, dict[str, Any]]] = []
        barriers: list[asyncio.Future[Any] | None] = []
        for pending in batch:
            if pending.event is None:
                barriers.append(pending.future)
                continue
            try:
                record, line = _build(pending.event, pending.fields, seq + 1, prev, ts, self._keys)
            except Exception as exc:  # a bad field fails its own append only; the chain is untouched
                outcomes.append((pending.future, None, exc))
                continue
            seq, prev = record["seq"], record["hash"]
            chunks.append(line)
            built.append((pending.future, record))
        if chunks:
            data = b"".join(chunks)
            try:
                self._write_all(data)
                self._check_identity()  # the file we made durable is still the one at the path
            except OSError as exc:
                if not isinstance(exc, AuditSilenced):
                    self._needs_open = True  # the next batch re-scans and recovers a torn line
                outcomes += [(future, None, exc) for future, _record in built]
            else:
                self._head = (seq, prev)
                self._head_unsaved = True  # saved once the callers are on their way (rule 6)
                outcomes += [(future, record, None) for future, record in built]
        head = self.head()
        outcomes += [(future, head, None) for future in barriers]
        return outcomes

    def _write_all(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            if written <= 0:
                raise AuditError(f"short write to {self.path}")
            self._size += written
            view = view[written:]
        os.fsync(self._fd)

    def _append_now(self, event: str, fields: dict[str, Any]) -> None:
        """One record written at once from the writer thread (recovery records while opening)."""
        seq, prev = self._head
        record, line = _build(event, fields, seq + 1, prev, self._stamp(), self._keys)
        self._write_all(line)
        self._head = (record["seq"], record["hash"])

    def _check_identity(self) -> None:
        """Rule 5: one stat of the path, compared with the identity of the file we hold."""
        if self._fd is None:
            return
        try:
            st = os.stat(self._path_text)
        except FileNotFoundError:
            problem = "deleted or moved away"
        except OSError as exc:
            problem = f"not checkable ({exc.strerror})"
        else:  # our descriptor's (st_dev, st_ino) is `_identity`, taken from it on open
            if (st.st_dev, st.st_ino) != self._identity:
                problem = "replaced by another file"
            elif st.st_size < self._size:
                problem = f"cut ({st.st_size} bytes left of {self._size} written)"
            else:
                return
        self._failure = (
            f"the audit log {self.path} was {problem}; every tool is refused until the agent is restarted"
        )
        logger.error("%s", self._failure)
        self._save_state()  # a restarted agent records what this one found
        raise AuditSilenced(self._failure)

    # -- opening and recovery (writer thread) ---------------------------------------------------
    def _open_sync(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            own = os.fstat(fd)
            if self._identity is not None and self._identity != (own.st_dev, own.st_ino):
                # Reopening after a failed write must not adopt a file someone put in its place.
                self._failure = f"the audit log {self.path} was replaced by another file"
                self._save_state()
                raise AuditSilenced(self._failure)
            last_good, torn, ends_with_newline = scan_tail(fd)
            self._head = (last_good["seq"], last_good["hash"]) if last_good else (0, GENESIS)
            self._fd, self._identity, self._size = fd, (own.st_dev, own.st_ino), own.st_size
            self._inline = filesystem_type(self.path) in MEMORY_FILESYSTEMS
            if not ends_with_newline:
                self._write_all(b"\n")
            if torn is not None:
                self._append_now(
                    "audit.recovered",
                    {
                        "reason": "torn last line (interrupted write)",
                        "torn_line_sha256": hashlib.sha256(torn).hexdigest(),
                        "torn_line_bytes": len(torn),
                    },
                )
            self._check_saved_head()
            self._save_state()
        except BaseException:
            os.close(fd)
            self._fd = None
            raise
        self._needs_open = False

    def _check_saved_head(self) -> None:
        """Rule 6: the log must still hold the head this agent last wrote, or it says what was lost."""
        state = read_state(self.state_path)
        if state is None:
            return
        seq, digest, failure = state
        intact = (seq, digest) == self._head
        if seq < self._head[0]:  # the head file lagged (lost in a power cut): fine if the record matches
            found = read_records(self.path, seq - 1, 1) if seq > 0 else []
            intact = seq == 0 or bool(found and found[0]["seq"] == seq and found[0]["hash"] == digest)
        if intact and failure is None:
            return
        reasons = [] if intact else ["the log no longer holds the head this agent last wrote"]
        if failure is not None:
            reasons.append(f"the previous run refused every tool: {failure}")
        self._append_now(
            "audit.recovered",
            {
                "reason": "; ".join(reasons),
                "expected_head": {"seq": seq, "hash": digest},
                "found_head": {"seq": self._head[0], "hash": self._head[1]},
            },
        )

    def _stamp(self) -> str:
        """The time now (UTC, milliseconds, ``Z``), formatted once per millisecond (batches come faster
        than that under load); the date and time of day once per second (calls one after another each
        get a millisecond of their own)."""
        ms = time.time_ns() // 1_000_000
        if ms != self._clock[0]:
            second, milli = divmod(ms, 1000)
            if second != self._second[0]:
                self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
            self._clock = (ms, f"{self._second[1]}.{milli:03d}Z")
        return self._clock[1]

    def _save_head(self) -> None:
        """Rule 6: the head, if it moved since the last save (on the loop or on the writer thread)."""
        self._save_scheduled = False
        if self._head_unsaved and self._fd is not None:
            self._head_unsaved = False
            self._save_state()

    def _save_state(self) -> None:
        """The durable head, rewritten in place in `audit.head` (0600)."""
        with self._state_lock:  # the loop and the writer thread both save it
            seq, digest = self._head
            state: dict[str, Any] = {"seq": seq, "hash": digest}
            if self._failure is not None:
                state["failure"] = self._failure[:_MAX_FAILURE_CHARS]
            # The head alone is ASCII whatever the encoder: the encoder built once (a json.dumps builds
            # one per call, which was about 3% of the agent's time at 64 calls in flight on tmpfs).
            text = compact(state) if self._failure is None else json.dumps(state)
            data = text.encode("ascii").ljust(STATE_BYTES - 1) + b"\n"
            try:
                if self._state_fd is None:
                    self._state_fd = os.open(self.state_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                    os.fchmod(self._state_fd, 0o600)
                os.pwrite(self._state_fd, data, 0)
            except OSError as exc:  # the log itself is durable; the head file only helps `verify`
                logger.warning("could not save the audit head to %s: %s", self.state_path, exc)


def _build(
    event: str, fields: dict[str, Any], seq: int, prev: str, ts: str, keys: KeyMemo | None = None
) -> tuple[dict[str, Any], bytes]:
    """The record at `seq` after `prev`, and its line: the canonical body with ``hash`` added last."""
    record: dict[str, Any] = {
        "v": RECORD_VERSION,
        "seq": seq,
        "ts": ts,
        "event": event,
        "request_id": None,
        "tool": None,
        "arguments": None,
        "caller": None,
    }
    for key, value in fields.items():
        if key in ("v", "seq", "ts", "event", "prev", "hash"):
            raise ValueError(f"audit field {key!r} is set by the log itself")
        record[key] = redact(value, keys) if key == "arguments" else value
    record["prev"] = prev
    body = canonical_bytes(record)  # CONTRACT §8's serialisation
    digest = hashlib.sha256(body).hexdigest()
    record["hash"] = digest
    return record, b"".join((body[:-1], b',"hash":"', digest.encode("ascii"), b'"}\n'))
