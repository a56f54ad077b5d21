"""SQLite (WAL) implementation of :class:`plc.storage.PlcStore`; all the directory's SQL.

One writer connection, serialised by a lock, runs every write as one
``BEGIN IMMEDIATE`` transaction; a separate read-only connection serves
reads (WAL lets them run while a write is in progress). Tables are STRICT;
the schema is built by numbered migrations recorded in ``schema_version``.
Commits are durable (``synchronous=FULL``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiosqlite

from plc.storage import ExportCursor, LogEntry
from roost.errors import InvalidPlcOperation, PlcConflict
from roost.plc import NextOp, Op, format_timestamp, load_op, parse_timestamp

__all__ = ["SqlitePlcStore", "MIGRATIONS"]

log = logging.getLogger(__name__)

#: Numbered schema migrations; never edit one that has shipped, append a new one.
MIGRATIONS: Sequence[tuple[int, str]] = (
    (
        1,
        """
        CREATE TABLE operations (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            did TEXT NOT NULL,
            cid TEXT NOT NULL UNIQUE,
            operation TEXT NOT NULL,
            nullified INTEGER NOT NULL DEFAULT 0 CHECK (nullified IN (0, 1)),
            created_at TEXT NOT NULL
        ) STRICT;
        CREATE INDEX operations_did_created ON operations (did, created_at, seq);
        CREATE INDEX operations_created_cid ON operations (created_at, cid);
        CREATE TABLE meta (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        ) STRICT;
        """,
    ),
)

_COLUMNS = "did, cid, operation, nullified, created_at, seq"
_MS = timedelta(milliseconds=1)


def _row(row: Any) -> LogEntry:
    did, cid, operation, nullified, created_at, seq = row
    op = load_op(json.loads(operation))
    return LogEntry(did, op, cid, parse_timestamp(created_at), bool(nullified), seq)


def _dumps(op: Op) -> str:
    return json.dumps(op.to_json(), separators=(",", ":"), ensure_ascii=False)


class SqlitePlcStore:
    """The directory's op log in one SQLite file."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()

    # -- lifecycle -------------------------------------------------------------

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        writer = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await writer.execute("PRAGMA journal_mode=WAL")
            await writer.execute("PRAGMA synchronous=FULL")
            await writer.execute("PRAGMA busy_timeout=5000")
            await self._migrate(writer)
            reader = await aiosqlite.connect(self.path, isolation_level=None)
        except BaseException:
            await writer.close()
            raise
        await reader.execute("PRAGMA busy_timeout=5000")
        await reader.execute("PRAGMA query_only=1")
        self._writer, self._reader = writer, reader

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        await db.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
            "applied_at TEXT NOT NULL) STRICT"
        )
        async with db.execute("SELECT coalesce(max(version), 0) FROM schema_version") as cur:
            row = await cur.fetchone()
        current = row[0] if row else 0
        for version, script in MIGRATIONS:
            if version <= current:
                continue
            await db.execute("BEGIN IMMEDIATE")
            try:
                for statement in script.split(";"):
                    if statement.strip():
                        await db.execute(statement)
                await db.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES (?, datetime('now'))",
                    (version,),
                )
                await db.execute("COMMIT")
            except BaseException:
                await db.execute("ROLLBACK")
                raise
            log.info("plc store migrated version=%d path=%s", version, self.path)

    async def close(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None

    @property
    def _r(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise RuntimeError("store is not open")
        return self._reader

    @property
    def _w(self) -> aiosqlite.Connection:
        if self._writer is None:
            raise RuntimeError("store is not open")
        return self._writer

    async def ping(self) -> None:
        await self._r.execute_fetchall("SELECT 1")

    # -- reads -----------------------------------------------------------------------

    async def get_log(self, did: str, *, include_nullified: bool = True) -> list[LogEntry]:
        where = "" if include_nullified else " AND nullified = 0"
        rows = await self._r.execute_fetchall(
            f"SELECT {_COLUMNS} FROM operations WHERE did = ?{where} ORDER BY created_at, seq",
            (did,),
        )
        return [_row(r) for r in rows]

    async def get_last(self, did: str) -> LogEntry | None:
        rows = list(
            await self._r.execute_fetchall(
                f"SELECT {_COLUMNS} FROM operations WHERE did = ? AND nullified = 0 "
                "ORDER BY created_at DESC, seq DESC LIMIT 1",
                (did,),
            )
        )
        return _row(rows[0]) if rows else None

    async def has_op(self, cid: str) -> bool:
        rows = await self._r.execute_fetchall("SELECT 1 FROM operations WHERE cid = ?", (cid,))
        return len(list(rows)) > 0

    async def export(self, count: int, after: ExportCursor | None = None) -> list[LogEntry]:
        args: tuple[Any, ...]
        if after is None:
            sql, args = (
                f"SELECT {_COLUMNS} FROM operations ORDER BY created_at, cid LIMIT ?",
                (count,),
            )
        elif after.cid is None:
            sql = f"SELECT {_COLUMNS} FROM operations WHERE created_at > ? ORDER BY created_at, cid LIMIT ?"
            args = (format_timestamp(after.created_at), count)
        else:
            sql = (
                f"SELECT {_COLUMNS} FROM operations WHERE (created_at, cid) > (?, ?) "
                "ORDER BY created_at, cid LIMIT ?"
            )
            args = (format_timestamp(after.created_at), after.cid, count)
        return [_row(r) for r in await self._r.execute_fetchall(sql, args)]

    async def export_seq(self, after: int, count: int) -> list[LogEntry]:
        rows = await self._r.execute_fetchall(
            f"SELECT {_COLUMNS} FROM operations WHERE seq > ? ORDER BY seq LIMIT ?", (after, count)
        )
        return [_row(r) for r in rows]

    async def get_meta(self, key: str) -> str | None:
        rows = list(await self._r.execute_fetchall("SELECT value FROM meta WHERE key = ?", (key,)))
        return rows[0][0] if rows else None

    # -- writes ----------------------------------------------------------------------

    async def set_meta(self, key: str, value: str) -> None:
        async with self._write_lock:
            await self._w.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
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
        db = self._w
        async with self._write_lock:
            await db.execute("BEGIN IMMEDIATE")
            try:
                entry = await self._append_in_tx(
                    db, did, op, result, expected_head, now, exact_time
                )
                await db.execute("COMMIT")
            except BaseException:
                await db.execute("ROLLBACK")
                raise
        return entry

    async def _append_in_tx(
        self,
        db: aiosqlite.Connection,
        did: str,
        op: Op,
        result: NextOp,
        expected_head: str | None,
        now: datetime,
        exact_time: bool,
    ) -> LogEntry:
        heads = list(
            await db.execute_fetchall(
                "SELECT cid, created_at FROM operations WHERE did = ? AND nullified = 0 "
                "ORDER BY created_at DESC, seq DESC LIMIT 1",
                (did,),
            )
        )
        head = heads[0] if heads else None
        head_cid = head[0] if head is not None else None
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
            if head is not None and format_timestamp(created) <= head[1]:
                raise InvalidPlcOperation(
                    "Invalid operation timestamp order: must be later than the newest operation"
                )
        else:
            newest_rows = list(await db.execute_fetchall("SELECT max(created_at) FROM operations"))
            if newest_rows and newest_rows[0][0] is not None:
                newest = parse_timestamp(newest_rows[0][0])
                if created <= newest:
                    created = newest + _MS
        if result.nullified:
            marks = ",".join("?" * len(result.nullified))
            cur = await db.execute(
                f"UPDATE operations SET nullified = 1 WHERE did = ? AND nullified = 0 "
                f"AND cid IN ({marks})",
                (did, *result.nullified),
            )
            if cur.rowcount != len(result.nullified):
                raise PlcConflict(f"Conflict: the ops to nullify for {did} changed; retry")
        try:
            inserted = list(
                await db.execute_fetchall(
                    "INSERT INTO operations (did, cid, operation, nullified, created_at) "
                    "VALUES (?, ?, ?, 0, ?) RETURNING seq",
                    (did, result.cid, _dumps(op), format_timestamp(created)),
                )
            )
        except aiosqlite.IntegrityError:
            raise PlcConflict(f"Conflict: operation {result.cid} is already stored") from None
        return LogEntry(did, op, result.cid, created, False, inserted[0][0])
