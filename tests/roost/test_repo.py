"""Repositories: commits, writes, CAR export/import, proofs, sync v1.1 inversion."""

from __future__ import annotations

import hashlib
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roost import cbor
from roost.blockstore import MemoryBlockStore
from roost.car import CarReader, car_bytes, read_car, read_car_single_root
from roost.cid import CID
from roost.commit import Commit, sign_commit
from roost.crypto import PrivateKey
from roost.errors import (
    BadCommitSignature,
    BlockHashMismatch,
    CarError,
    CarTruncated,
    InvalidCommit,
    InvalidMst,
    InvalidRepoPath,
    InvalidSwap,
    InvertError,
    MissingBlock,
    RecordExists,
    RecordNotFound,
    RepoError,
    WrongDid,
)
from roost.mst import EMPTY_TREE_CID, MST, NodeStore
from roost.repo import (
    MAX_COMMIT_OPS,
    Repo,
    RepoOp,
    Write,
    import_car,
    ops_from_firehose,
    verify_car,
    verify_commit_event,
    verify_repo,
)
from roost.tid import TidClock

DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
KEY = PrivateKey.from_bytes(hashlib.sha256(b"roost test key").digest(), "k256")
POST = "app.bsky.feed.post"


def post(text: str) -> dict:
    return {"$type": POST, "text": text, "createdAt": "2024-01-01T00:00:00.000Z"}


def new_repo(n: int = 0, key: PrivateKey = KEY) -> Repo:
    clock = TidClock()
    records = [(f"{POST}/{clock.next_str()}", post(f"post {i}")) for i in range(n)]
    return Repo.create_from_records(MemoryBlockStore(), DID, key, records, clock=clock)


def verify_event(data, prev_data=None, key=KEY):  # type: ignore[no-untyped-def]
    return verify_commit_event(
        repo=DID,
        commit_cid=data.cid,
        rev=data.rev,
        blocks=data.car(),
        ops=data.ops,
        prev_data=data.prev_data if prev_data is None else prev_data,
        key=key.public_key if key else None,
    )


# -- commits ----------------------------------------------------------------


def test_unsigned_commit_worked_example() -> None:
    commit = sign_commit(DID, EMPTY_TREE_CID, "3jzfcijpj2z2a", KEY)
    unsigned = commit.unsigned_bytes()
    assert len(unsigned) == 118
    assert hashlib.sha256(unsigned).hexdigest() == (
        "a96af8b7e753b89b1a7fb1c48a47c669f507a4b24257fc74c5287163775550f0"
    )
    assert list(cbor.decode(commit.block)) == ["did", "rev", "sig", "data", "prev", "version"]
    assert commit.verify(KEY.public_key) and len(commit.sig) == 64
    assert Commit.decode(commit.block, commit.cid) == commit


def test_p256_commits() -> None:
    key = PrivateKey.generate("p256")
    commit = sign_commit(DID, EMPTY_TREE_CID, "3jzfcijpj2z2a", key)
    assert commit.verify(key.public_key) and not commit.verify(KEY.public_key)


@pytest.mark.parametrize(
    "change",
    [
        {"version": 4},
        {"version": "3"},
        {"did": "not a did"},
        {"data": "bafy"},
        {"rev": "nope"},
        {"prev": "x"},
        {"sig": "x"},
        {"extra": 1},
    ],
)
def test_malformed_commits(change: dict) -> None:
    value = cbor.decode(sign_commit(DID, EMPTY_TREE_CID, "3jzfcijpj2z2a", KEY).block)
    value.update(change)
    with pytest.raises(InvalidCommit):
        Commit.decode(cbor.encode(value))


def test_commit_without_prev_key_rejected() -> None:
    value = cbor.decode(sign_commit(DID, EMPTY_TREE_CID, "3jzfcijpj2z2a", KEY).block)
    del value["prev"]
    with pytest.raises(InvalidCommit):
        Commit.decode(cbor.encode(value))


def test_commit_check_errors() -> None:
    commit = sign_commit(DID, EMPTY_TREE_CID, "3jzfcijpj2z2a", KEY)
    with pytest.raises(WrongDid):
        commit.check(did="did:plc:someoneelse")
    with pytest.raises(BadCommitSignature):
        commit.check(PrivateKey.generate("k256").public_key)
    with pytest.raises(InvalidCommit):
        Commit.decode(commit.block, EMPTY_TREE_CID)


# -- writes -----------------------------------------------------------------


def test_create_and_read_records() -> None:
    repo, data = Repo.create(MemoryBlockStore(), DID, KEY, [Write.create(POST, "3jzfcijpj2z2a", post("hi"))])
    assert data.since is None and data.prev_data is None
    assert [(op.action, op.path, op.prev) for op in data.ops] == [("create", f"{POST}/3jzfcijpj2z2a", None)]
    cid, value = repo.get_record(POST, "3jzfcijpj2z2a")  # type: ignore[misc]
    assert value == post("hi") and cid == CID.for_cbor(post("hi"))
    assert repo.get_record(POST, "3jzfcijpj2z2b") is None
    assert repo.commit.verify(KEY.public_key)


def test_update_delete_ops_carry_prev() -> None:
    repo = new_repo()
    repo, first = repo.apply_writes([Write.create(POST, "3jzfcijpj2z2a", post("a"))], KEY)
    a = first.ops[0].cid
    repo, second = repo.apply_writes([Write.update(POST, "3jzfcijpj2z2a", post("b"), swap=a)], KEY)
    b = second.ops[0].cid
    assert second.ops == [RepoOp("update", f"{POST}/3jzfcijpj2z2a", b, a)]
    assert second.since == first.rev and second.prev_data == first.commit.data
    repo, third = repo.apply_writes([Write.delete(POST, "3jzfcijpj2z2a")], KEY)
    assert third.ops == [RepoOp("delete", f"{POST}/3jzfcijpj2z2a", None, b)]
    assert repo.tree.cid == EMPTY_TREE_CID
    assert first.rev < second.rev < third.rev


def test_write_errors() -> None:
    repo = new_repo()
    repo, _ = repo.apply_writes([Write.create(POST, "3jzfcijpj2z2a", post("a"))], KEY)
    with pytest.raises(RecordExists):
        repo.apply_writes([Write.create(POST, "3jzfcijpj2z2a", post("x"))], KEY)
    with pytest.raises(RecordNotFound):
        repo.apply_writes([Write.update(POST, "3jzfcijpj2z2b", post("x"))], KEY)
    with pytest.raises(RecordNotFound):
        repo.apply_writes([Write.delete(POST, "3jzfcijpj2z2b")], KEY)
    with pytest.raises(InvalidSwap):
        repo.apply_writes([Write.delete(POST, "3jzfcijpj2z2a", swap=EMPTY_TREE_CID)], KEY)
    with pytest.raises(InvalidSwap):
        repo.apply_writes([], KEY, swap_commit=EMPTY_TREE_CID)
    with pytest.raises(InvalidRepoPath):
        repo.apply_writes([Write.create("not-an-nsid", "x", post("x"))], KEY)
    with pytest.raises(InvalidRepoPath):
        repo.apply_writes([Write.create(POST, "bad/key", post("x"))], KEY)
    with pytest.raises(RepoError):
        repo.apply_writes([Write.create(POST, "a", post("x")), Write.delete(POST, "a")], KEY)
    with pytest.raises(RepoError):
        repo.apply_writes([Write.create(POST, "a", [1])], KEY)
    with pytest.raises(RepoError):
        repo.apply_writes([Write.create(POST, str(i), post("x")) for i in range(MAX_COMMIT_OPS + 1)], KEY)
    # the repo is unchanged by failed writes
    assert repo.get_record_cid(POST, "3jzfcijpj2z2a") is not None


def test_list_records_and_collections() -> None:
    repo = new_repo()
    writes = [Write.create(POST, f"3jzfcijpj2z{c}a", post(c)) for c in "bcdefg"]
    writes += [Write.create("app.bsky.feed.like", "3jzfcijpj2z2a", {"$type": "app.bsky.feed.like"})]
    writes += [Write.create("app.bsky.feed.postgate", "3jzfcijpj2z2a", {"$type": "x.y.z"})]
    repo, _ = repo.apply_writes(writes, KEY)
    rkeys = [f"3jzfcijpj2z{c}a" for c in "bcdefg"]
    assert [r for r, _ in repo.list_records(POST)] == rkeys
    assert [r for r, _ in repo.list_records(POST, limit=2, cursor=rkeys[1])] == rkeys[2:4]
    assert [r for r, _ in repo.list_records(POST, reverse=True)] == rkeys[::-1]
    assert [r for r, _ in repo.list_records(POST, reverse=True, cursor=rkeys[2])] == rkeys[:2][::-1]
    assert repo.collections() == ["app.bsky.feed.like", POST, "app.bsky.feed.postgate"]


# -- export / import --------------------------------------------------------


def test_export_verify_and_reload() -> None:
    repo = new_repo(300)
    car = b"".join(repo.export_car())
    summary = verify_car(car, did=DID, key=KEY.public_key)
    assert summary.records == 300 and summary.collections == {POST: 300}
    assert summary.data_cid == repo.tree.cid and summary.commit_cid == repo.cid
    assert summary.signature_checked
    assert verify_car(io.BytesIO(car)).records == 300
    root, blocks = read_car_single_root(car)
    loaded = Repo.load(MemoryBlockStore(blocks), root, did=DID)
    assert list(loaded.tree) == list(repo.tree)
    # the export holds exactly the commit, every node and every record
    assert len(blocks) == 1 + sum(1 for _ in repo.tree.nodes()) + 300


def test_import_into_sqlite(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from roost.blockstore import SqliteBlockStore

    repo = new_repo(120)
    car = b"".join(repo.export_car())
    with SqliteBlockStore(tmp_path / "blocks.sqlite") as store:
        imported, summary = import_car(store, io.BytesIO(car), did=DID, key=KEY.public_key)
        assert summary.records == 120 and imported.cid == repo.cid
        assert list(imported.tree) == list(repo.tree)
        imported, data = imported.apply_writes([Write.create(POST, "3zzzzzzzzzzz2", post("after"))], KEY)
        verify_event(data)
    with SqliteBlockStore(tmp_path / "blocks.sqlite") as store:
        assert Repo.load(store, imported.cid).get_record(POST, "3zzzzzzzzzzz2") is not None
    with pytest.raises(BadCommitSignature):
        import_car(MemoryBlockStore(), car, key=PrivateKey.generate("k256").public_key)


def test_bulk_create_matches_incremental() -> None:
    incremental = new_repo(50)
    records = []
    for path, cid in incremental.tree:
        records.append((path, cbor.decode(incremental.blocks.get(cid))))  # type: ignore[arg-type]
    bulk = Repo.create_from_records(MemoryBlockStore(), DID, KEY, records)
    assert bulk.tree.cid == incremental.tree.cid
    verify_repo(bulk.blocks, bulk.cid, did=DID, key=KEY.public_key)


def _tamper(car: bytes, change) -> bytes:  # type: ignore[no-untyped-def]
    roots, blocks = read_car(car)
    roots, blocks = change(roots, blocks)
    return car_bytes(roots, blocks)


def test_verify_rejects_wrong_key_and_did() -> None:
    car = b"".join(new_repo(20).export_car())
    with pytest.raises(BadCommitSignature):
        verify_car(car, key=PrivateKey.generate("k256").public_key)
    with pytest.raises(WrongDid):
        verify_car(car, did="did:plc:other")


def test_verify_rejects_missing_blocks() -> None:
    repo = new_repo(100)
    car = b"".join(repo.export_car())
    some_record = next(iter(repo.tree))[1]
    no_record = _tamper(car, lambda r, b: (r, {c: d for c, d in b.items() if c != some_record}))
    with pytest.raises(MissingBlock):
        verify_car(no_record)
    assert verify_car(no_record, require_records=False).missing_records[0][1] == some_record
    leaf_node = next(n for n in repo.tree.nodes() if n.layer == 0).cid
    no_node = _tamper(car, lambda r, b: (r, {c: d for c, d in b.items() if c != leaf_node}))
    with pytest.raises(MissingBlock):
        verify_car(no_node)
    no_commit = _tamper(car, lambda r, b: (r, {c: d for c, d in b.items() if c != repo.cid}))
    with pytest.raises(MissingBlock):
        verify_car(no_commit)


def test_verify_rejects_bad_cars() -> None:
    car = b"".join(new_repo(20).export_car())
    with pytest.raises(CarTruncated):
        verify_car(car[:-5])
    corrupted = bytearray(car)
    corrupted[-3] ^= 0xFF
    with pytest.raises(BlockHashMismatch):
        verify_car(bytes(corrupted))
    two_roots = _tamper(car, lambda r, b: (r + r, b))
    with pytest.raises(CarError):
        verify_car(two_roots)


def _resigned_car(repo: Repo, data: CID, extra: dict[CID, bytes]) -> bytes:
    commit = sign_commit(DID, data, repo.rev, KEY)
    blocks = dict(read_car(b"".join(repo.export_car()))[1])
    blocks.update(extra)
    blocks[commit.cid] = commit.block
    return car_bytes([commit.cid], blocks)


def test_verify_rejects_non_canonical_mst() -> None:
    repo = new_repo(30)
    root = repo.tree.root
    # a root wrapped in a keyless node (not top-pruned), correctly signed
    wrapper = cbor.encode({"e": [], "l": root.cid})
    with pytest.raises(InvalidMst):
        verify_car(_resigned_car(repo, CID.for_cbor_bytes(wrapper), {CID.for_cbor_bytes(wrapper): wrapper}))
    # all keys flattened into one node at layer 0 (wrong layer for the higher keys)
    items = list(repo.tree)
    flat_entries = []
    prev = b""
    from roost.mst import common_prefix_len

    for key, val in items:
        kb = key.encode()
        p = common_prefix_len(prev, kb)
        flat_entries.append({"k": kb[p:], "p": p, "t": None, "v": val})
        prev = kb
    flat = cbor.encode({"e": flat_entries, "l": None})
    with pytest.raises(InvalidMst):
        verify_car(_resigned_car(repo, CID.for_cbor_bytes(flat), {CID.for_cbor_bytes(flat): flat}))


def test_verify_rejects_oversized_block() -> None:
    repo = new_repo(3)
    big = cbor.encode({"$type": POST, "text": "x" * 3_000_000})
    car = _tamper(b"".join(repo.export_car()), lambda r, b: (r, {**b, CID.for_cbor_bytes(big): big}))
    with pytest.raises(CarError):
        verify_car(car)


# -- proofs -----------------------------------------------------------------


def test_record_inclusion_and_absence_proofs() -> None:
    repo = new_repo(200)
    path, cid = list(repo.tree)[123]
    collection, rkey = path.split("/")
    root, blocks = read_car_single_root(repo.record_proof(collection, rkey))
    assert root == repo.cid and blocks[cid] == repo.blocks.get(cid)
    commit = Commit.decode(blocks[root], root)
    assert commit.verify(KEY.public_key)
    partial = MST.load(NodeStore(MemoryBlockStore(blocks), verify=True), commit.data)
    assert partial.get(path) == cid
    assert len(blocks) == 2 + len(repo.tree.path(path))
    # absence: the same kind of path proves there is nothing there
    absent_rkey = rkey[:-1] + ("2" if rkey[-1] != "2" else "3")
    _, blocks = read_car_single_root(repo.record_proof(collection, absent_rkey))
    partial = MST.load(NodeStore(MemoryBlockStore(blocks), verify=True), commit.data)
    assert partial.get(f"{collection}/{absent_rkey}") is None


# -- sync v1.1 --------------------------------------------------------------


def test_commit_events_invert() -> None:
    repo = new_repo(150)
    clock = TidClock()
    existing = [p for p, _ in repo.tree]
    writes = [Write.create(POST, clock.next_str(), post("new"))]
    writes += [Write.update(*existing[5].split("/"), post("edited"))]
    writes += [Write.delete(*existing[77].split("/"))]
    repo, data = repo.apply_writes(writes, KEY)
    commit = verify_event(data)
    assert commit.cid == data.cid
    # the first commit has no prevData: structure and signature only
    _, first = Repo.create(MemoryBlockStore(), DID, KEY, [Write.create(POST, "3jzfcijpj2z2a", post("x"))])
    verify_event(first)


def test_commit_event_failures() -> None:
    repo = new_repo(150)
    existing = [p for p, _ in repo.tree]
    repo, data = repo.apply_writes(
        [Write.delete(*existing[3].split("/")), Write.update(*existing[9].split("/"), post("e"))], KEY
    )
    # an op left out: inversion no longer reaches prevData
    missing = data.ops[:1]
    with pytest.raises(InvertError):
        verify_commit_event(repo=DID, commit_cid=data.cid, rev=data.rev, blocks=data.car(),
                            ops=missing, prev_data=data.prev_data, key=KEY.public_key)
    # a wrong prev on the delete
    wrong = [RepoOp("delete", data.ops[0].path, None, EMPTY_TREE_CID), data.ops[1]]
    with pytest.raises(InvertError):
        verify_commit_event(repo=DID, commit_cid=data.cid, rev=data.rev, blocks=data.car(),
                            ops=wrong, prev_data=data.prev_data, key=KEY.public_key)
    with pytest.raises(InvertError):
        verify_event(data, prev_data=EMPTY_TREE_CID)
    with pytest.raises(BadCommitSignature):
        verify_event(data, key=PrivateKey.generate("k256"))
    with pytest.raises(WrongDid):
        verify_commit_event(repo="did:plc:other", commit_cid=data.cid, rev=data.rev, blocks=data.car(),
                            ops=data.ops, prev_data=data.prev_data, key=KEY.public_key)
    with pytest.raises(InvalidCommit):
        verify_commit_event(repo=DID, commit_cid=data.cid, rev="2222222222222", blocks=data.car(),
                            ops=data.ops, prev_data=data.prev_data, key=KEY.public_key)
    # shape errors
    bad_shape = [RepoOp("delete", data.ops[0].path, data.ops[1].cid, data.ops[0].prev), data.ops[1]]
    with pytest.raises(InvertError):
        verify_commit_event(repo=DID, commit_cid=data.cid, rev=data.rev, blocks=data.car(),
                            ops=bad_shape, prev_data=data.prev_data, key=KEY.public_key)
    # a node the inversion needs is missing from the blocks
    roots, blocks = read_car(data.car())
    node = next(c for c, b in blocks.items() if c != data.cid and b[:3] == b"\xa2\x61\x65")
    stripped = car_bytes(roots, {c: b for c, b in blocks.items() if c != node})
    with pytest.raises((MissingBlock, InvertError)):
        verify_commit_event(repo=DID, commit_cid=data.cid, rev=data.rev, blocks=stripped,
                            ops=data.ops, prev_data=data.prev_data, key=KEY.public_key)


def test_ops_from_firehose() -> None:
    cid = CID.for_cbor({})
    ops = ops_from_firehose([{"action": "create", "path": "a.b.c/x", "cid": cid, "prev": None}])
    assert ops == [RepoOp("create", "a.b.c/x", cid, None)]
    for bad in ([1], [{"action": "move", "path": "a"}], [{"action": "create", "path": "a", "cid": "x"}]):
        with pytest.raises(InvertError):
            ops_from_firehose(bad)  # type: ignore[arg-type]


paths = st.sampled_from([f"{POST}/3jzfcijpj2z{c}{d}" for c in "234567abcdefghij" for d in "2a"])


@given(st.lists(st.lists(st.tuples(paths, st.integers(0, 3)), max_size=8), min_size=1, max_size=6),
       st.lists(paths, max_size=40, unique=True))
@settings(max_examples=60, deadline=None)
def test_every_commit_inverts(batches: list, initial: list) -> None:
    repo, _ = Repo.create(MemoryBlockStore(), DID, KEY, [Write.create(*p.split("/"), post(p)) for p in initial])
    for batch in batches:
        writes, seen = [], set()
        for path, choice in batch:
            if path in seen:
                continue
            seen.add(path)
            present = repo.tree.get(path) is not None
            collection, rkey = path.split("/")
            if not present:
                writes.append(Write.create(collection, rkey, post(str(choice))))
            elif choice % 2:
                writes.append(Write.delete(collection, rkey))
            else:
                writes.append(Write.update(collection, rkey, post(f"{path}{choice}")))
        before = repo.tree.cid
        repo, data = repo.apply_writes(writes, KEY)
        assert data.prev_data == before
        verify_event(data)


def test_verify_rejects_keys_outside_their_subtree_range() -> None:
    leaf = CID.for_cbor(post("x"))
    child = cbor.encode({"e": [{"k": b"app.bsky.feed.post/C0", "p": 0, "t": None, "v": leaf}], "l": None})
    # find rkeys with the right heights for a two-layer tree
    from roost.mst import key_height

    low = next(f"{POST}/3aaa{i:04d}" for i in range(10_000) if key_height(f"{POST}/3aaa{i:04d}") == 0)
    high = next(f"{POST}/3bbb{i:04d}" for i in range(10_000) if key_height(f"{POST}/3bbb{i:04d}") == 1)
    # the left subtree of `high` holds a key *greater* than `high`
    bad_key = next(f"{POST}/3ccc{i:04d}" for i in range(10_000) if key_height(f"{POST}/3ccc{i:04d}") == 0)
    child = cbor.encode({"e": [{"k": bad_key.encode(), "p": 0, "t": None, "v": leaf}], "l": None})
    root = cbor.encode({"e": [{"k": high.encode(), "p": 0, "t": None, "v": leaf}], "l": CID.for_cbor_bytes(child)})
    blocks = MemoryBlockStore()
    for block in (child, root, cbor.encode(post("x"))):
        blocks.put(CID.for_cbor_bytes(block), block)
    commit = sign_commit(DID, CID.for_cbor_bytes(root), "3jzfcijpj2z2a", KEY)
    blocks.put(commit.cid, commit.block)
    with pytest.raises(InvalidMst):
        verify_repo(blocks, commit.cid)
    # the same shape with the key in range verifies
    child = cbor.encode({"e": [{"k": low.encode(), "p": 0, "t": None, "v": leaf}], "l": None})
    root = cbor.encode({"e": [{"k": high.encode(), "p": 0, "t": None, "v": leaf}], "l": CID.for_cbor_bytes(child)})
    for block in (child, root):
        blocks.put(CID.for_cbor_bytes(block), block)
    commit = sign_commit(DID, CID.for_cbor_bytes(root), "3jzfcijpj2z2a", KEY)
    blocks.put(commit.cid, commit.block)
    assert verify_repo(blocks, commit.cid).records == 2
