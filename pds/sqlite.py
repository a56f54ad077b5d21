"""All of the PDS's SQL: one SQLite database (WAL) for every account.

Why one shared database rather than one per account (the reference PDS keeps
a file per account): a commit, its record index rows and its firehose event
must land in one transaction so an acknowledged write is never half-applied
and the event log never misses or invents a commit. With one database the
single writer batches the commits of many accounts into one transaction
("group commit", one fsync for many writes), which is what makes high write
concurrency cheap on SQLite. Per-account files would need a second log and a
two-phase scheme to keep the firehose consistent. Moving an account out is a
query (its rows carry its DID), and an export is one range scan of its blocks.

Connections: one write connection, used only by the writer (in a worker
thread), ``synchronous=FULL`` so a COMMIT is durable when it returns; one read
connection used on the event loop for short point reads (WAL readers never
block the writer).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roost.database import migrate_sqlite
from roost.cid import CID

__all__ = [
    "AccountBlocks",
    "AccountRow",
    "BlobRow",
    "OutboxRow",
    "PdsDatabase",
    "ReadSnapshot",
    "SCHEMA_VERSION",
    "Statement",
]

#: Numbered migrations; each runs once, in order, in one transaction.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
    CREATE TABLE account (
        did TEXT PRIMARY KEY,
        handle TEXT NOT NULL UNIQUE,
        email TEXT UNIQUE,
        password_hash TEXT NOT NULL,
        signing_key TEXT NOT NULL,
        created_at TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'active',
        status_reason TEXT,
        application TEXT,
        invite_code TEXT
    ) STRICT;
    CREATE TABLE repo_root (
        did TEXT PRIMARY KEY,
        cid BLOB NOT NULL,
        rev TEXT NOT NULL,
        data BLOB NOT NULL
    ) STRICT;
    CREATE TABLE block (
        did TEXT NOT NULL,
        cid BLOB NOT NULL,
        data BLOB NOT NULL,
        rev TEXT NOT NULL,
        PRIMARY KEY (did, cid)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX block_by_rev ON block (did, rev);
    CREATE TABLE record (
        did TEXT NOT NULL,
        collection TEXT NOT NULL,
        rkey TEXT NOT NULL,
        cid BLOB NOT NULL,
        rev TEXT NOT NULL,
        PRIMARY KEY (did, collection, rkey)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX record_by_cid ON record (did, cid);
    CREATE TABLE event (
        seq INTEGER PRIMARY KEY,
        did TEXT NOT NULL,
        time_ms INTEGER NOT NULL,
        frame BLOB NOT NULL
    ) STRICT;
    CREATE INDEX event_by_time ON event (time_ms);
    CREATE TABLE refresh_token (
        id TEXT PRIMARY KEY,
        did TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        app_password TEXT,
        next_id TEXT
    ) STRICT;
    CREATE INDEX refresh_token_by_did ON refresh_token (did);
    CREATE TABLE app_password (
        did TEXT NOT NULL,
        name TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        created_at TEXT NOT NULL,
        privileged INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (did, name)
    ) STRICT;
    CREATE TABLE invite_code (
        code TEXT PRIMARY KEY,
        for_did TEXT NOT NULL,
        created_by TEXT NOT NULL,
        available INTEGER NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL
    ) STRICT;
    CREATE TABLE invite_use (
        code TEXT NOT NULL,
        used_by TEXT NOT NULL,
        used_at TEXT NOT NULL,
        PRIMARY KEY (code, used_by)
    ) STRICT;
    CREATE TABLE blob (
        did TEXT NOT NULL,
        cid BLOB NOT NULL,
        mime_type TEXT NOT NULL,
        size INTEGER NOT NULL,
        temp_key TEXT,
        created_at TEXT NOT NULL,
        PRIMARY KEY (did, cid)
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE record_blob (
        did TEXT NOT NULL,
        blob_cid BLOB NOT NULL,
        path TEXT NOT NULL,
        PRIMARY KEY (did, blob_cid, path)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX record_blob_by_path ON record_blob (did, path);
    CREATE TABLE preference (
        did TEXT NOT NULL,
        name TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (did, name)
    ) STRICT, WITHOUT ROWID;
    """,
    # 2: account lifecycle (deactivation, deletion, member messages) and
    # record/blob takedowns
    """
    ALTER TABLE account ADD COLUMN delete_after TEXT;
    CREATE TABLE email_token (
        did TEXT NOT NULL,
        purpose TEXT NOT NULL,
        token TEXT NOT NULL,
        requested_at INTEGER NOT NULL,
        PRIMARY KEY (did, purpose)
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        did TEXT NOT NULL,
        recipient TEXT,
        purpose TEXT NOT NULL,
        subject TEXT NOT NULL,
        body TEXT NOT NULL,
        token TEXT,
        created_at TEXT NOT NULL
    ) STRICT;
    CREATE INDEX outbox_by_did ON outbox (did, id);
    CREATE TABLE deleted_account (
        did TEXT PRIMARY KEY,
        deleted_at TEXT NOT NULL
    ) STRICT;
    CREATE TABLE record_takedown (
        did TEXT NOT NULL,
        collection TEXT NOT NULL,
        rkey TEXT NOT NULL,
        ref TEXT,
        created_at TEXT NOT NULL,
        PRIMARY KEY (did, collection, rkey)
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE blob_takedown (
        did TEXT NOT NULL,
        cid BLOB NOT NULL,
        ref TEXT,
        created_at TEXT NOT NULL,
        PRIMARY KEY (did, cid)
    ) STRICT, WITHOUT ROWID;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

_ACCOUNT_COLUMNS = (
    "did, handle, email, password_hash, signing_key, created_at, status, status_reason,"
    " application, invite_code, delete_after"
)
_ACCOUNT_FIELDS = _ACCOUNT_COLUMNS.count(",") + 1


@dataclass(frozen=True, slots=True)
class AccountRow:
    did: str
    handle: str
    email: str | None
    password_hash: str
    signing_key: str
    created_at: str
    status: str
    status_reason: str | None
    application: str | None
    invite_code: str | None
    #: When the holder of a deactivated account suggested it be deleted (deactivateAccount).
    delete_after: str | None = None

    @property
    def active(self) -> bool:
        return self.status == "active"


@dataclass(frozen=True, slots=True)
class BlobRow:
    """One blob an account holds: temporary (``temp_key`` set) or permanent."""

    did: str
    cid: CID
    mime_type: str
    size: int
    temp_key: str | None
    created_at: str

    @property
    def permanent(self) -> bool:
        return self.temp_key is None


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A message to a member (roost sends no email: the operator relays these)."""

    id: int
    did: str
    recipient: str | None
    purpose: str
    subject: str
    body: str
    token: str | None
    created_at: str


#: One SQL statement and its parameters, for the writer's transaction.
Statement = tuple[str, tuple[Any, ...]]

_BLOB_COLUMNS = "did, cid, mime_type, size, temp_key, created_at"


def _blob_row(row: Sequence[Any]) -> BlobRow:
    return BlobRow(row[0], CID.from_bytes(row[1]), row[2], row[3], row[4], row[5])


class _RepoReads:
    """Repo reads shared by the database's read connection and read snapshots."""

    __slots__ = ()
    _conn: sqlite3.Connection

    def repo_root(self, did: str) -> tuple[CID, str, CID] | None:
        """(commit CID, rev, data CID) of the account's head."""
        row = self._conn.execute(
            "SELECT cid, rev, data FROM repo_root WHERE did = ?", (did,)
        ).fetchone()
        if row is None:
            return None
        return CID.from_bytes(row[0]), row[1], CID.from_bytes(row[2])

    def get_block(self, did: str, cid: CID) -> bytes | None:
        row = self._conn.execute(
            "SELECT data FROM block WHERE did = ? AND cid = ?", (did, cid.bytes)
        ).fetchone()
        return row[0] if row else None

    def get_blocks(self, did: str, cids: Iterable[CID]) -> dict[CID, bytes]:
        out: dict[CID, bytes] = {}
        wanted = list(cids)
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for cid, data in self._conn.execute(
                f"SELECT cid, data FROM block WHERE did = ? AND cid IN ({marks})",
                (did, *(c.bytes for c in chunk)),
            ):
                out[CID.from_bytes(cid)] = data
        return out

    def block_rows(self, did: str) -> sqlite3.Cursor:
        """Every block the account holds, as raw (CID bytes, data) rows in CID order.

        One range scan of the primary key (getRepo: the table holds exactly
        the blocks of the current commit; see :mod:`pds.writer`).
        """
        return self._conn.execute("SELECT cid, data FROM block WHERE did = ?", (did,))

    def blocks_since(self, did: str, rev: str) -> Iterator[tuple[CID, bytes]]:
        """Blocks written by revisions after ``rev`` (for ``getRepo?since``)."""
        cursor = self._conn.execute(
            "SELECT cid, data FROM block WHERE did = ? AND rev > ? ORDER BY rev", (did, rev)
        )
        for cid, data in cursor:
            yield CID.from_bytes(cid), data


class PdsDatabase(_RepoReads):
    """The PDS database: migrations, reads on the loop, writes by the writer."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write = self._connect()
        self._write.execute("PRAGMA synchronous=FULL")
        self._read = self._connect()
        self._read.execute("PRAGMA query_only=ON")
        self._conn = self._read  # the shared repo reads run on the read connection
        self._write_lock = threading.Lock()
        self.migrate()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA busy_timeout=10000")
        conn.execute("PRAGMA cache_size=-65536")
        return conn

    def close(self) -> None:
        self._read.close()
        self._write.close()

    def migrate(self) -> None:
        migrate_sqlite(self._write, MIGRATIONS, "database")

    # -- the write transaction (writer thread only) -----------------------------

    def run_transaction(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        """Execute ``statements`` in one durable transaction (all or nothing)."""
        with self._write_lock:
            conn = self._write
            conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in statements:
                    conn.execute(sql, params)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def last_seq(self) -> int:
        """Highest sequence number ever used (kept in meta, so deletes never lower it)."""
        row = self._read.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
        stored = int(row[0]) if row else 0
        row = self._read.execute("SELECT MAX(seq) FROM event").fetchone()
        return max(stored, row[0] or 0)

    # -- accounts ------------------------------------------------------------

    def account(self, did: str) -> AccountRow | None:
        row = self._read.execute(
            f"SELECT {_ACCOUNT_COLUMNS} FROM account WHERE did = ?", (did,)
        ).fetchone()
        return AccountRow(*row) if row else None

    def account_by_handle(self, handle: str) -> AccountRow | None:
        row = self._read.execute(
            f"SELECT {_ACCOUNT_COLUMNS} FROM account WHERE handle = ?", (handle.lower(),)
        ).fetchone()
        return AccountRow(*row) if row else None

    def account_by_email(self, email: str) -> AccountRow | None:
        row = self._read.execute(
            f"SELECT {_ACCOUNT_COLUMNS} FROM account WHERE email = ?", (email.lower(),)
        ).fetchone()
        return AccountRow(*row) if row else None

    def list_accounts(self, limit: int, cursor: str | None) -> list[tuple[AccountRow, tuple[bytes, str] | None]]:
        """Accounts ordered by (created_at, did) after ``cursor`` = ``created_at::did``."""
        after_time, after_did = ("", "")
        if cursor:
            after_time, _, after_did = cursor.partition("::")
        rows = self._read.execute(
            f"SELECT {_ACCOUNT_COLUMNS}, r.cid, r.rev FROM account a"
            " LEFT JOIN repo_root r USING (did)"
            " WHERE (a.created_at, a.did) > (?, ?) ORDER BY a.created_at, a.did LIMIT ?",
            (after_time, after_did, limit),
        ).fetchall()
        return [
            (
                AccountRow(*row[:_ACCOUNT_FIELDS]),
                (row[_ACCOUNT_FIELDS], row[_ACCOUNT_FIELDS + 1])
                if row[_ACCOUNT_FIELDS] is not None
                else None,
            )
            for row in rows
        ]

    # -- repos ---------------------------------------------------------------

    def record_cid(self, did: str, collection: str, rkey: str) -> CID | None:
        row = self._read.execute(
            "SELECT cid FROM record WHERE did = ? AND collection = ? AND rkey = ?",
            (did, collection, rkey),
        ).fetchone()
        return CID.from_bytes(row[0]) if row else None

    def count_records(self, did: str) -> int:
        return self._read.execute("SELECT COUNT(*) FROM record WHERE did = ?", (did,)).fetchone()[0]

    def storage_use(self, did: str) -> tuple[int, int]:
        """(bytes of repo blocks, bytes of blobs) the account takes."""
        blocks = self._read.execute(
            "SELECT COALESCE(SUM(LENGTH(data)), 0) FROM block WHERE did = ?", (did,)
        ).fetchone()[0]
        blobs = self._read.execute(
            "SELECT COALESCE(SUM(size), 0) FROM blob WHERE did = ?", (did,)
        ).fetchone()[0]
        return int(blocks), int(blobs)

    def largest_blob(self, did: str) -> int:
        """Size in bytes of the account's largest stored blob (0 without blobs)."""
        row = self._read.execute(
            "SELECT COALESCE(MAX(size), 0) FROM blob WHERE did = ? AND temp_key IS NULL", (did,)
        ).fetchone()
        return int(row[0])

    # -- events ----------------------------------------------------------------

    def events_after(self, seq: int, limit: int) -> list[tuple[int, bytes]]:
        return self._read.execute(
            "SELECT seq, frame FROM event WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
        ).fetchall()

    def oldest_seq_since(self, time_ms: int) -> int | None:
        row = self._read.execute(
            "SELECT MIN(seq) FROM event WHERE time_ms >= ?", (time_ms,)
        ).fetchone()
        return row[0]

    # -- sessions ----------------------------------------------------------------

    def refresh_token(self, token_id: str) -> tuple[str, int, str | None, str | None] | None:
        """(did, expires_at, app_password name, next_id) of a refresh token."""
        row = self._read.execute(
            "SELECT did, expires_at, app_password, next_id FROM refresh_token WHERE id = ?",
            (token_id,),
        ).fetchone()
        return tuple(row) if row else None  # type: ignore[return-value]

    # -- record reads for the API (read-only) ------------------------------------

    def record(self, did: str, collection: str, rkey: str) -> tuple[CID, bytes] | None:
        """(CID, block) of a current record, read in one statement (one snapshot).

        A record taken down by the operator reads as absent.
        """
        row = self._read.execute(
            "SELECT r.cid, b.data FROM record r JOIN block b ON b.did = r.did AND b.cid = r.cid"
            " WHERE r.did = ?1 AND r.collection = ?2 AND r.rkey = ?3 AND NOT EXISTS"
            " (SELECT 1 FROM record_takedown t WHERE t.did = ?1 AND t.collection = ?2"
            " AND t.rkey = ?3)",
            (did, collection, rkey),
        ).fetchone()
        return (CID.from_bytes(row[0]), row[1]) if row else None

    def list_records(
        self, did: str, collection: str, limit: int, cursor: str | None, reverse: bool
    ) -> list[tuple[str, CID, bytes]]:
        """(rkey, CID, block) of a collection's records, one statement.

        Newest first (record keys descending, as the reference PDS lists them);
        ``reverse`` lists ascending. ``cursor`` is the last record key already seen.
        Records taken down by the operator are left out.
        """
        order, compare = ("ASC", ">") if reverse else ("DESC", "<")
        where = "r.did = ? AND r.collection = ?"
        params: list[Any] = [did, collection]
        if cursor is not None:
            where += f" AND r.rkey {compare} ?"
            params.append(cursor)
        params.append(limit)
        rows = self._read.execute(
            "SELECT r.rkey, r.cid, b.data FROM record r"
            " JOIN block b ON b.did = r.did AND b.cid = r.cid"
            f" WHERE {where} AND NOT EXISTS (SELECT 1 FROM record_takedown t"
            " WHERE t.did = r.did AND t.collection = r.collection AND t.rkey = r.rkey)"
            f" ORDER BY r.rkey {order} LIMIT ?",
            params,
        ).fetchall()
        return [(rkey, CID.from_bytes(cid), data) for rkey, cid, data in rows]

    def list_collections(self, did: str) -> list[str]:
        """Collections holding at least one record of the account, sorted.

        One index probe per collection (a skip scan), not a scan of every record.
        """
        out: list[str] = []
        after = ""
        while True:
            row = self._read.execute(
                "SELECT collection FROM record WHERE did = ? AND collection > ?"
                " ORDER BY collection LIMIT 1",
                (did, after),
            ).fetchone()
            if row is None:
                return out
            after = row[0]
            out.append(after)

    # -- blobs (reads) -------------------------------------------------------------

    def blob(self, did: str, cid: CID) -> BlobRow | None:
        row = self._read.execute(
            f"SELECT {_BLOB_COLUMNS} FROM blob WHERE did = ? AND cid = ?", (did, cid.bytes)
        ).fetchone()
        return _blob_row(row) if row else None

    def blob_cids(self, did: str) -> set[CID]:
        """CIDs of every blob row of the account, temporary or permanent."""
        rows = self._read.execute("SELECT cid FROM blob WHERE did = ?", (did,))
        return {CID.from_bytes(row[0]) for row in rows}

    def blob_referenced(self, did: str, cid: CID) -> bool:
        """True if a current record of the account references the blob."""
        row = self._read.execute(
            "SELECT 1 FROM record_blob WHERE did = ? AND blob_cid = ? LIMIT 1", (did, cid.bytes)
        ).fetchone()
        return row is not None

    def blobs_at_paths(self, did: str, paths: Iterable[str]) -> set[CID]:
        """CIDs of the blobs the records at ``paths`` (``collection/rkey``) reference."""
        out: set[CID] = set()
        for path in set(paths):
            for (cid,) in self._read.execute(
                "SELECT blob_cid FROM record_blob WHERE did = ? AND path = ?", (did, path)
            ):
                out.add(CID.from_bytes(cid))
        return out

    def referenced_blob_cids(self, did: str, since: str | None = None) -> list[CID]:
        """Distinct CIDs current records of the account reference (unordered).

        ``since``: only those of records written by revisions after it.
        """
        if since is None:
            rows = self._read.execute(
                "SELECT DISTINCT blob_cid FROM record_blob WHERE did = ?", (did,)
            )
        else:
            rows = self._read.execute(
                "SELECT DISTINCT rb.blob_cid FROM record r JOIN record_blob rb"
                " ON rb.did = r.did AND rb.path = r.collection || '/' || r.rkey"
                " WHERE r.did = ? AND r.rev > ?",
                (did, since),
            )
        return [CID.from_bytes(row[0]) for row in rows]

    def missing_blobs(self, did: str) -> list[tuple[CID, str]]:
        """(CID, one referencing path) of referenced blobs the account does not hold
        permanently (after an import, until they are uploaded). Unordered, one per CID."""
        rows = self._read.execute(
            "SELECT rb.blob_cid, MIN(rb.path) FROM record_blob rb WHERE rb.did = ?"
            " AND NOT EXISTS (SELECT 1 FROM blob b WHERE b.did = rb.did"
            " AND b.cid = rb.blob_cid AND b.temp_key IS NULL)"
            " GROUP BY rb.blob_cid",
            (did,),
        )
        return [(CID.from_bytes(cid), path) for cid, path in rows]

    def stale_temp_blobs(self, created_before: str, limit: int) -> list[BlobRow]:
        """Temporary blobs no record references, created at or before ``created_before``."""
        rows = self._read.execute(
            f"SELECT {_BLOB_COLUMNS} FROM blob b WHERE b.temp_key IS NOT NULL"
            " AND b.created_at <= ? AND NOT EXISTS (SELECT 1 FROM record_blob rb"
            " WHERE rb.did = b.did AND rb.blob_cid = b.cid) LIMIT ?",
            (created_before, limit),
        ).fetchall()
        return [_blob_row(row) for row in rows]

    def referenced_temp_blobs(self, limit: int) -> list[BlobRow]:
        """Temporary blobs a record references (a write or upload cut short by a crash)."""
        rows = self._read.execute(
            f"SELECT {_BLOB_COLUMNS} FROM blob b WHERE b.temp_key IS NOT NULL"
            " AND EXISTS (SELECT 1 FROM record_blob rb"
            " WHERE rb.did = b.did AND rb.blob_cid = b.cid) LIMIT ?",
            (limit,),
        ).fetchall()
        return [_blob_row(row) for row in rows]

    def account_dids(self) -> list[str]:
        return [row[0] for row in self._read.execute("SELECT did FROM account ORDER BY did")]

    # -- app passwords -----------------------------------------------------------

    def app_passwords(self, did: str) -> list[tuple[str, str, bool]]:
        """(name, created_at, privileged) of the account's app passwords, newest first."""
        rows = self._read.execute(
            "SELECT name, created_at, privileged FROM app_password WHERE did = ?"
            " ORDER BY created_at DESC, name",
            (did,),
        ).fetchall()
        return [(r[0], r[1], bool(r[2])) for r in rows]

    def app_password(self, did: str, name: str) -> tuple[str, bool] | None:
        """(password_hash, privileged) of one app password by name."""
        row = self._read.execute(
            "SELECT password_hash, privileged FROM app_password WHERE did = ? AND name = ?",
            (did, name),
        ).fetchone()
        return (row[0], bool(row[1])) if row else None

    def app_password_by_hash(self, did: str, password_hash: str) -> tuple[str, bool] | None:
        """(name, privileged) of the app password stored with ``password_hash``."""
        row = self._read.execute(
            "SELECT name, privileged FROM app_password WHERE did = ? AND password_hash = ?",
            (did, password_hash),
        ).fetchone()
        return (row[0], bool(row[1])) if row else None

    @staticmethod
    def insert_app_password_sql(
        did: str, name: str, password_hash: str, created_at: str, privileged: bool
    ) -> Statement:
        return (
            "INSERT INTO app_password (did, name, password_hash, created_at, privileged)"
            " VALUES (?, ?, ?, ?, ?)",
            (did, name, password_hash, created_at, int(privileged)),
        )

    @staticmethod
    def revoke_app_password_sql(did: str, name: str) -> list[Statement]:
        """Delete an app password and the refresh tokens issued for it."""
        return [
            ("DELETE FROM app_password WHERE did = ? AND name = ?", (did, name)),
            ("DELETE FROM refresh_token WHERE did = ? AND app_password = ?", (did, name)),
        ]

    # -- preferences ---------------------------------------------------------------

    def preferences(self, did: str) -> list[str]:
        """The account's stored preferences (JSON texts), in their stored order."""
        rows = self._read.execute(
            "SELECT value FROM preference WHERE did = ? ORDER BY name", (did,)
        ).fetchall()
        return [r[0] for r in rows]

    @staticmethod
    def replace_preferences_sql(did: str, values: Sequence[str]) -> list[Statement]:
        """Replace the account's whole preference set (``values`` are JSON texts).

        Rows are named by position (``000000``, ``000001``...) so the order and
        repeated ``$type``s survive.
        """
        out: list[Statement] = [("DELETE FROM preference WHERE did = ?", (did,))]
        out.extend(
            ("INSERT INTO preference (did, name, value) VALUES (?, ?, ?)", (did, f"{i:06d}", v))
            for i, v in enumerate(values)
        )
        return out

    # -- accounts (statements for the writer's transaction) ------------------------

    @staticmethod
    def update_handle_sql(did: str, handle: str) -> Statement:
        return ("UPDATE account SET handle = ? WHERE did = ?", (handle, did))

    # -- admin: invite codes and account moderation ---------------------------------

    def invite_code(self, code: str) -> tuple[str, str, str, int, bool, str] | None:
        """(code, for_did, created_by, available, disabled, created_at) of a code."""
        row = self._read.execute(
            "SELECT code, for_did, created_by, available, disabled, created_at"
            " FROM invite_code WHERE code = ?",
            (code,),
        ).fetchone()
        return (row[0], row[1], row[2], row[3], bool(row[4]), row[5]) if row else None

    def invite_uses(self, code: str) -> list[tuple[str, str]]:
        """(used_by, used_at) of every use of ``code``."""
        return self._read.execute(
            "SELECT used_by, used_at FROM invite_use WHERE code = ? ORDER BY used_at",
            (code,),
        ).fetchall()

    def invite_codes(
        self, limit: int, cursor: str | None, *, for_did: str | None = None
    ) -> list[tuple[str, str, str, int, bool, str]]:
        """Invite codes newest first, after ``cursor`` = ``created_at::code``."""
        where = "1"
        params: list[Any] = []
        if for_did is not None:
            where += " AND for_did = ?"
            params.append(for_did)
        if cursor:
            after_time, _, after_code = cursor.partition("::")
            where += " AND (created_at, code) < (?, ?)"
            params += [after_time, after_code]
        rows = self._read.execute(
            "SELECT code, for_did, created_by, available, disabled, created_at FROM invite_code"
            f" WHERE {where} ORDER BY created_at DESC, code DESC LIMIT ?",
            (*params, limit),
        ).fetchall()
        return [(r[0], r[1], r[2], r[3], bool(r[4]), r[5]) for r in rows]

    def search_accounts(self, query: str | None, limit: int, cursor: str | None) -> list[AccountRow]:
        """Accounts whose DID, handle or email contains ``query``, by (created_at, did),
        after ``cursor`` = ``created_at::did``."""
        after_time, after_did = ("", "")
        if cursor:
            after_time, _, after_did = cursor.partition("::")
        needle = (query or "").lower()
        rows = self._read.execute(
            f"SELECT {_ACCOUNT_COLUMNS} FROM account WHERE (created_at, did) > (?1, ?2)"
            " AND (?3 = '' OR instr(did, ?3) > 0 OR instr(handle, ?3) > 0"
            " OR instr(COALESCE(email, ''), ?3) > 0)"
            " ORDER BY created_at, did LIMIT ?4",
            (after_time, after_did, needle, limit),
        ).fetchall()
        return [AccountRow(*row) for row in rows]

    @staticmethod
    def insert_invite_code_sql(
        code: str, for_did: str, created_by: str, available: int, created_at: str
    ) -> Statement:
        return (
            "INSERT INTO invite_code (code, for_did, created_by, available, disabled, created_at)"
            " VALUES (?, ?, ?, ?, 0, ?)",
            (code, for_did, created_by, available, created_at),
        )

    @staticmethod
    def use_invite_code_sql(code: str, did: str, used_at: str) -> Statement:
        """Record a use; inserts nothing unless the code is enabled with uses left
        (check the change count, or re-read, to know)."""
        return (
            "INSERT INTO invite_use (code, used_by, used_at) SELECT ?1, ?2, ?3"
            " WHERE EXISTS (SELECT 1 FROM invite_code c WHERE c.code = ?1 AND c.disabled = 0"
            " AND c.available > (SELECT COUNT(*) FROM invite_use u WHERE u.code = ?1))",
            (code, did, used_at),
        )

    @staticmethod
    def disable_invite_codes_sql(codes: Sequence[str], accounts: Sequence[str]) -> list[Statement]:
        out: list[Statement] = [
            ("UPDATE invite_code SET disabled = 1 WHERE code = ?", (code,)) for code in codes
        ]
        out += [
            ("UPDATE invite_code SET disabled = 1 WHERE for_did = ?", (did,)) for did in accounts
        ]
        return out

    @staticmethod
    def set_account_status_sql(
        did: str, status: str, reason: str | None, delete_after: str | None = None
    ) -> Statement:
        return (
            "UPDATE account SET status = ?, status_reason = ?, delete_after = ? WHERE did = ?",
            (status, reason, delete_after, did),
        )

    @staticmethod
    def update_password_sql(did: str, password_hash: str) -> list[Statement]:
        """A new password ends every session of the account."""
        return [
            ("UPDATE account SET password_hash = ? WHERE did = ?", (password_hash, did)),
            ("DELETE FROM refresh_token WHERE did = ?", (did,)),
        ]

    @staticmethod
    def delete_account_sql(did: str, deleted_at: str) -> list[Statement]:
        """Every row of the account (its events too: the caller emits the deletion
        after), leaving a tombstone so later requests can tell it was deleted.
        Messages already sent to the member stay in the outbox (the operator's record)."""
        tables = (
            "record_blob", "blob", "record", "block", "repo_root", "refresh_token",
            "app_password", "preference", "event", "email_token", "record_takedown",
            "blob_takedown",
        )
        out: list[Statement] = [(f"DELETE FROM {t} WHERE did = ?", (did,)) for t in tables]
        out.append(("DELETE FROM account WHERE did = ?", (did,)))
        out.append((
            "INSERT INTO deleted_account (did, deleted_at) VALUES (?, ?)"
            " ON CONFLICT (did) DO UPDATE SET deleted_at = excluded.deleted_at",
            (did, deleted_at),
        ))
        return out

    @staticmethod
    def forget_deletion_sql(did: str) -> Statement:
        """The DID is hosted here again (an account brought back by migration)."""
        return ("DELETE FROM deleted_account WHERE did = ?", (did,))

    def deleted_at(self, did: str) -> str | None:
        """When the account of ``did`` was deleted here (None: never, or hosted again)."""
        row = self._read.execute(
            "SELECT deleted_at FROM deleted_account WHERE did = ?", (did,)
        ).fetchone()
        return row[0] if row else None

    # -- confirmation tokens and the outbox (messages to members) -----------------

    def email_token(self, did: str, purpose: str) -> tuple[str, int] | None:
        """(token, requested_at unix seconds) of the account's token for ``purpose``."""
        row = self._read.execute(
            "SELECT token, requested_at FROM email_token WHERE did = ? AND purpose = ?",
            (did, purpose),
        ).fetchone()
        return (row[0], row[1]) if row else None

    @staticmethod
    def set_email_token_sql(did: str, purpose: str, token: str, requested_at: int) -> Statement:
        """One live token per (account, purpose): a new request replaces the old token."""
        return (
            "INSERT INTO email_token (did, purpose, token, requested_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (did, purpose) DO UPDATE SET token = excluded.token,"
            " requested_at = excluded.requested_at",
            (did, purpose, token, requested_at),
        )

    @staticmethod
    def delete_email_token_sql(did: str, purpose: str) -> Statement:
        return ("DELETE FROM email_token WHERE did = ? AND purpose = ?", (did, purpose))

    @staticmethod
    def insert_outbox_sql(
        did: str, recipient: str | None, purpose: str, subject: str, body: str,
        token: str | None, created_at: str,
    ) -> Statement:
        return (
            "INSERT INTO outbox (did, recipient, purpose, subject, body, token, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (did, recipient, purpose, subject, body, token, created_at),
        )

    def outbox(self, limit: int, before: int | None, did: str | None = None) -> list[OutboxRow]:
        """Messages newest first, with ids below ``before``; only ``did``'s if given."""
        where = "1"
        params: list[Any] = []
        if before is not None:
            where += " AND id < ?"
            params.append(before)
        if did is not None:
            where += " AND did = ?"
            params.append(did)
        rows = self._read.execute(
            "SELECT id, did, recipient, purpose, subject, body, token, created_at FROM outbox"
            f" WHERE {where} ORDER BY id DESC LIMIT ?",
            (*params, limit),
        ).fetchall()
        return [OutboxRow(*row) for row in rows]

    # -- record and blob takedowns ---------------------------------------------------

    def record_takedown(self, did: str, collection: str, rkey: str) -> tuple[str | None] | None:
        """``(ref,)`` if the record at that path is taken down, else None."""
        row = self._read.execute(
            "SELECT ref FROM record_takedown WHERE did = ? AND collection = ? AND rkey = ?",
            (did, collection, rkey),
        ).fetchone()
        return (row[0],) if row else None

    def blob_takedown(self, did: str, cid: CID) -> tuple[str | None] | None:
        """``(ref,)`` if the account's blob is taken down, else None."""
        row = self._read.execute(
            "SELECT ref FROM blob_takedown WHERE did = ? AND cid = ?", (did, cid.bytes)
        ).fetchone()
        return (row[0],) if row else None

    @staticmethod
    def record_takedown_sql(
        did: str, collection: str, rkey: str, applied: bool, ref: str | None, at: str
    ) -> Statement:
        if not applied:
            return (
                "DELETE FROM record_takedown WHERE did = ? AND collection = ? AND rkey = ?",
                (did, collection, rkey),
            )
        return (
            "INSERT INTO record_takedown (did, collection, rkey, ref, created_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (did, collection, rkey)"
            " DO UPDATE SET ref = excluded.ref",
            (did, collection, rkey, ref, at),
        )

    @staticmethod
    def blob_takedown_sql(did: str, cid: CID, applied: bool, ref: str | None, at: str) -> Statement:
        if not applied:
            return ("DELETE FROM blob_takedown WHERE did = ? AND cid = ?", (did, cid.bytes))
        return (
            "INSERT INTO blob_takedown (did, cid, ref, created_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (did, cid) DO UPDATE SET ref = excluded.ref",
            (did, cid.bytes, ref, at),
        )

    # -- migration progress (checkAccountStatus) ------------------------------------

    def account_counts(self, did: str) -> dict[str, int]:
        """Blocks, indexed records, private state values (preferences), blobs the
        records reference and those of them held here."""
        one = self._read.execute
        return {
            "repoBlocks": one("SELECT COUNT(*) FROM block WHERE did = ?", (did,)).fetchone()[0],
            "indexedRecords": self.count_records(did),
            "privateStateValues": one(
                "SELECT COUNT(*) FROM preference WHERE did = ?", (did,)
            ).fetchone()[0],
            "expectedBlobs": one(
                "SELECT COUNT(DISTINCT blob_cid) FROM record_blob WHERE did = ?", (did,)
            ).fetchone()[0],
            "importedBlobs": one(
                "SELECT COUNT(*) FROM blob b WHERE b.did = ?1 AND b.temp_key IS NULL"
                " AND EXISTS (SELECT 1 FROM record_blob rb WHERE rb.did = ?1"
                " AND rb.blob_cid = b.cid)",
                (did,),
            ).fetchone()[0],
        }

    # -- blobs (statements for the writer's transaction) ---------------------------

    @staticmethod
    def track_upload_sql(
        did: str, cid: CID, mime_type: str, size: int, temp_key: str, created_at: str,
        *, moved: bool,
    ) -> Statement:
        """Record an upload as a temporary blob; a blob already permanent stays so.

        ``moved``: the file was already put in place because records reference the
        blob (an import); it becomes permanent if they still do at commit.
        """
        return (
            "INSERT INTO blob (did, cid, mime_type, size, temp_key, created_at)"
            " VALUES (?1, ?2, ?3, ?4, CASE WHEN ?7 AND EXISTS (SELECT 1 FROM record_blob"
            " WHERE did = ?1 AND blob_cid = ?2) THEN NULL ELSE ?5 END, ?6)"
            " ON CONFLICT (did, cid) DO UPDATE SET temp_key = excluded.temp_key,"
            " mime_type = excluded.mime_type, size = excluded.size,"
            " created_at = excluded.created_at WHERE blob.temp_key IS NOT NULL",
            (did, cid.bytes, mime_type, size, temp_key, created_at, int(moved)),
        )

    @staticmethod
    def unlink_record_blobs_sql(did: str, path: str) -> list[Statement]:
        """Forget the blob references of the record at ``path``; delete the rows of
        blobs no other record of the account references any more."""
        return [
            (
                "DELETE FROM blob WHERE did = ?1 AND cid IN (SELECT blob_cid FROM record_blob"
                " WHERE did = ?1 AND path = ?2) AND NOT EXISTS (SELECT 1 FROM record_blob rb"
                " WHERE rb.did = ?1 AND rb.blob_cid = blob.cid AND rb.path <> ?2)",
                (did, path),
            ),
            ("DELETE FROM record_blob WHERE did = ? AND path = ?", (did, path)),
        ]

    @staticmethod
    def link_record_blob_sql(
        did: str, path: str, blob: BlobRow, created_at: str
    ) -> list[Statement]:
        """The record at ``path`` references ``blob``, which is (now) permanent.

        The blob row is written back if a job earlier in the same transaction
        deleted it (its file is in place: the caller checked).
        """
        return [
            (
                "INSERT INTO record_blob (did, blob_cid, path) VALUES (?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (did, blob.cid.bytes, path),
            ),
            (
                "INSERT INTO blob (did, cid, mime_type, size, temp_key, created_at)"
                " VALUES (?, ?, ?, ?, NULL, ?)"
                " ON CONFLICT (did, cid) DO UPDATE SET temp_key = NULL,"
                " mime_type = excluded.mime_type",
                (did, blob.cid.bytes, blob.mime_type, blob.size, created_at),
            ),
        ]

    @staticmethod
    def settle_temp_blob_sql(did: str, cid: CID, temp_key: str) -> Statement:
        """A temporary blob whose file was moved into place becomes permanent,
        if records still reference it."""
        return (
            "UPDATE blob SET temp_key = NULL WHERE did = ?1 AND cid = ?2 AND temp_key = ?3"
            " AND EXISTS (SELECT 1 FROM record_blob WHERE did = ?1 AND blob_cid = ?2)",
            (did, cid.bytes, temp_key),
        )

    @staticmethod
    def drop_temp_blob_sql(did: str, cid: CID, temp_key: str) -> Statement:
        """Delete a temporary blob's row unless a record references it by now."""
        return (
            "DELETE FROM blob WHERE did = ?1 AND cid = ?2 AND temp_key = ?3"
            " AND NOT EXISTS (SELECT 1 FROM record_blob WHERE did = ?1 AND blob_cid = ?2)",
            (did, cid.bytes, temp_key),
        )

    # -- repo import (statements for the writer's transaction) --------------------

    @staticmethod
    def clear_repo_sql(did: str) -> list[Statement]:
        """Forget the account's blocks, record index and record blob references
        (before an imported repo replaces them)."""
        return [
            ("DELETE FROM block WHERE did = ?", (did,)),
            ("DELETE FROM record WHERE did = ?", (did,)),
            ("DELETE FROM record_blob WHERE did = ?", (did,)),
        ]

    @staticmethod
    def put_block_sql(did: str, cid: CID, data: bytes, rev: str) -> Statement:
        return (
            "INSERT INTO block (did, cid, data, rev) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (did, cid) DO UPDATE SET rev = excluded.rev",
            (did, cid.bytes, data, rev),
        )

    @staticmethod
    def put_record_sql(did: str, collection: str, rkey: str, cid: CID, rev: str) -> Statement:
        return (
            "INSERT OR REPLACE INTO record (did, collection, rkey, cid, rev) VALUES (?, ?, ?, ?, ?)",
            (did, collection, rkey, cid.bytes, rev),
        )

    @staticmethod
    def put_record_blob_sql(did: str, path: str, blob_cid: CID) -> Statement:
        """The record at ``path`` references the blob (held or not: listMissingBlobs)."""
        return (
            "INSERT INTO record_blob (did, blob_cid, path) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            (did, blob_cid.bytes, path),
        )

    @staticmethod
    def set_repo_root_sql(did: str, cid: CID, rev: str, data: CID) -> Statement:
        return (
            "INSERT INTO repo_root (did, cid, rev, data) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (did) DO UPDATE SET cid = excluded.cid, rev = excluded.rev,"
            " data = excluded.data",
            (did, cid.bytes, rev, data.bytes),
        )

    def snapshot(self) -> ReadSnapshot:
        """A consistent read-only view for a long read (a repo export); close it."""
        return ReadSnapshot(self.path)


class AccountBlocks:
    """One account's committed blocks, as a :class:`roost.blockstore.BlockStore`.

    Read-only view for the repo engine; writes go through the writer. New
    blocks of a pending commit are kept in ``pending`` until it commits.
    """

    __slots__ = ("db", "did", "pending")

    def __init__(self, db: PdsDatabase, did: str) -> None:
        self.db = db
        self.did = did
        self.pending: dict[CID, bytes] = {}

    def get(self, cid: CID) -> bytes | None:
        data = self.pending.get(cid)
        if data is not None:
            return data
        return self.db.get_block(self.did, cid)

    def has(self, cid: CID) -> bool:
        return self.get(cid) is not None

    def put(self, cid: CID, data: bytes) -> None:
        self.pending[cid] = data

    def get_many(self, cids: Iterable[CID]) -> dict[CID, bytes]:
        wanted = list(cids)
        out = {c: self.pending[c] for c in wanted if c in self.pending}
        missing = [c for c in wanted if c not in out]
        if missing:
            out.update(self.db.get_blocks(self.did, missing))
        return out

    def put_many(self, blocks: Iterable[tuple[CID, bytes]]) -> None:
        self.pending.update(blocks)

    def delete_many(self, cids: Iterable[CID]) -> None:
        for cid in cids:
            self.pending.pop(cid, None)

    def take_pending(self) -> dict[CID, bytes]:
        pending, self.pending = self.pending, {}
        return pending


class ReadSnapshot(_RepoReads):
    """One read transaction on its own connection: a frozen view of the database.

    Commits made while it is open are invisible to it, so a repo export
    streamed over many reads sees one revision even if the account writes
    (and the writer deletes the old tree's blocks) meanwhile. Close it
    promptly (``with`` or :meth:`close`): while it is open, WAL checkpoints
    cannot move past it. Used by one thread at a time.
    """

    __slots__ = ("_conn",)

    def __init__(self, path: Path) -> None:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA query_only=ON")
            conn.execute("PRAGMA busy_timeout=10000")
            conn.execute("BEGIN")
            conn.execute("SELECT 1 FROM repo_root LIMIT 1").fetchall()  # the snapshot starts here
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def __enter__(self) -> ReadSnapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()  # ends the read transaction

    def record_blocks_since(self, did: str, rev: str) -> Iterator[tuple[CID, bytes]]:
        """Blocks of the records written by revisions after ``rev``.

        Needed besides :meth:`blocks_since`: a block stored before (the same
        record content at another path) keeps the revision that first wrote it.
        """
        cursor = self._conn.execute(
            "SELECT r.cid, b.data FROM record r JOIN block b ON b.did = r.did AND b.cid = r.cid"
            " WHERE r.did = ? AND r.rev > ?",
            (did, rev),
        )
        for cid, data in cursor:
            yield CID.from_bytes(cid), data
