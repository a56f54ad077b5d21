"""Block stores: one behavioural suite over every store, then each store's own rules."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from roost.blockstore import (
    BlockStore,
    MemoryBlockStore,
    OverlayBlockStore,
    SqliteBlockStore,
    get_required,
    verify_block,
)
from roost.cbor import encode
from roost.cid import CID
from roost.errors import BlockHashMismatch, MissingBlock


def block(i: int, size: int = 0) -> tuple[CID, bytes]:
    data = encode({"n": i, "pad": b"\x01" * size})
    return CID.for_cbor_bytes(data), data


A, B, C = block(1), block(2), block(3)


@pytest.fixture(params=["memory", "overlay", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlockStore]:
    if request.param == "memory":
        yield MemoryBlockStore()
    elif request.param == "overlay":
        yield OverlayBlockStore(MemoryBlockStore())
    else:
        with SqliteBlockStore(tmp_path / "blocks.sqlite") as sqlite_store:
            yield sqlite_store


# -- every store --------------------------------------------------------------


def test_is_a_blockstore(store: BlockStore) -> None:
    assert isinstance(store, BlockStore)


def test_put_get_has(store: BlockStore) -> None:
    assert store.get(A[0]) is None and not store.has(A[0])
    store.put(*A)
    assert store.get(A[0]) == A[1] and store.has(A[0])
    assert type(store.get(A[0])) is bytes
    assert store.get(B[0]) is None and not store.has(B[0])


def test_put_replaces(store: BlockStore) -> None:
    store.put(A[0], b"wrong")  # stores do not check hashes
    store.put(*A)
    assert store.get(A[0]) == A[1]


def test_empty_block(store: BlockStore) -> None:
    cid = CID.for_raw(b"")
    store.put(cid, b"")
    assert store.get(cid) == b"" and store.has(cid)
    assert store.get_many([cid]) == {cid: b""}


def test_bytes_like_data_is_copied(store: BlockStore) -> None:
    data = bytearray(A[1])
    store.put(A[0], data)  # type: ignore[arg-type]
    data[0] ^= 0xFF
    assert store.get(A[0]) == A[1] and type(store.get(A[0])) is bytes
    store.put_many([(B[0], memoryview(B[1]))])  # type: ignore[list-item]
    assert store.get(B[0]) == B[1] and type(store.get(B[0])) is bytes


def test_get_many_and_put_many(store: BlockStore) -> None:
    store.put_many([A, B])
    assert store.get_many([A[0], B[0], C[0]]) == {A[0]: A[1], B[0]: B[1]}
    assert store.get_many([]) == {}
    assert store.get_many(iter([B[0], B[0]])) == {B[0]: B[1]}
    store.put_many(iter([C]))  # any iterable, consumed once
    assert store.get(C[0]) == C[1]
    store.put_many([])


def test_delete_many(store: BlockStore) -> None:
    store.put_many([A, B, C])
    store.delete_many([A[0], C[0], block(99)[0]])  # absent CIDs are ignored
    assert store.get(A[0]) is None and not store.has(C[0])
    assert store.get_many([A[0], B[0], C[0]]) == {B[0]: B[1]}
    store.delete_many(iter([B[0]]))
    assert store.get(B[0]) is None
    store.put(*A)  # a deleted block can come back
    assert store.get(A[0]) == A[1]


def test_get_many_over_many_cids(store: BlockStore) -> None:
    blocks = [block(i) for i in range(1_234)]
    store.put_many(blocks[::2])
    got = store.get_many(cid for cid, _ in blocks)
    assert got == dict(blocks[::2])
    assert all(type(cid) is CID for cid in got)


def test_get_required(store: BlockStore) -> None:
    store.put(*A)
    assert get_required(store, A[0]) == A[1]
    with pytest.raises(MissingBlock) as info:
        get_required(store, B[0])
    assert info.value.cid == B[0]
    assert str(B[0]) in str(info.value)


def test_non_blessed_cids(store: BlockStore) -> None:
    data = b"hello"
    pb = CID.from_bytes(b"\x01\x70\x12\x20" + hashlib.sha256(data).digest())
    ident = CID.from_bytes(b"\x01\x55\x00\x05hello")
    store.put_many([(pb, data), (ident, data)])
    assert store.get_many([pb, ident]) == {pb: data, ident: data}


# -- memory -------------------------------------------------------------------


def test_memory_store_accounting() -> None:
    store = MemoryBlockStore([A, B])
    assert len(store) == 2 and set(store) == {A[0], B[0]}
    assert store.size_bytes == len(A[1]) + len(B[1])
    store.put(A[0], b"xy")
    assert store.size_bytes == 2 + len(B[1])
    store.delete_many([B[0], C[0]])
    assert len(store) == 1 and store.size_bytes == 2
    assert A[0] in store and B[0] not in store
    assert MemoryBlockStore({C[0]: C[1]}).get(C[0]) == C[1]


# -- overlay ------------------------------------------------------------------


def test_overlay_reads_through_and_stages_writes() -> None:
    base = MemoryBlockStore([A])
    overlay = OverlayBlockStore(base)
    assert overlay.get(A[0]) == A[1] and overlay.has(A[0])
    overlay.put(*B)
    overlay.put_many([C])
    assert overlay.get(B[0]) == B[1] and overlay.get_many([A[0], B[0], C[0]]) == dict([A, B, C])
    assert base.get(B[0]) is None and len(base) == 1
    assert dict(overlay.pending) == dict([B, C])
    with pytest.raises(TypeError):
        overlay.pending[A[0]] = A[1]  # type: ignore[index]
    overlay.commit()
    assert dict(overlay.pending) == {}
    assert base.get_many([A[0], B[0], C[0]]) == dict([A, B, C])


def test_overlay_discard() -> None:
    base = MemoryBlockStore([A])
    overlay = OverlayBlockStore(base)
    overlay.put(*B)
    overlay.delete_many([A[0]])
    overlay.discard()
    assert overlay.get(B[0]) is None and overlay.get(A[0]) == A[1]
    assert not overlay.pending and not overlay.deleted
    overlay.commit()
    assert len(base) == 1


def test_overlay_deletes_hide_base_blocks_until_commit() -> None:
    base = MemoryBlockStore([A, B])
    overlay = OverlayBlockStore(base)
    overlay.delete_many([A[0]])
    assert overlay.get(A[0]) is None and not overlay.has(A[0])
    assert overlay.get_many([A[0], B[0]]) == dict([B])
    assert base.get(A[0]) == A[1]
    assert overlay.deleted == {A[0]}
    overlay.put(*A)  # put after delete: visible again, no longer deleted
    assert overlay.get(A[0]) == A[1] and not overlay.deleted
    overlay.delete_many([A[0], B[0]])
    overlay.commit()
    assert len(base) == 0 and overlay.get(B[0]) is None


def test_overlay_over_sqlite(tmp_path: Path) -> None:
    with SqliteBlockStore(tmp_path / "b.sqlite") as base:
        base.put(*A)
        overlay = OverlayBlockStore(base)
        overlay.put_many([block(i) for i in range(10, 710)])
        overlay.delete_many([A[0]])
        assert len(base) == 1
        overlay.commit()
        assert len(base) == 700 and base.get(A[0]) is None


def test_overlays_stack() -> None:
    base = MemoryBlockStore([A])
    lower = OverlayBlockStore(base)
    upper = OverlayBlockStore(lower)
    upper.put(*B)
    assert upper.get(A[0]) == A[1]
    upper.commit()
    assert lower.get(B[0]) == B[1] and base.get(B[0]) is None
    lower.commit()
    assert base.get(B[0]) == B[1]


# -- sqlite -------------------------------------------------------------------


def test_sqlite_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "blocks.sqlite"
    blocks = [block(i, size=i) for i in range(600)]
    with SqliteBlockStore(path) as store:
        store.put_many(blocks)
        store.put(*A)
    with SqliteBlockStore(str(path)) as store:
        assert len(store) == 601
        assert store.get_many(cid for cid, _ in blocks) == dict(blocks)
        assert store.get(A[0]) == A[1]
        mode = store.connection.execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
        sql = store.connection.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'blocks'"
        ).fetchone()[0]
        assert "STRICT" in sql and "WITHOUT ROWID" in sql


def test_sqlite_put_many_is_one_transaction(tmp_path: Path) -> None:
    def blocks_then_failure() -> Iterator[tuple[CID, bytes]]:
        yield A
        yield B
        raise RuntimeError("source failed")

    with SqliteBlockStore(tmp_path / "b.sqlite") as store:
        with pytest.raises(RuntimeError):
            store.put_many(blocks_then_failure())
        assert store.get(A[0]) is None and len(store) == 0
        assert not store.connection.in_transaction
        store.put(*C)  # still usable
        assert store.get(C[0]) == C[1]


def test_sqlite_shared_connection(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "shared.sqlite")
    try:
        store = SqliteBlockStore(conn)
        store.put(*A)
        # inside the caller's transaction, writes join it
        conn.execute("BEGIN")
        store.put_many([B, C])
        assert store.get(B[0]) == B[1]
        conn.rollback()
        assert store.get(B[0]) is None and store.get(A[0]) == A[1]
        store.close()  # not ours: stays open
        assert conn.execute("SELECT count(*) FROM blocks").fetchone()[0] == 1
    finally:
        conn.close()


def test_sqlite_rejects_non_bytes(tmp_path: Path) -> None:
    with SqliteBlockStore(tmp_path / "b.sqlite") as store:
        with pytest.raises(TypeError):
            store.put(A[0], "text")  # type: ignore[arg-type]
        assert len(store) == 0


# -- verify_block -------------------------------------------------------------


def test_verify_block() -> None:
    verify_block(*A)
    with pytest.raises(BlockHashMismatch):
        verify_block(A[0], B[1])
    data = b"hello"
    verify_block(CID.for_raw(data), data)
    pb = CID.from_bytes(b"\x01\x70\x12\x20" + hashlib.sha256(data).digest())
    verify_block(pb, data)
    with pytest.raises(BlockHashMismatch, match="do not hash"):
        verify_block(pb, b"other")
    two_byte_codec = CID.from_bytes(b"\x01\xa9\x02\x12\x20" + hashlib.sha256(data).digest())
    verify_block(two_byte_codec, data)
    with pytest.raises(BlockHashMismatch, match="unsupported hash"):
        verify_block(CID.from_bytes(b"\x01\x55\x00\x05hello"), data)
    with pytest.raises(BlockHashMismatch, match="unsupported hash"):
        verify_block(CID.from_bytes(b"\x01\x55\x12\x05hello"), data)  # truncated sha-256
