"""PostgreSQL implementation of :class:`plc.storage.PlcStore`, for a directory past one machine.

Same rows and the same rules as :mod:`plc.sqlite`: an op log per DID with a
``nullified`` flag and a directory-wide ``seq``, appended by a
compare-and-set. Writes serialise on one transaction-scoped advisory lock,
which gives what SQLite's single writer gives: the DID's head is re-read
under the lock, ``createdAt`` stays strictly increasing across the whole
directory, and several directory processes may share one database. Reads
run on the pool without locks.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Final

import asyncpg

from plc.storage import ExportCursor, LogEntry
from roost.database import migrate_postgres, redact_url
from roost.errors import InvalidPlcOperation, PlcConflict
from roost.plc import NextOp, Op, load_op

__all__ = ["MIGRATIONS", "PostgresPlcStore"]

#: Numbered schema migrations (component ``plc``); append, never edit.
MIGRATIONS: Sequence[tuple[int, str]] = (
    (
        1,
        """
        CREATE TABLE plc_operations (
            seq BIGSERIAL PRIMARY KEY,
            did TEXT NOT NULL,
            cid TEXT NOT NULL UNIQUE,
            operation TEXT NOT NULL,
            nullified BOOLEAN NOT NULL DEFAULT false,
            created_at TIMESTAMPTZ NOT NULL
        );
        CREATE INDEX plc_operations_did_created ON plc_operations (did, created_at, seq);
        CREATE INDEX plc_operations_created_cid ON plc_operations (created_at, cid);
        CREATE TABLE plc_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        """,
    ),
)

#: Connections the store keeps open.
POOL_MAX: Final = 10
_WRITE_LOCK: Final = zlib.crc32(b"roost-plc-append") - 2**31
_COLUMNS: Final = "did, cid, operation, nullified, created_at, seq"
_MS: Final = timedelta(milliseconds=1)


def _row(row: Any) -> LogEntry:
    return LogEntry(
        row["did"], load_op(json.loads(row["operation"])), row["cid"], row["created_at"],
        row["nullified"], row["seq"],
    )


def _dumps(op: Op) -> str:
    return json.dumps(op.to_json(), separators=(",", ":"), ensure_ascii=False)


class PostgresPlcStore:
    """The directory's op log in a PostgreSQL database."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._pool: asyncpg.Pool | None = None

    def __repr__(self) -> str:
        return f"PostgresPlcStore({redact_url(self.dsn)!r})"

    async def open(self) -> None:
        pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=POOL_MAX)
        try:
            async with pool.acquire() as conn:
                await migrate_postgres(conn, "plc", MIGRATIONS)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def _p(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return self._pool

    async def ping(self) -> None:
        await self._p.fetchval("SELECT 1")

    # -- reads -----------------------------------------------------------------------

    async def get_log(self, did: str, *, include_nullified: bool = True) -> list[LogEntry]:
        where = "" if include_nullified else " AND NOT nullified"
        rows = await self._p.fetch(
            f"SELECT {_COLUMNS} FROM plc_operations WHERE did = $1{where} "
            "ORDER BY created_at, seq", did,
        )
        return [_row(r) for r in rows]

    async def get_last(self, did: str) -> LogEntry | None:
        row = await self._p.fetchrow(
            f"SELECT {_COLUMNS} FROM plc_operations WHERE did = $1 AND NOT nullified "
            "ORDER BY created_at DESC, seq DESC LIMIT 1", did,
        )
        return _row(row) if row is not None else None

    async def has_op(self, cid: str) -> bool:
        return await self._p.fetchval("SELECT 1 FROM plc_operations WHERE cid = $1", cid) is not None

    async def export(self, count: int, after: ExportCursor | None = None) -> list[LogEntry]:
        base = f"SELECT {_COLUMNS} FROM plc_operations"
        order = " ORDER BY created_at, cid LIMIT "
        if after is None:
            rows = await self._p.fetch(base + order + "$1", count)
        elif after.cid is None:
            rows = await self._p.fetch(base + " WHERE created_at > $1" + order + "$2",
                                       after.created_at, count)
        else:
            rows = await self._p.fetch(base + " WHERE (created_at, cid) > ($1, $2)" + order + "$3",
                                       after.created_at, after.cid, count)
        return [_row(r) for r in rows]

    async def export_seq(self, after: int, count: int) -> list[LogEntry]:
        rows = await self._p.fetch(
            f"SELECT {_COLUMNS} FROM plc_operations WHERE seq > $1 ORDER BY seq LIMIT $2",
            after, count,
        )
        return [_row(r) for r in rows]

    async def get_meta(self, key: str) -> str | None:
        value = await self._p.fetchval("SELECT value FROM plc_meta WHERE key = $1", key)
        return str(value) if value is not None else None

    # -- writes ----------------------------------------------------------------------

    async def set_meta(self, key: str, value: str) -> None:
        await self._p.execute(
            "INSERT INTO plc_meta (key, value) VALUES ($1, $2) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value", key, value,
        )

    async def append(
        self,
        did: str,
        op: Op,
        result: NextOp,
        *,
        expected_head: str | None,
        now: datetime,
        exact_time: bool = False,
    ) -> LogEntry:
        async with self._p.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _WRITE_LOCK)
            head = await conn.fetchrow(
                "SELECT cid, created_at FROM plc_operations WHERE did = $1 AND NOT nullified "
                "ORDER BY created_at DESC, seq DESC LIMIT 1", did,
            )
            head_cid = head["cid"] if head is not None else None
            if head_cid != expected_head:
                if expected_head is None:
                    raise PlcConflict(f"Conflict: {did} was created by another operation ({head_cid})")
                raise PlcConflict(
                    "Conflict: proposed operation does not extend the most recent operation of "
                    f"{did} any more (now {head_cid}, expected {expected_head}); "
                    "a concurrent update won, fetch the log and retry"
                )
            created = now.replace(microsecond=now.microsecond // 1000 * 1000)
            if exact_time:
                if head is not None and created <= head["created_at"]:
                    raise InvalidPlcOperation(
                        "Invalid operation timestamp order: must be later than the newest operation"
                    )
            else:
                newest = await conn.fetchval("SELECT max(created_at) FROM plc_operations")
                if newest is not None and created <= newest:
                    created = newest + _MS
            if result.nullified:
                status = await conn.execute(
                    "UPDATE plc_operations SET nullified = true WHERE did = $1 AND NOT nullified "
                    "AND cid = ANY($2::text[])", did, list(result.nullified),
                )
                if int(status.split()[-1]) != len(result.nullified):
                    raise PlcConflict(f"Conflict: the ops to nullify for {did} changed; retry")
            try:
                seq = await conn.fetchval(
                    "INSERT INTO plc_operations (did, cid, operation, nullified, created_at) "
                    "VALUES ($1, $2, $3, false, $4) RETURNING seq",
                    did, result.cid, _dumps(op), created,
                )
            except asyncpg.UniqueViolationError:
                raise PlcConflict(f"Conflict: operation {result.cid} is already stored") from None
        return LogEntry(did, op, result.cid, created, False, seq)
