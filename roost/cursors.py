"""Where a firehose consumer keeps its cursor between runs.

A cursor is the seq of the last event the consumer has *finished* with; on
restart the stream resumes after it. Saving it too early loses events (a
crash after the save but before the work), saving it never replays the
whole window, so :mod:`roost.firehose` saves only acknowledged seqs, and
these stores make each save durable before it returns:

- :class:`FileCursorStore`: one small text file, replaced atomically
  (write a temporary file, fsync, rename over the old one, fsync the
  directory), so a crash leaves either the old cursor or the new one.
- :class:`SqliteCursorStore`: one row per consumer key in a SQLite table,
  for consumers that already keep their state in SQLite (or run several
  streams from one file).
- :class:`MemoryCursorStore`: for tests and for callers that persist
  elsewhere.

Disk work runs in a worker thread; the event loop never blocks on fsync.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from pathlib import Path
from typing import Final, Protocol

__all__ = [
    "MAX_CURSOR_FILE_BYTES",
    "CursorStore",
    "FileCursorStore",
    "MemoryCursorStore",
    "SqliteCursorStore",
]

#: A cursor file holds one decimal integer; anything longer is not ours.
MAX_CURSOR_FILE_BYTES: Final = 64
#: Seqs are kept below 2**53 (event-stream spec).
_MAX_SEQ: Final = 2**53


class CursorStore(Protocol):
    """Durable storage for one stream's cursor."""

    async def load(self) -> int | None:
        """The saved cursor, or None if nothing was saved yet."""
        ...

    async def save(self, seq: int) -> None:
        """Persist ``seq``; durable when this returns."""
        ...


def _check_seq(seq: int) -> int:
    if type(seq) is not int or not 0 <= seq < _MAX_SEQ:
        raise ValueError(f"a cursor must be an integer in [0, 2**53), not {seq!r}")
    return seq


class MemoryCursorStore:
    """A cursor kept in memory (lost with the process)."""

    def __init__(self, seq: int | None = None) -> None:
        self.seq = None if seq is None else _check_seq(seq)
        self.saves = 0

    async def load(self) -> int | None:
        return self.seq

    async def save(self, seq: int) -> None:
        self.seq = _check_seq(seq)
        self.saves += 1


class FileCursorStore:
    """The cursor as a decimal number in a file, replaced atomically on each save.

    A file that exists but does not hold a cursor raises ``ValueError`` on
    :meth:`load`: silently starting over would replay or skip events.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = asyncio.Lock()

    async def load(self) -> int | None:
        return await asyncio.to_thread(self._load)

    def _load(self) -> int | None:
        try:
            with open(self.path, "rb") as f:
                raw = f.read(MAX_CURSOR_FILE_BYTES + 1)
        except FileNotFoundError:
            return None
        text = raw.strip()
        if len(raw) > MAX_CURSOR_FILE_BYTES or not text.isdigit():
            raise ValueError(f"{self.path} does not hold a firehose cursor")
        return _check_seq(int(text))

    async def save(self, seq: int) -> None:
        _check_seq(seq)
        async with self._lock:  # two saves must not share the temporary file
            await asyncio.to_thread(self._save, seq)

    def _save(self, seq: int) -> None:
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, f"{seq}\n".encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS firehose_cursor (
    key TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
) STRICT
"""
_LOAD: Final = "SELECT seq FROM firehose_cursor WHERE key = ?"
_SAVE: Final = (
    "INSERT INTO firehose_cursor (key, seq) VALUES (?, ?)"
    " ON CONFLICT (key) DO UPDATE SET seq = excluded.seq"
)


class SqliteCursorStore:
    """Cursors in a SQLite table, one row per ``key`` (WAL, synchronous=FULL).

    Several stores may share one database file with different keys. Call
    :meth:`close` when done.
    """

    def __init__(self, path: str | os.PathLike[str], key: str = "default") -> None:
        if not key:
            raise ValueError("the cursor key must not be empty")
        self.path = Path(path)
        self.key = key
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute(_SCHEMA)
            self._conn = conn
        return self._conn

    async def load(self) -> int | None:
        return await asyncio.to_thread(self._load)

    def _load(self) -> int | None:
        with self._lock:
            row = self._connection().execute(_LOAD, (self.key,)).fetchone()
        return None if row is None else _check_seq(row[0])

    async def save(self, seq: int) -> None:
        _check_seq(seq)
        await asyncio.to_thread(self._save, seq)

    def _save(self, seq: int) -> None:
        with self._lock:
            self._connection().execute(_SAVE, (self.key, seq))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
