"""The relay's :class:`~relay.storage.Store` on PostgreSQL, shared by an ingest and its frontends.

Same rows and the same single-transaction :meth:`PostgresStore.commit` as
:mod:`relay.sqlite`; the tables carry a ``relay_`` prefix so the relay can
share a database with the directory and the feed generator.

Seqs. One row, ``relay_log_head``, holds the highest seq and the log's size.
A commit that appends events locks that row first and numbers its events
from it, inside the transaction. Two things follow. Commits that append are
serialised and become visible in seq order (the row lock is released only
after the commit is visible), so a reader that has seen seq N and asks for
``seq > N`` can never later find a smaller seq appear. And a transaction that
rolls back rolls its seqs back too: the log has no holes. The writer numbers
events optimistically (its own count); when the head says otherwise (after a
failed transaction, or another ingest process wrote in between), the store
re-frames the batch from the head with :attr:`WriteSet.renumber` and leaves
the final events in ``writes.events``. Each such commit ends with
``NOTIFY relay_log, '<head seq>'``, delivered to listeners when (and only if)
it commits: that is what wakes the frontends (:mod:`relay.frontend`).

Threads. The Store protocol is synchronous (the writer commits from a worker
thread, short reads happen on the serving loop), and asyncpg is not, so the
store runs its own event loop in a daemon thread, holding the connection
pool, and each synchronous call waits for its query there. Async callers on
another loop use :meth:`PostgresStore.run` instead and do not block. The
store opens on first use and applies its numbered migrations then.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from typing import Any, Final, TypeVar

import asyncpg

from relay.storage import AccountRow, AccountState, HostRow, Statement, WriteSet, prune_cut
from roost.database import migrate_postgres, redact_url

__all__ = ["LOG_CHANNEL", "MIGRATIONS", "POOL_MAX", "PostgresStore"]

T = TypeVar("T")

#: Numbered schema migrations (component ``relay``); append, never edit.
MIGRATIONS: Final[tuple[tuple[int, str], ...]] = (
    (
        1,
        """
        CREATE TABLE relay_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE relay_log_head (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            seq BIGINT NOT NULL,
            log_bytes BIGINT NOT NULL
        );
        INSERT INTO relay_log_head (id, seq, log_bytes) VALUES (1, 0, 0);
        CREATE TABLE relay_host (
            id BIGINT PRIMARY KEY,
            hostname TEXT NOT NULL UNIQUE,
            no_ssl BOOLEAN NOT NULL,
            status TEXT NOT NULL,
            account_limit BIGINT NOT NULL,
            trusted BOOLEAN NOT NULL,
            last_seq BIGINT NOT NULL,
            account_count BIGINT NOT NULL,
            created_at TEXT NOT NULL
        );
        CREATE TABLE relay_account (
            uid BIGINT PRIMARY KEY,
            did TEXT NOT NULL UNIQUE,
            host_id BIGINT NOT NULL,
            status TEXT NOT NULL,
            upstream_status TEXT NOT NULL,
            rev TEXT,
            commit_cid BYTEA,
            data_cid BYTEA,
            desync BOOLEAN NOT NULL,
            created_at TEXT NOT NULL
        );
        CREATE INDEX relay_account_by_host_status ON relay_account (host_id, status, uid);
        CREATE INDEX relay_account_by_status ON relay_account (status, uid);
        CREATE TABLE relay_event (
            seq BIGINT PRIMARY KEY,
            uid BIGINT NOT NULL,
            time_ms BIGINT NOT NULL,
            frame BYTEA NOT NULL
        );
        CREATE INDEX relay_event_by_time ON relay_event (time_ms);
        CREATE TABLE relay_domain_ban (domain TEXT PRIMARY KEY, created_at TEXT NOT NULL);
        CREATE TABLE relay_admin_action (
            id BIGSERIAL PRIMARY KEY,
            time TEXT NOT NULL,
            action TEXT NOT NULL,
            subject TEXT NOT NULL,
            detail TEXT NOT NULL
        );
        """,
    ),
)

#: Connections the store keeps open (the writer, loop reads and replay pages share them).
POOL_MAX: Final = 10
#: The NOTIFY channel carrying the new head seq after each append.
LOG_CHANNEL: Final = "relay_log"
#: Seconds a synchronous call waits for the database before giving up.
CALL_TIMEOUT_S: Final = 60.0

_ACCOUNT_COLUMNS: Final = (
    "uid, did, host_id, status, upstream_status, rev, commit_cid, data_cid, desync, created_at"
)
_HOST_COLUMNS: Final = (
    "id, hostname, no_ssl, status, account_limit, trusted, last_seq, account_count, created_at"
)
_UPSERT_ACCOUNT: Final = (
    f"INSERT INTO relay_account ({_ACCOUNT_COLUMNS})"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
    " ON CONFLICT (uid) DO UPDATE SET host_id = excluded.host_id, status = excluded.status,"
    " upstream_status = excluded.upstream_status, rev = excluded.rev,"
    " commit_cid = excluded.commit_cid, data_cid = excluded.data_cid, desync = excluded.desync"
)
_INSERT_EVENT: Final = "INSERT INTO relay_event (seq, uid, time_ms, frame) VALUES ($1, $2, $3, $4)"
_ACTIVE_REPOS: Final = (
    "rev IS NOT NULL AND status IN ('active', 'throttled') AND upstream_status = 'active'"
    " AND NOT desync"
)


def _host(row: Any) -> HostRow:
    return HostRow(*row)


def _account_args(row: AccountRow) -> tuple[Any, ...]:
    return (*row[:8], bool(row[8]), row[9])


class PostgresStore:
    """The relay's database on PostgreSQL. See :class:`relay.storage.Store` for the contract."""

    #: Seqs are assigned inside the committing transaction (see the module docstring).
    numbers_events: Final = True

    def __init__(self, dsn: str, *, pool_max: int = POOL_MAX) -> None:
        self.dsn = dsn
        self.pool_max = pool_max
        self._open_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None

    def __repr__(self) -> str:
        return f"PostgresStore({redact_url(self.dsn)!r})"

    # -- the store's loop -------------------------------------------------------------

    def open(self) -> None:
        """Connect and migrate (done by the first call if not called)."""
        with self._open_lock:
            if self._loop is not None:
                return
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="relay-postgres", daemon=True)
            thread.start()
            try:
                self._pool = asyncio.run_coroutine_threadsafe(self._connect(), loop).result(
                    CALL_TIMEOUT_S
                )
            except BaseException:
                loop.call_soon_threadsafe(loop.stop)
                thread.join()
                loop.close()
                raise
            self._loop, self._thread = loop, thread

    async def _connect(self) -> asyncpg.Pool:
        pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=self.pool_max)
        try:
            async with pool.acquire() as conn:
                await migrate_postgres(conn, "relay", MIGRATIONS)
        except BaseException:
            await pool.close()
            raise
        return pool

    def close(self) -> None:
        with self._open_lock:
            loop, thread = self._loop, self._thread
            if loop is None or thread is None:
                return
            asyncio.run_coroutine_threadsafe(self._disconnect(), loop).result(CALL_TIMEOUT_S)
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            self._loop = self._thread = None

    async def _disconnect(self) -> None:
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def _submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        if self._loop is None:
            try:
                self.open()
            except BaseException:
                coro.close()
                raise
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _call(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        return self._submit(fn(*args)).result(CALL_TIMEOUT_S)

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Await ``fn(*args)`` (a coroutine on this store's pool) from another event loop."""

        async def call() -> T:
            return await fn(*args)

        if self._loop is None:
            await asyncio.to_thread(self.open)
        return await asyncio.wrap_future(self._submit(call()))

    @property
    def pool(self) -> asyncpg.Pool:
        """The pool (use only from coroutines passed to :meth:`run`)."""
        if self._pool is None:
            raise RuntimeError("the relay store is not open")
        return self._pool

    # -- the writer's transaction -----------------------------------------------------

    def commit(self, writes: WriteSet) -> None:
        self._call(self._commit, writes)

    async def _commit(self, writes: WriteSet) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            for sql, params in writes.statements:
                await conn.execute(sql, *params)
            if writes.events:
                head, size = await conn.fetchrow(
                    "SELECT seq, log_bytes FROM relay_log_head WHERE id = 1 FOR UPDATE"
                )
                first = writes.events[0][0]
                # An empty log starts where the writer says (its initial seq).
                if head and first != head + 1:
                    if writes.renumber is None:
                        raise RuntimeError(f"events from seq {first} do not follow the log head {head}")
                    writes.events = writes.renumber(head + 1)
                last = writes.events[-1][0]
                await conn.executemany(_INSERT_EVENT, writes.events)
                added = sum(len(event[3]) for event in writes.events)
                await conn.execute(
                    "UPDATE relay_log_head SET seq = $1, log_bytes = $2 WHERE id = 1",
                    last, size + added,
                )
                writes.last_seq = last
                await conn.execute("SELECT pg_notify($1, $2)", LOG_CHANNEL, str(last))
            if writes.accounts:
                await conn.executemany(
                    _UPSERT_ACCOUNT, [_account_args(row) for row in writes.accounts.values()]
                )
            if writes.cursors:
                await conn.executemany(
                    "UPDATE relay_host SET last_seq = $1 WHERE id = $2",
                    [(seq, host_id) for host_id, seq in writes.cursors.items()],
                )
            if writes.host_counts:
                await conn.executemany(
                    "UPDATE relay_host SET account_count = $1 WHERE id = $2",
                    [(count, host_id) for host_id, count in writes.host_counts.items()],
                )

    # -- statements -------------------------------------------------------------------

    def insert_host_sql(self, host: HostRow) -> Statement:
        return (
            f"INSERT INTO relay_host ({_HOST_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            (
                host.id, host.hostname, host.no_ssl, host.status, host.account_limit,
                host.trusted, host.last_seq, host.account_count, host.created_at,
            ),
        )

    def update_host_sql(self, host: HostRow) -> Statement:
        return (
            "UPDATE relay_host SET no_ssl = $1, status = $2, account_limit = $3, trusted = $4"
            " WHERE id = $5",
            (host.no_ssl, host.status, host.account_limit, host.trusted, host.id),
        )

    def ban_domain_sql(self, domain: str, created_at: str) -> Statement:
        return (
            "INSERT INTO relay_domain_ban (domain, created_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            (domain, created_at),
        )

    def unban_domain_sql(self, domain: str) -> Statement:
        return ("DELETE FROM relay_domain_ban WHERE domain = $1", (domain,))

    def admin_action_sql(self, time: str, action: str, subject: str, detail: str) -> Statement:
        return (
            "INSERT INTO relay_admin_action (time, action, subject, detail) VALUES ($1, $2, $3, $4)",
            (time, action, subject, detail),
        )

    # -- reads ------------------------------------------------------------------------

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        return await self.pool.fetch(sql, *args)  # type: ignore[no-any-return]

    async def _fetchval(self, sql: str, *args: Any) -> Any:
        return await self.pool.fetchval(sql, *args)

    def _rows(self, sql: str, *args: Any) -> list[Any]:
        return self._call(self._fetch, sql, *args)

    def _value(self, sql: str, *args: Any) -> Any:
        return self._call(self._fetchval, sql, *args)

    def meta(self, key: str) -> str | None:
        if key == "last_seq":  # kept in the head row here
            return str(self.last_seq())
        value = self._value("SELECT value FROM relay_meta WHERE key = $1", key)
        return str(value) if value is not None else None

    def hosts(self) -> list[HostRow]:
        return [_host(r) for r in self._rows(f"SELECT {_HOST_COLUMNS} FROM relay_host ORDER BY id")]

    def domain_bans(self) -> list[str]:
        return [r[0] for r in self._rows("SELECT domain FROM relay_domain_ban ORDER BY domain")]

    def account(self, did: str) -> AccountState | None:
        rows = self._rows(f"SELECT {_ACCOUNT_COLUMNS} FROM relay_account WHERE did = $1", did)
        return AccountState.from_row(tuple(rows[0])) if rows else None

    def max_uid(self) -> int:
        return int(self._value("SELECT coalesce(max(uid), 0) FROM relay_account"))

    def takendown_uids(self) -> set[int]:
        return {r[0] for r in self._rows("SELECT uid FROM relay_account WHERE status = 'takendown'")}

    def _accounts(self, where: str, *args: Any) -> list[AccountState]:
        rows = self._rows(f"SELECT {_ACCOUNT_COLUMNS} FROM relay_account WHERE {where}", *args)
        return [AccountState.from_row(tuple(r)) for r in rows]

    def list_repos(self, after_uid: int, limit: int) -> list[AccountState]:
        return self._accounts(f"uid > $1 AND {_ACTIVE_REPOS} ORDER BY uid LIMIT $2", after_uid, limit)

    def takedowns(self, after_uid: int, limit: int) -> list[AccountState]:
        return self._accounts(
            "status = 'takendown' AND uid > $1 ORDER BY uid LIMIT $2", after_uid, limit
        )

    def throttled_accounts(self, host_id: int, limit: int) -> list[AccountState]:
        return self._accounts(
            "host_id = $1 AND status = 'host-throttled' ORDER BY uid LIMIT $2", host_id, limit
        )

    def admin_actions(self, before_id: int | None, limit: int) -> list[dict[str, Any]]:
        rows = self._rows(
            "SELECT id, time, action, subject, detail FROM relay_admin_action"
            " WHERE id < $1 ORDER BY id DESC LIMIT $2",
            before_id if before_id is not None else 2**62, limit,
        )
        return [dict(r) for r in rows]

    def last_seq(self) -> int:
        return int(self._value("SELECT seq FROM relay_log_head WHERE id = 1"))

    # -- the event log ----------------------------------------------------------------

    async def fetch_events_after(self, seq: int, limit: int) -> list[tuple[int, int, bytes]]:
        """:meth:`events_after` as a coroutine on the store's loop (see :meth:`run`)."""
        rows = await self.pool.fetch(
            "SELECT seq, uid, frame FROM relay_event WHERE seq > $1 ORDER BY seq LIMIT $2",
            seq, limit,
        )
        return [(r[0], r[1], r[2]) for r in rows]

    async def fetch_head(self) -> int:
        """The highest seq stored, as a coroutine on the store's loop."""
        return int(await self.pool.fetchval("SELECT seq FROM relay_log_head WHERE id = 1"))

    def events_after(self, seq: int, limit: int) -> list[tuple[int, int, bytes]]:
        return self._call(self.fetch_events_after, seq, limit)

    def oldest_seq_since(self, time_ms: int) -> int | None:
        value = self._value("SELECT min(seq) FROM relay_event WHERE time_ms >= $1", time_ms)
        return int(value) if value is not None else None

    def prune_events(self, before_time_ms: int, max_bytes: int, batch: int) -> int:
        """Delete up to ``batch`` events: older than the window, or oldest past ``max_bytes``."""
        return self._call(self._prune, before_time_ms, max_bytes, batch)

    async def _prune(self, before_time_ms: int, max_bytes: int, batch: int) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            total = await conn.fetchval(
                "SELECT log_bytes FROM relay_log_head WHERE id = 1 FOR UPDATE"
            )
            rows = await conn.fetch(
                "SELECT seq, time_ms, length(frame) FROM relay_event ORDER BY seq LIMIT $1", batch
            )
            cut, freed = prune_cut(rows, total, before_time_ms, max_bytes)
            if cut is None:
                return 0
            status = await conn.execute("DELETE FROM relay_event WHERE seq <= $1", cut)
            await conn.execute(
                "UPDATE relay_log_head SET log_bytes = log_bytes - $1 WHERE id = 1", freed
            )
            return int(status.split()[-1])

    # -- waking frontends -------------------------------------------------------------

    async def listen(self, on_head: Callable[[int], None]) -> None:
        """Call ``on_head(seq)`` (on the store's loop) after every append commits.

        Run it with :meth:`run`; call again if the connection was lost
        (:meth:`listening` turns false).
        """
        if self._listener is not None and not self._listener.is_closed():
            await self._listener.close()
        conn = await asyncpg.connect(self.dsn)

        def notified(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            on_head(int(payload))

        await conn.add_listener(LOG_CHANNEL, notified)
        self._listener = conn

    def listening(self) -> bool:
        return self._listener is not None and not self._listener.is_closed()
