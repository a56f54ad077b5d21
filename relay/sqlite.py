"""All of the relay's SQL: the :class:`~relay.storage.Store` over one SQLite file (WAL).

Connections: one write connection, used by the writer (in a worker thread)
with ``synchronous=FULL``, so an event is durable before it is sent to
anyone; one read connection for short reads on the event loop; and a small
pool of read connections for event-log pages, which are read in worker
threads (a replay page is up to a megabyte; WAL readers never block the
writer). Frames are stored whole: replay sends the stored bytes as they are.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from relay.storage import AccountState, HostRow, Statement, WriteSet, prune_cut
from roost.database import migrate_sqlite

__all__ = ["MIGRATIONS", "READ_POOL_SIZE", "SCHEMA_VERSION", "SqliteStore"]

#: Read connections for event-log pages (replays running at once beyond this wait).
READ_POOL_SIZE: Final = 4

#: Numbered migrations; each runs once, in order, in one transaction.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
    CREATE TABLE host (
        id INTEGER PRIMARY KEY,
        hostname TEXT NOT NULL UNIQUE,
        no_ssl INTEGER NOT NULL,
        status TEXT NOT NULL,
        account_limit INTEGER NOT NULL,
        trusted INTEGER NOT NULL,
        last_seq INTEGER NOT NULL,
        account_count INTEGER NOT NULL,
        created_at TEXT NOT NULL
    ) STRICT;
    CREATE TABLE account (
        uid INTEGER PRIMARY KEY,
        did TEXT NOT NULL UNIQUE,
        host_id INTEGER NOT NULL,
        status TEXT NOT NULL,
        upstream_status TEXT NOT NULL,
        rev TEXT,
        commit_cid BLOB,
        data_cid BLOB,
        desync INTEGER NOT NULL,
        created_at TEXT NOT NULL
    ) STRICT;
    CREATE INDEX account_by_host_status ON account (host_id, status, uid);
    CREATE INDEX account_by_status ON account (status, uid);
    CREATE TABLE event (
        seq INTEGER PRIMARY KEY,
        uid INTEGER NOT NULL,
        time_ms INTEGER NOT NULL,
        frame BLOB NOT NULL
    ) STRICT;
    CREATE INDEX event_by_time ON event (time_ms);
    CREATE TABLE domain_ban (domain TEXT PRIMARY KEY, created_at TEXT NOT NULL) STRICT;
    CREATE TABLE admin_action (
        id INTEGER PRIMARY KEY,
        time TEXT NOT NULL,
        action TEXT NOT NULL,
        subject TEXT NOT NULL,
        detail TEXT NOT NULL
    ) STRICT;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

_ACCOUNT_COLUMNS: Final = (
    "uid, did, host_id, status, upstream_status, rev, commit_cid, data_cid, desync, created_at"
)
_HOST_COLUMNS: Final = (
    "id, hostname, no_ssl, status, account_limit, trusted, last_seq, account_count, created_at"
)
_UPSERT_ACCOUNT: Final = (
    f"INSERT INTO account ({_ACCOUNT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (uid) DO UPDATE SET host_id = excluded.host_id, status = excluded.status,"
    " upstream_status = excluded.upstream_status, rev = excluded.rev,"
    " commit_cid = excluded.commit_cid, data_cid = excluded.data_cid, desync = excluded.desync"
)
_INSERT_EVENT: Final = "INSERT INTO event (seq, uid, time_ms, frame) VALUES (?, ?, ?, ?)"
_SET_META: Final = (
    "INSERT INTO meta (key, value) VALUES (?, ?)"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)
_ADD_LOG_BYTES: Final = (
    "INSERT INTO meta (key, value) VALUES ('log_bytes', ?)"
    " ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + excluded.value"
)


def _host(row: Any) -> HostRow:
    return HostRow(
        row[0], row[1], bool(row[2]), row[3], row[4], bool(row[5]), row[6], row[7], row[8]
    )


class SqliteStore:
    """The relay's database. See :class:`relay.storage.Store` for the contract."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write = self._connect()
        self._write.execute("PRAGMA synchronous=FULL")
        self._write_lock = threading.Lock()
        self.migrate()
        self._read = self._connect(read_only=True)
        self._pool: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._pooled: list[sqlite3.Connection] = []
        for _ in range(READ_POOL_SIZE):
            conn = self._connect(read_only=True)
            self._pooled.append(conn)
            self._pool.put(conn)

    def _connect(self, *, read_only: bool = False) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA busy_timeout=10000")
        conn.execute("PRAGMA cache_size=-65536")
        if read_only:
            conn.execute("PRAGMA query_only=ON")
        return conn

    def close(self) -> None:
        for conn in self._pooled:
            conn.close()
        self._read.close()
        self._write.close()

    def migrate(self) -> None:
        migrate_sqlite(self._write, MIGRATIONS, "relay database")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock:
            conn = self._write
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    # -- the writer's transaction -----------------------------------------------------

    def commit(self, writes: WriteSet) -> None:
        with self._transaction() as conn:
            for sql, params in writes.statements:
                conn.execute(sql, params)
            if writes.events:
                conn.executemany(_INSERT_EVENT, writes.events)
                size = sum(len(event[3]) for event in writes.events)
                conn.execute(_ADD_LOG_BYTES, (str(size),))
            if writes.accounts:
                conn.executemany(_UPSERT_ACCOUNT, writes.accounts.values())
            if writes.cursors:
                conn.executemany(
                    "UPDATE host SET last_seq = ? WHERE id = ?",
                    [(seq, host_id) for host_id, seq in writes.cursors.items()],
                )
            if writes.host_counts:
                conn.executemany(
                    "UPDATE host SET account_count = ? WHERE id = ?",
                    [(count, host_id) for host_id, count in writes.host_counts.items()],
                )
            if writes.last_seq is not None:
                conn.execute(_SET_META, ("last_seq", str(writes.last_seq)))

    # -- statements -------------------------------------------------------------------

    def insert_host_sql(self, host: HostRow) -> Statement:
        return (
            f"INSERT INTO host ({_HOST_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                host.id,
                host.hostname,
                int(host.no_ssl),
                host.status,
                host.account_limit,
                int(host.trusted),
                host.last_seq,
                host.account_count,
                host.created_at,
            ),
        )

    def update_host_sql(self, host: HostRow) -> Statement:
        return (
            "UPDATE host SET no_ssl = ?, status = ?, account_limit = ?, trusted = ? WHERE id = ?",
            (int(host.no_ssl), host.status, host.account_limit, int(host.trusted), host.id),
        )

    def ban_domain_sql(self, domain: str, created_at: str) -> Statement:
        return (
            "INSERT INTO domain_ban (domain, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (domain, created_at),
        )

    def unban_domain_sql(self, domain: str) -> Statement:
        return ("DELETE FROM domain_ban WHERE domain = ?", (domain,))

    def admin_action_sql(self, time: str, action: str, subject: str, detail: str) -> Statement:
        return (
            "INSERT INTO admin_action (time, action, subject, detail) VALUES (?, ?, ?, ?)",
            (time, action, subject, detail),
        )

    # -- reads on the loop ------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        row = self._read.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def hosts(self) -> list[HostRow]:
        rows = self._read.execute(f"SELECT {_HOST_COLUMNS} FROM host ORDER BY id").fetchall()
        return [_host(row) for row in rows]

    def domain_bans(self) -> list[str]:
        return [r[0] for r in self._read.execute("SELECT domain FROM domain_ban ORDER BY domain")]

    def account(self, did: str) -> AccountState | None:
        row = self._read.execute(
            f"SELECT {_ACCOUNT_COLUMNS} FROM account WHERE did = ?", (did,)
        ).fetchone()
        return AccountState.from_row(row) if row else None

    def max_uid(self) -> int:
        row = self._read.execute("SELECT MAX(uid) FROM account").fetchone()
        return int(row[0] or 0)

    def takendown_uids(self) -> set[int]:
        rows = self._read.execute("SELECT uid FROM account WHERE status = 'takendown'")
        return {row[0] for row in rows}

    def list_repos(self, after_uid: int, limit: int) -> list[AccountState]:
        rows = self._read.execute(
            f"SELECT {_ACCOUNT_COLUMNS} FROM account WHERE uid > ? AND rev IS NOT NULL"
            " AND status IN ('active', 'throttled') AND upstream_status = 'active'"
            " AND desync = 0 ORDER BY uid LIMIT ?",
            (after_uid, limit),
        ).fetchall()
        return [AccountState.from_row(row) for row in rows]

    def takedowns(self, after_uid: int, limit: int) -> list[AccountState]:
        rows = self._read.execute(
            f"SELECT {_ACCOUNT_COLUMNS} FROM account WHERE status = 'takendown' AND uid > ?"
            " ORDER BY uid LIMIT ?",
            (after_uid, limit),
        ).fetchall()
        return [AccountState.from_row(row) for row in rows]

    def throttled_accounts(self, host_id: int, limit: int) -> list[AccountState]:
        rows = self._read.execute(
            f"SELECT {_ACCOUNT_COLUMNS} FROM account WHERE host_id = ?"
            " AND status = 'host-throttled' ORDER BY uid LIMIT ?",
            (host_id, limit),
        ).fetchall()
        return [AccountState.from_row(row) for row in rows]

    def admin_actions(self, before_id: int | None, limit: int) -> list[dict[str, Any]]:
        rows = self._read.execute(
            "SELECT id, time, action, subject, detail FROM admin_action"
            " WHERE id < ? ORDER BY id DESC LIMIT ?",
            (before_id if before_id is not None else 2**62, limit),
        ).fetchall()
        return [
            {"id": r[0], "time": r[1], "action": r[2], "subject": r[3], "detail": r[4]}
            for r in rows
        ]

    def last_seq(self) -> int:
        stored = self.meta("last_seq")
        row = self._read.execute("SELECT MAX(seq) FROM event").fetchone()
        return max(int(stored) if stored else 0, row[0] or 0)

    # -- the event log (worker threads) -----------------------------------------------

    @contextmanager
    def _pooled_read(self) -> Iterator[sqlite3.Connection]:
        conn = self._pool.get()
        try:
            yield conn
        finally:
            self._pool.put(conn)

    def events_after(self, seq: int, limit: int) -> list[tuple[int, int, bytes]]:
        with self._pooled_read() as conn:
            return conn.execute(
                "SELECT seq, uid, frame FROM event WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, limit),
            ).fetchall()

    def oldest_seq_since(self, time_ms: int) -> int | None:
        with self._pooled_read() as conn:
            row = conn.execute("SELECT MIN(seq) FROM event WHERE time_ms >= ?", (time_ms,)).fetchone()
        return row[0] if row and row[0] is not None else None

    def prune_events(self, before_time_ms: int, max_bytes: int, batch: int) -> int:
        """Delete up to ``batch`` events: older than the window, or oldest past ``max_bytes``."""
        with self._transaction() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'log_bytes'").fetchone()
            total = int(row[0]) if row else 0
            rows = conn.execute(
                "SELECT seq, time_ms, length(frame) FROM event ORDER BY seq LIMIT ?", (batch,)
            ).fetchall()
            cut, freed = prune_cut(rows, total, before_time_ms, max_bytes)
            if cut is None:
                return 0
            deleted = conn.execute("DELETE FROM event WHERE seq <= ?", (cut,)).rowcount
            conn.execute(_ADD_LOG_BYTES, (str(-freed),))
            return int(deleted)
