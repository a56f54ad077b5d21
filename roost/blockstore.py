"""Block stores: where the bytes behind CIDs live.

A block is the encoded bytes of a commit, MST node or record; it is stored
under its CID. :class:`BlockStore` is the narrow interface the MST engine,
commits and CAR import work against; three implementations stack:

- :class:`MemoryBlockStore`: a dict, for tests, proofs and CAR contents;
- :class:`OverlayBlockStore`: stages writes (and deletes) over another store
  until :meth:`~OverlayBlockStore.commit` or :meth:`~OverlayBlockStore.discard`;
- :class:`SqliteBlockStore`: one SQLite table (WAL), for offline tools and
  as the reference for service storage.

Stores do not check hashes on ``put``: bytes from the network are verified
where they enter (the CAR reader, :func:`verify_block`), bytes we encoded
ourselves need no check. The MST engine calls ``get`` in tight loops, so the
methods stay thin.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType, TracebackType
from typing import Protocol, Self, runtime_checkable

from roost.cid import CID, SHA2_256
from roost.errors import BlockHashMismatch, CidError, MissingBlock

__all__ = [
    "BlockStore",
    "MemoryBlockStore",
    "OverlayBlockStore",
    "SqliteBlockStore",
    "get_required",
    "verify_block",
]

#: Most CIDs bound into one ``IN (...)`` query (SQLite's default limit is 32766).
_SQL_IN_CHUNK = 500


@runtime_checkable
class BlockStore(Protocol):
    """Bytes by CID. ``get`` answers ``None`` for a block that is not present."""

    def get(self, cid: CID) -> bytes | None:
        """The block stored under ``cid``, or ``None``."""
        ...

    def has(self, cid: CID) -> bool:
        """True if a block is stored under ``cid``."""
        ...

    def put(self, cid: CID, data: bytes) -> None:
        """Store ``data`` under ``cid`` (replacing what was there)."""
        ...

    def get_many(self, cids: Iterable[CID]) -> dict[CID, bytes]:
        """The blocks that are present among ``cids``; missing ones are left out."""
        ...

    def put_many(self, blocks: Iterable[tuple[CID, bytes]]) -> None:
        """Store several blocks at once (one transaction where that means something)."""
        ...

    def delete_many(self, cids: Iterable[CID]) -> None:
        """Remove blocks; CIDs that are not present are ignored."""
        ...


def get_required(store: BlockStore, cid: CID) -> bytes:
    """The block under ``cid``; raise :class:`MissingBlock` if the store lacks it."""
    data = store.get(cid)
    if data is None:
        raise MissingBlock(f"block {cid} is missing", cid)
    return data


def verify_block(cid: CID, data: bytes) -> None:
    """Raise :class:`BlockHashMismatch` unless ``data`` hashes to ``cid``.

    Only SHA-256 CIDs can be checked; any other hash function is reported as
    a mismatch too (with its own message), since the block cannot be trusted.
    """
    if cid.is_blessed:  # v1, dag-cbor or raw, sha2-256: the common case
        if not cid.matches(data):
            raise BlockHashMismatch(f"block bytes do not hash to {cid}")
        return
    try:
        code = cid.hash_code
        digest = cid.digest
    except CidError as exc:  # pragma: no cover - CID objects are validated
        raise BlockHashMismatch(f"cannot verify block {cid}: {exc.message}") from None
    if code != SHA2_256 or len(digest) != 32:
        raise BlockHashMismatch(
            f"cannot verify block {cid}: unsupported hash function 0x{code:x} "
            f"(digest {len(digest)} bytes); only sha2-256 is supported"
        )
    if hashlib.sha256(data).digest() != digest:
        raise BlockHashMismatch(f"block bytes do not hash to {cid}")


def _as_bytes(data: bytes) -> bytes:
    if type(data) is bytes:
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"block data must be bytes, not {type(data).__name__}")


# -- memory -------------------------------------------------------------------


class MemoryBlockStore:
    """A dict of blocks. ``len()`` counts blocks, iteration yields CIDs."""

    __slots__ = ("_blocks", "_size")

    def __init__(self, blocks: Mapping[CID, bytes] | Iterable[tuple[CID, bytes]] = ()) -> None:
        self._blocks: dict[CID, bytes] = {}
        self._size = 0
        items = blocks.items() if isinstance(blocks, Mapping) else blocks
        self.put_many(items)

    def get(self, cid: CID) -> bytes | None:
        return self._blocks.get(cid)

    def has(self, cid: CID) -> bool:
        return cid in self._blocks

    def put(self, cid: CID, data: bytes) -> None:
        if type(data) is not bytes:
            data = _as_bytes(data)
        old = self._blocks.get(cid)
        if old is not None:
            self._size -= len(old)
        self._blocks[cid] = data
        self._size += len(data)

    def get_many(self, cids: Iterable[CID]) -> dict[CID, bytes]:
        blocks = self._blocks
        out: dict[CID, bytes] = {}
        for cid in cids:
            data = blocks.get(cid)
            if data is not None:
                out[cid] = data
        return out

    def put_many(self, blocks: Iterable[tuple[CID, bytes]]) -> None:
        store = self._blocks
        size = self._size
        for cid, data in blocks:
            if type(data) is not bytes:
                data = _as_bytes(data)
            old = store.get(cid)
            if old is not None:
                size -= len(old)
            store[cid] = data
            size += len(data)
        self._size = size

    def delete_many(self, cids: Iterable[CID]) -> None:
        store = self._blocks
        for cid in cids:
            old = store.pop(cid, None)
            if old is not None:
                self._size -= len(old)

    @property
    def size_bytes(self) -> int:
        """Total length of the stored blocks (CIDs not counted)."""
        return self._size

    def __len__(self) -> int:
        return len(self._blocks)

    def __iter__(self) -> Iterator[CID]:
        return iter(self._blocks)

    def __contains__(self, cid: object) -> bool:
        return cid in self._blocks

    def __repr__(self) -> str:
        return f"MemoryBlockStore({len(self._blocks)} blocks, {self._size} bytes)"


# -- overlay ------------------------------------------------------------------


class OverlayBlockStore:
    """Stage writes over ``base``: reads see the staged state, ``base`` is untouched.

    ``put`` goes to :attr:`pending`; ``delete_many`` hides blocks (pending or
    in ``base``) until :meth:`commit`, which writes the pending blocks to
    ``base`` with one ``put_many``, then applies the deletes with one
    ``delete_many``. :meth:`discard` drops both.
    """

    __slots__ = ("_deleted", "_pending", "base")

    def __init__(self, base: BlockStore) -> None:
        self.base = base
        self._pending: dict[CID, bytes] = {}
        self._deleted: set[CID] = set()

    def get(self, cid: CID) -> bytes | None:
        data = self._pending.get(cid)
        if data is not None:
            return data
        if self._deleted and cid in self._deleted:
            return None
        return self.base.get(cid)

    def has(self, cid: CID) -> bool:
        if cid in self._pending:
            return True
        if self._deleted and cid in self._deleted:
            return False
        return self.base.has(cid)

    def put(self, cid: CID, data: bytes) -> None:
        if type(data) is not bytes:
            data = _as_bytes(data)
        self._pending[cid] = data
        if self._deleted:
            self._deleted.discard(cid)

    def get_many(self, cids: Iterable[CID]) -> dict[CID, bytes]:
        pending = self._pending
        deleted = self._deleted
        out: dict[CID, bytes] = {}
        rest: list[CID] = []
        for cid in cids:
            data = pending.get(cid)
            if data is not None:
                out[cid] = data
            elif not deleted or cid not in deleted:
                rest.append(cid)
        if rest:
            out.update(self.base.get_many(rest))
        return out

    def put_many(self, blocks: Iterable[tuple[CID, bytes]]) -> None:
        pending = self._pending
        deleted = self._deleted
        for cid, data in blocks:
            if type(data) is not bytes:
                data = _as_bytes(data)
            pending[cid] = data
            if deleted:
                deleted.discard(cid)

    def delete_many(self, cids: Iterable[CID]) -> None:
        pending = self._pending
        deleted = self._deleted
        for cid in cids:
            pending.pop(cid, None)
            deleted.add(cid)

    @property
    def pending(self) -> Mapping[CID, bytes]:
        """The staged blocks (read-only view)."""
        return MappingProxyType(self._pending)

    @property
    def deleted(self) -> frozenset[CID]:
        """The CIDs staged for deletion."""
        return frozenset(self._deleted)

    def commit(self) -> None:
        """Write the staged blocks and deletes to ``base``, then clear them."""
        if self._pending:
            self.base.put_many(self._pending.items())
        if self._deleted:
            self.base.delete_many(self._deleted)
        self._pending = {}
        self._deleted = set()

    def discard(self) -> None:
        """Drop everything staged."""
        self._pending = {}
        self._deleted = set()

    def __repr__(self) -> str:
        return (
            f"OverlayBlockStore({len(self._pending)} pending, "
            f"{len(self._deleted)} deleted, base={self.base!r})"
        )


# -- SQLite -------------------------------------------------------------------

_SQL_CREATE = (
    "CREATE TABLE IF NOT EXISTS blocks ("
    "cid BLOB PRIMARY KEY, data BLOB NOT NULL"
    ") STRICT, WITHOUT ROWID"
)
_SQL_GET = "SELECT data FROM blocks WHERE cid = ?"
_SQL_HAS = "SELECT 1 FROM blocks WHERE cid = ?"
_SQL_PUT = "INSERT OR REPLACE INTO blocks (cid, data) VALUES (?, ?)"
_SQL_DELETE = "DELETE FROM blocks WHERE cid = ?"
_SQL_COUNT = "SELECT count(*) FROM blocks"


def _sql_get_in(n: int) -> str:
    return f"SELECT cid, data FROM blocks WHERE cid IN ({', '.join('?' * n)})"


_SQL_GET_IN_FULL = _sql_get_in(_SQL_IN_CHUNK)


class SqliteBlockStore:
    """Blocks in one SQLite table ``blocks(cid BLOB PRIMARY KEY, data BLOB)``.

    Give a path (the database is opened in WAL mode and owned by the store:
    :meth:`close` closes it) or an open ``sqlite3.Connection`` (shared: the
    caller keeps ownership; when it is inside a transaction, writes join that
    transaction instead of committing their own). Multi-block writes are one
    transaction. The store may be handed between threads but not used by two
    at once.
    """

    __slots__ = ("_conn", "_owned")

    def __init__(self, path_or_connection: str | os.PathLike[str] | sqlite3.Connection) -> None:
        if isinstance(path_or_connection, sqlite3.Connection):
            self._conn = path_or_connection
            self._owned = False
        else:
            self._conn = sqlite3.connect(
                path_or_connection, isolation_level=None, check_same_thread=False
            )
            self._owned = True
            try:
                self._conn.execute("PRAGMA journal_mode=WAL")
            except BaseException:
                self._conn.close()
                raise
        self._write([(_SQL_CREATE, None)])

    # -- transactions --------------------------------------------------------

    def _write(self, statements: list[tuple[str, Iterable[tuple[bytes, ...]] | None]]) -> None:
        """Run ``(sql, rows)`` statements (``rows=None``: execute once) in one transaction."""
        conn = self._conn
        if conn.in_transaction:  # the caller's transaction: join it
            for sql, rows in statements:
                if rows is None:
                    conn.execute(sql)
                else:
                    conn.executemany(sql, rows)
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql, rows in statements:
                if rows is None:
                    conn.execute(sql)
                else:
                    conn.executemany(sql, rows)
        except BaseException:
            conn.rollback()
            raise
        conn.commit()

    # -- BlockStore ----------------------------------------------------------

    def get(self, cid: CID) -> bytes | None:
        row = self._conn.execute(_SQL_GET, (cid.bytes,)).fetchone()
        return None if row is None else row[0]

    def has(self, cid: CID) -> bool:
        return self._conn.execute(_SQL_HAS, (cid.bytes,)).fetchone() is not None

    def put(self, cid: CID, data: bytes) -> None:
        self._write([(_SQL_PUT, [(cid.bytes, _as_bytes(data))])])

    def get_many(self, cids: Iterable[CID]) -> dict[CID, bytes]:
        by_bytes = {cid.bytes: cid for cid in cids}
        keys = list(by_bytes)
        out: dict[CID, bytes] = {}
        execute = self._conn.execute
        for start in range(0, len(keys), _SQL_IN_CHUNK):
            chunk = keys[start : start + _SQL_IN_CHUNK]
            sql = _SQL_GET_IN_FULL if len(chunk) == _SQL_IN_CHUNK else _sql_get_in(len(chunk))
            for key, data in execute(sql, chunk):
                out[by_bytes[key]] = data
        return out

    def put_many(self, blocks: Iterable[tuple[CID, bytes]]) -> None:
        self._write([(_SQL_PUT, ((cid.bytes, _as_bytes(data)) for cid, data in blocks))])

    def delete_many(self, cids: Iterable[CID]) -> None:
        self._write([(_SQL_DELETE, ((cid.bytes,) for cid in cids))])

    # -- extras ----------------------------------------------------------------

    def __len__(self) -> int:
        row = self._conn.execute(_SQL_COUNT).fetchone()
        return int(row[0])

    @property
    def connection(self) -> sqlite3.Connection:
        """The underlying connection."""
        return self._conn

    def close(self) -> None:
        """Close the database if the store opened it (a shared connection stays open)."""
        if self._owned:
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SqliteBlockStore(owned={self._owned})"
