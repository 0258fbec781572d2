"""Durable server state: enrolled nodes, credential hashes, revocations and the signing key.

Where it sits: the bottom of the server's identity layer. `server.auth` mints and checks tokens with the
key kept here; `server.admin` (the CLI commands) and the app's ``/oauth/token`` endpoint enroll, verify
and revoke nodes through `ServerStore`. Nothing here knows about HTTP or WebSockets.

Invariants:

1. Only a salted hash of a node credential is ever written; the plaintext exists once, in the return
   value of `ServerStore.enroll_node`.
2. Node names are unique for the life of the data directory: a revoked name stays taken, so a replayed
   or repeated enrollment never resurrects a revoked node.
3. Every revocation appends one row to ``revocations``; ``seq`` only grows, so any process can follow
   the table with `ServerStore.revocations_after` (that is how `server.revocation_feed` sees a
   ``cortex-server revoke-node`` run in another process).
4. The data directory is mode 0700 and the database (with its WAL/SHM side files) mode 0600.
5. The schema is versioned and only migrated forward (`server.schema`).
6. ``revoke_user`` appends to ``user_revocations`` the same way (its own ``seq``): every token of that
   user issued at or before ``revoked_at`` is dead, in one workspace or (workspace NULL) in all.
7. Each node's last audit head is kept with a status: `observe_audit_head` compares and updates it in
   one transaction; a head that went backwards (lower ``seq``) or changed its hash at the same ``seq``
   sets ``rewound``, which only `acknowledge_audit` clears.

Two layers, and why. `Store` is the interface every server caller uses, and it is async: the shared
engine (PostgreSQL, `server.stores.postgres`) is reached with psycopg 3's async API through a
psycopg-pool `AsyncConnectionPool`, so a slow database never holds the event loop, and callers await
one interface whatever the engine. `ServerStore` is the embedded SQLite engine, kept synchronous (the
`sqlite3` module is); `server.stores.sqlite.SQLiteStore` is its `Store`, running each call in a worker
thread exactly as the callers used to with `asyncio.to_thread`. The admin commands (one call each) run
the async interface under `asyncio.run` (`server.admin`). `server.stores.open_store` picks the engine
from ``--database-url``. Both engines keep rules 1-7 and share the hashing and validation below.

Exception tree::

    StoreError          -- any refusal by the store
    ├── InvalidName     -- a node or workspace name outside ^[a-z0-9][a-z0-9-]{0,62}$
    ├── NodeExists      -- the node name is already enrolled (or was, and got revoked)
    └── StoreUnavailable -- the database could not be reached or was busy (retry later; nothing changed)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from joserfc.jwk import OKPKey

from server.schema import SchemaTooNew, migrate

__all__ = [
    "AUDIT_OK",
    "AUDIT_REWOUND",
    "CREDENTIAL_PREFIX",
    "NAME_PATTERN",
    "AuditHead",
    "InvalidName",
    "NodeExists",
    "NodeRecord",
    "ServerStore",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "UserRevocation",
    "validate_name",
]

logger = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
"""Node and workspace names: lowercase, digits and dashes, 1-63 characters, no leading dash."""

CREDENTIAL_PREFIX = "cnc_"
"""Every node credential starts with this, so a leaked one is recognisable (secret scanners)."""

_MAX_CREDENTIAL_LEN = 256
_DB_NAME = "cortex.db"


class StoreError(Exception):
    """The store refused an operation; the subclass says why."""


class InvalidName(StoreError, ValueError):
    """A node or workspace name does not match ``^[a-z0-9][a-z0-9-]{0,62}$``."""


class NodeExists(StoreError):
    """The node name is taken: enrolled before (even if since revoked). Enrollment is never replayed."""


class StoreUnavailable(StoreError):
    """The database did not answer (down, unreachable, locked too long); the operation did not happen."""


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """One enrolled node. Times are Unix seconds; ``revoked_at`` is None while the node is live."""

    name: str
    workspace: str
    created_at: float
    revoked_at: float | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


AUDIT_OK = "ok"
AUDIT_REWOUND = "rewound"
_MAX_HASH_LEN = 128


@dataclass(frozen=True, slots=True)
class AuditHead:
    """The server's persisted view of one node's audit chain head."""

    node: str
    seq: int
    hash: str | None
    status: str
    reason: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"seq": self.seq, "hash": self.hash, "status": self.status}


@dataclass(frozen=True, slots=True)
class UserRevocation:
    """Tokens of ``sub`` issued at or before ``revoked_at`` are dead (in ``workspace``, or all if None)."""

    seq: int
    sub: str
    workspace: str | None
    revoked_at: float


def validate_name(value: str, what: str = "name") -> str:
    """Return *value* if it is a valid node/workspace name, else raise `InvalidName`."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise InvalidName(f"invalid {what} {value!r}: must match {NAME_PATTERN.pattern}")
    return value


def _hash_credential(credential: str, salt: bytes) -> str:
    # Credentials are 256 bits from `secrets`, not human passwords: nobody can enumerate that space, so
    # a slow KDF (scrypt/argon2) would buy nothing but latency on every /oauth/token call. One salted
    # SHA-256 is enough to make the DB useless to someone who steals it; the salt keeps equal hashes
    # from ever lining up across rows or data directories.
    digest = hashlib.sha256(salt + credential.encode("utf-8")).hexdigest()
    return f"sha256${salt.hex()}${digest}"


def _check_credential(credential: str, stored: str) -> bool:
    try:
        scheme, salt_hex, _ = stored.split("$")
        salt = bytes.fromhex(salt_hex)
    except ValueError:
        return False
    if scheme != "sha256":
        return False
    return hmac.compare_digest(_hash_credential(credential, salt), stored)


# A well-formed hash never matched, used to spend the same work on unknown names as on known ones.
_DUMMY_HASH = _hash_credential("cnc_dummy", bytes(16))


def _touch_private(path: Path) -> None:
    """Create *path* if missing and force mode 0600 (the umask must not widen it).

    An existing file is never opened here: closing any descriptor of a database file drops every POSIX
    lock this process holds on it, those of a store already open in this process included (an admin
    command run inside the server, as the demo does). That store's connection would then look unused
    to SQLite, and the next store to close would checkpoint and delete the WAL under it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        os.close(fd)  # a file this call made: nothing in this process can hold a lock on it yet
    os.chmod(path, 0o600)


_WAL_SWITCH_S = 10.0


def _switch_to_wal(db: sqlite3.Connection) -> None:
    """``PRAGMA journal_mode=WAL``, waiting (bounded) while another connection holds the file.

    Switching a new database to WAL needs the file to itself, and SQLite answers "database is locked"
    at once rather than through the busy timeout when several stores open one new file together
    (replicas or admin commands starting at the same moment)."""
    deadline = time.monotonic() + _WAL_SWITCH_S
    pause = 0.005
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(pause)  # another opener holds the lock for a moment: wait for it, not for an event
        pause = min(pause * 2, 0.1)


class ServerStore:
    """The server's SQLite database in *data_dir* (created 0700; ``cortex.db`` 0600, WAL mode).

    Thread-safe: one connection guarded by a lock. Several processes may open the same directory
    (the running server and a ``cortex-server revoke-node``); SQLite's file locking orders them.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        self.db_path = self.data_dir / _DB_NAME
        _touch_private(self.db_path)
        self._lock = threading.Lock()
        # isolation_level=None: autocommit, with explicit BEGIN IMMEDIATE around read-modify-write so two
        # processes never both think they created the signing key or enrolled the same name.
        self._db = sqlite3.connect(self.db_path, timeout=10.0, isolation_level=None, check_same_thread=False)
        with self._lock:
            _switch_to_wal(self._db)
            # FULL: a revocation that the CLI reported done must survive a power cut.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            try:
                migrate(self._db)
            except SchemaTooNew as exc:
                self._db.close()
                raise StoreError(str(exc)) from None
        for suffix in ("-wal", "-shm"):
            side = self.data_dir / (_DB_NAME + suffix)
            if side.exists():
                os.chmod(side, 0o600)
        self._closed = False

    # -- nodes ---------------------------------------------------------------------------------------

    def enroll_node(self, name: str, workspace: str) -> str:
        """Register *name* in *workspace*; return its new credential (shown once, stored only hashed).

        Raises `InvalidName` for a bad name or workspace, `NodeExists` if the name was ever enrolled.
        """
        validate_name(name, "node name")
        validate_name(workspace, "workspace")
        credential = CREDENTIAL_PREFIX + secrets.token_urlsafe(32)
        stored = _hash_credential(credential, secrets.token_bytes(16))
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO nodes (name, workspace, credential_hash, created_at) VALUES (?, ?, ?, ?)",
                    (name, workspace, stored, time.time()),
                )
            except sqlite3.IntegrityError:
                raise NodeExists(f"node {name!r} is already enrolled") from None
        logger.info("enrolled node %r in workspace %r", name, workspace)
        return credential

    def verify_credential(self, name: str, credential: str) -> NodeRecord | None:
        """The node's record if *credential* is its live credential; None if unknown, wrong or revoked."""
        if not isinstance(name, str) or not isinstance(credential, str):
            return None
        if len(credential) > _MAX_CREDENTIAL_LEN or not NAME_PATTERN.fullmatch(name):
            return None
        with self._lock:
            row = self._db.execute(
                "SELECT name, workspace, created_at, revoked_at, credential_hash FROM nodes WHERE name = ?",
                (name,),
            ).fetchone()
        # Hash even when the name is unknown so response time does not tell which names exist.
        ok = _check_credential(credential, row[4] if row else _DUMMY_HASH)
        if row is None or not ok or row[3] is not None:
            return None
        return NodeRecord(row[0], row[1], row[2], row[3])

    def get_node(self, name: str) -> NodeRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT name, workspace, created_at, revoked_at FROM nodes WHERE name = ?", (name,)
            ).fetchone()
        return NodeRecord(*row) if row else None

    def list_nodes(self, workspace: str | None = None) -> list[NodeRecord]:
        """All enrolled nodes (revoked ones included), by name; only *workspace*'s if given."""
        query = "SELECT name, workspace, created_at, revoked_at FROM nodes"
        params: tuple[str, ...] = ()
        if workspace is not None:
            query += " WHERE workspace = ?"
            params = (workspace,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY name", params).fetchall()
        return [NodeRecord(*row) for row in rows]

    def is_revoked(self, name: str) -> bool:
        """True if *name* was enrolled and has been revoked (unknown names are not 'revoked')."""
        node = self.get_node(name)
        return node is not None and node.revoked_at is not None

    # -- revocation ----------------------------------------------------------------------------------

    def revoke_node(self, name: str) -> bool:
        """Revoke *name* at once: True if it was live and is now revoked; False if unknown or revoked."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cur = self._db.execute(
                    "UPDATE nodes SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", (now, name)
                )
                changed = cur.rowcount == 1
                if changed:
                    self._db.execute("INSERT INTO revocations (node, revoked_at) VALUES (?, ?)", (name, now))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        if changed:
            logger.info("revoked node %r", name)
        return changed

    def revocations_after(self, seq: int) -> list[tuple[int, str]]:
        """Revocations with a sequence number above *seq*, oldest first, as ``(seq, node)``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, node FROM revocations WHERE seq > ? ORDER BY seq", (int(seq),)
            ).fetchall()
        return [(int(s), str(n)) for s, n in rows]

    def last_revocation_seq(self) -> int:
        """The newest revocation's sequence number, 0 if there is none."""
        with self._lock:
            row = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM revocations").fetchone()
        return int(row[0])

    def enrollments_after(self, seq: int) -> list[tuple[int, NodeRecord]]:
        """Nodes enrolled after enrollment number *seq*, oldest first, as ``(seq, record)``.

        The number is the row's rowid: nodes are never deleted, so it only grows (rule 2), and any
        process can follow enrollments by it as it follows revocations (`server.changes`)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT rowid, name, workspace, created_at, revoked_at FROM nodes WHERE rowid > ?"
                " ORDER BY rowid",
                (int(seq),),
            ).fetchall()
        return [(int(r[0]), NodeRecord(r[1], r[2], r[3], r[4])) for r in rows]

    def last_enrollment_seq(self) -> int:
        """The newest enrollment's number (`enrollments_after`), 0 if there is none."""
        with self._lock:
            row = self._db.execute("SELECT COALESCE(MAX(rowid), 0) FROM nodes").fetchone()
        return int(row[0])

    # -- users -------------------------------------------------------------------------------------

    def revoke_user(self, sub: str, workspace: str | None = None) -> UserRevocation:
        """Kill every token of *sub* issued up to now (in *workspace*, or in every workspace)."""
        if not isinstance(sub, str) or not sub or len(sub) > 128 or not sub.isprintable():
            raise StoreError(f"invalid user name {sub!r}")
        if workspace is not None:
            validate_name(workspace, "workspace")
        now = time.time()
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO user_revocations (sub, workspace, revoked_at) VALUES (?, ?, ?)",
                (sub, workspace, now),
            )
            seq = int(cur.lastrowid or 0)
        logger.info("revoked user %r (workspace %s)", sub, workspace or "*")
        return UserRevocation(seq, sub, workspace, now)

    def user_revocations_after(self, seq: int) -> list[UserRevocation]:
        """User revocations with a sequence number above *seq*, oldest first (0: all of them)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, sub, workspace, revoked_at FROM user_revocations WHERE seq > ? ORDER BY seq",
                (int(seq),),
            ).fetchall()
        return [UserRevocation(int(r[0]), str(r[1]), r[2], float(r[3])) for r in rows]

    # -- audit heads ---------------------------------------------------------------------------------

    def audit_heads(self) -> dict[str, AuditHead]:
        """Every node's persisted audit head, by node name."""
        with self._lock:
            rows = self._db.execute("SELECT node, seq, hash, status, reason FROM audit_heads").fetchall()
        return {r[0]: AuditHead(r[0], int(r[1]), r[2], r[3], r[4]) for r in rows}

    def get_audit_head(self, node: str) -> AuditHead | None:
        with self._lock:
            row = self._db.execute(
                "SELECT node, seq, hash, status, reason FROM audit_heads WHERE node = ?", (node,)
            ).fetchone()
        return AuditHead(row[0], int(row[1]), row[2], row[3], row[4]) if row else None

    def observe_audit_head(self, node: str, seq: int, head_hash: str | None) -> AuditHead:
        """Record that *node* reported head (*seq*, *head_hash*); returns the persisted view (rule 7)."""
        if type(seq) is not int or seq < 0:
            raise StoreError("audit head seq must be a non-negative integer")
        if head_hash is not None and (not isinstance(head_hash, str) or len(head_hash) > _MAX_HASH_LEN):
            raise StoreError("audit head hash must be a short string")
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT seq, hash, status, reason FROM audit_heads WHERE node = ?", (node,)
                ).fetchone()
                status, reason = AUDIT_OK, None
                if row is not None:
                    status, reason = row[2], row[3]
                    if seq < int(row[0]):
                        status = AUDIT_REWOUND
                        reason = f"head went back from seq {int(row[0])} to {seq}"
                    elif seq == int(row[0]) and head_hash != row[1]:
                        status = AUDIT_REWOUND
                        reason = f"record {seq} changed its hash"
                changed = row is None or (seq, head_hash, status) != (int(row[0]), row[1], row[2])
                if changed:
                    self._db.execute(
                        "INSERT INTO audit_heads (node, seq, hash, status, reason, updated_at)"
                        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(node) DO UPDATE SET seq = excluded.seq,"
                        " hash = excluded.hash, status = excluded.status, reason = excluded.reason,"
                        " updated_at = excluded.updated_at",
                        (node, seq, head_hash, status, reason, now),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        if row is not None and status == AUDIT_REWOUND and row[2] != AUDIT_REWOUND:
            logger.warning("node %r audit log rewound: %s", node, reason)
        return AuditHead(node, seq, head_hash, status, reason)

    def acknowledge_audit(self, node: str) -> AuditHead | None:
        """An admin saw the rewind: status back to ``ok`` at the current head. None if no head is known."""
        with self._lock:
            self._db.execute(
                "UPDATE audit_heads SET status = ?, reason = NULL, updated_at = ? WHERE node = ?",
                (AUDIT_OK, time.time(), node),
            )
        return self.get_audit_head(node)

    # -- signing key ---------------------------------------------------------------------------------

    def load_or_create_signing_key(self) -> OKPKey:
        """The server's Ed25519 signing key (private, with ``kid``), created on first use.

        Kept inside the 0600 database so it survives restarts and moves with the rest of the state.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT jwk FROM signing_keys ORDER BY created_at DESC, kid LIMIT 1"
                ).fetchone()
                if row is None:
                    key = OKPKey.generate_key("Ed25519", auto_kid=True)
                    self._db.execute(
                        "INSERT INTO signing_keys (kid, jwk, created_at) VALUES (?, ?, ?)",
                        (key.kid, json.dumps(key.as_dict(private=True)), time.time()),
                    )
                    logger.info("created signing key kid=%s", key.kid)
                else:
                    key = OKPKey.import_key(json.loads(row[0]))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return key

    def signing_keys(self) -> list[OKPKey]:
        """Every stored signing key (private), newest first (the first is the one signing)."""
        with self._lock:
            rows = self._db.execute("SELECT jwk FROM signing_keys ORDER BY created_at DESC, kid").fetchall()
        return [OKPKey.import_key(json.loads(row[0])) for row in rows]

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    def __enter__(self) -> ServerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the interface -----------------------------------------------------------------------------------


class Store(Protocol):
    """What the server keeps durably, whatever the engine (rules 1-7 hold for every implementation).

    Implementations: `server.stores.sqlite.SQLiteStore` (the embedded default, over `ServerStore`) and
    `server.stores.postgres.PostgresStore` (state shared by replicas). Every method may raise
    `StoreUnavailable` when the engine does not answer; none leaves a partial change behind.
    """

    engine: str
    """``"sqlite"`` or ``"postgresql"`` (for logs and the health view; never holds a password)."""

    async def enroll_node(self, name: str, workspace: str) -> str:
        """Register *name*; its new credential (stored only hashed). `InvalidName`, `NodeExists`."""
        ...

    async def verify_credential(self, name: str, credential: str) -> NodeRecord | None:
        """The node's record if *credential* is its live credential; None if unknown, wrong or revoked."""
        ...

    async def get_node(self, name: str) -> NodeRecord | None: ...

    async def list_nodes(self, workspace: str | None = None) -> list[NodeRecord]:
        """All enrolled nodes (revoked ones included), by name; only *workspace*'s if given."""
        ...

    async def is_revoked(self, name: str) -> bool: ...

    async def revoke_node(self, name: str) -> bool:
        """True if *name* was live and is now revoked; False if unknown or already revoked."""
        ...

    async def revocations_after(self, seq: int) -> list[tuple[int, str]]:
        """``(seq, node)`` of revocations above *seq*, oldest first. A row never appears below a
        sequence number already returned (rule 3): following the table by ``seq`` misses nothing."""
        ...

    async def last_revocation_seq(self) -> int: ...

    async def enrollments_after(self, seq: int) -> list[tuple[int, NodeRecord]]:
        """``(seq, record)`` of nodes enrolled after enrollment number *seq*, oldest first; the same
        ordering promise as `revocations_after` (a follower by number misses no enrollment)."""
        ...

    async def last_enrollment_seq(self) -> int: ...

    async def revoke_user(self, sub: str, workspace: str | None = None) -> UserRevocation: ...

    async def user_revocations_after(self, seq: int) -> list[UserRevocation]:
        """User revocations above *seq*, oldest first (0: all); the same ordering promise as above."""
        ...

    async def audit_heads(self) -> dict[str, AuditHead]: ...

    async def get_audit_head(self, node: str) -> AuditHead | None: ...

    async def observe_audit_head(self, node: str, seq: int, head_hash: str | None) -> AuditHead:
        """Compare and record *node*'s reported head in one transaction (rule 7)."""
        ...

    async def acknowledge_audit(self, node: str) -> AuditHead | None: ...

    async def load_or_create_signing_key(self) -> OKPKey:
        """The key this server signs with (private), created once: every process (every replica)
        opening the same database at once gets the same key."""
        ...

    async def signing_keys(self) -> list[OKPKey]:
        """Every active signing key (private), newest first: the JWKS publishes them all."""
        ...

    async def close(self) -> None: ...
