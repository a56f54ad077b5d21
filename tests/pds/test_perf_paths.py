"""The fast paths of the PDS give the same answers as the slow ones.

``getRepo`` streams the account's block table instead of walking the tree,
so the writer must keep that table equal to the blocks of the current
commit: commit, MST nodes, records, nothing else. Checked here after every
kind of write (creates, updates, deletes, identical records at two paths,
multi-op commits, emptying the repo, a re-signed commit), against the tree
walked from the exported commit, with roost's verifier and the atproto SDK's
CAR reader.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import httpx
from atproto_core.car import CAR

import pds.writer as writer_module
from pds.api.sync import EXPORT_BATCH_ROWS, _whole_repo
from pds.sqlite import AccountBlocks, PdsDatabase
from pds.writer import WriteContext, Writer
from roost.blockstore import MemoryBlockStore
from roost.car import read_car_single_root
from roost.cid import CID
from roost.crypto import PrivateKey
from roost.repo import Repo, Write, verify_car
from tests.pds.conftest import Network

POST = "app.bsky.feed.post"
REPO = "com.atproto.repo"
APPLY = f"{REPO}.applyWrites"
CREATED = "2024-05-01T12:00:00.000Z"


def _ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return response.json() if response.content else {}  # type: ignore[no-any-return]


def _post(text: str) -> dict[str, Any]:
    return {"$type": POST, "text": text, "createdAt": CREATED}


def _call(net: Network, session: dict[str, Any], nsid: str, body: dict[str, Any]) -> dict[str, Any]:
    body = {"repo": session["did"], **body}
    return _ok(net.http.post(net.xrpc(f"{REPO}.{nsid}"), json=body, headers=net.auth(session)))


def _stored_blocks(net: Network, did: str) -> set[CID]:
    with sqlite3.connect(net.config.database_path) as conn:
        rows = conn.execute("SELECT cid FROM block WHERE did = ?", (did,)).fetchall()
    return {CID.from_bytes(row[0]) for row in rows}


def _check_export(net: Network, did: str, records: int) -> None:
    """getRepo holds exactly the current commit's blocks, and so does the table."""
    response = net.http.get(net.xrpc("com.atproto.sync.getRepo"), params={"did": did})
    assert response.status_code == 200, response.text
    car = response.content
    root, blocks = read_car_single_root(car)
    latest = _ok(net.http.get(net.xrpc("com.atproto.sync.getLatestCommit"), params={"did": did}))
    assert str(root) == latest["cid"]
    repo = Repo.load(MemoryBlockStore(blocks), root, did=did)
    live = {root} | {node.cid for node in repo.tree.nodes()} | {cid for _, cid in repo.tree}
    assert set(blocks) == live  # nothing missing, nothing extra
    assert _stored_blocks(net, did) == live
    assert next(iter(blocks)) == root  # the commit comes first
    assert verify_car(car, did=did).records == records
    sdk = CAR.from_bytes(car)
    assert str(sdk.root) == str(root) and len(sdk.blocks) == len(live)


def test_the_block_table_is_the_current_commit(network: Network) -> None:
    alice = network.create_account("alice")
    did = alice["did"]
    _check_export(network, did, 0)  # the empty repo: commit and the empty root

    rkeys = []
    for i in range(30):
        out = _call(network, alice, "createRecord", {"collection": POST, "record": _post(f"p{i}")})
        rkeys.append(out["uri"].rsplit("/", 1)[1])
    _check_export(network, did, 30)

    # the same record content at two paths shares one block
    for rkey in ("twin-a", "twin-b"):
        body = {"collection": POST, "rkey": rkey, "record": _post("twin"), "validate": False}
        _call(network, alice, "putRecord", body)
    _call(network, alice, "deleteRecord", {"collection": POST, "rkey": "twin-a"})
    _check_export(network, did, 31)

    # updates (the old record blocks go) and deletes, one commit each
    for i, rkey in enumerate(rkeys[:10]):
        _call(network, alice, "putRecord", {"collection": POST, "rkey": rkey, "record": _post(f"u{i}")})
    for rkey in rkeys[10:20]:
        _call(network, alice, "deleteRecord", {"collection": POST, "rkey": rkey})
    _check_export(network, did, 21)

    # one commit mixing creates, updates and deletes
    writes: list[dict[str, Any]] = [
        {"$type": f"{APPLY}#create", "collection": POST, "value": _post(f"batch {i}")}
        for i in range(50)
    ]
    writes += [
        {"$type": f"{APPLY}#update", "collection": POST, "rkey": rkey, "value": _post("again")}
        for rkey in rkeys[20:25]
    ]
    writes += [{"$type": f"{APPLY}#delete", "collection": POST, "rkey": rkey} for rkey in rkeys[:5]]
    _call(network, alice, "applyWrites", {"writes": writes})
    _check_export(network, did, 66)

    # empty the repo again, then write once more
    listed = _ok(
        network.http.get(
            network.xrpc(f"{REPO}.listRecords"), params={"repo": did, "collection": POST, "limit": 100}
        )
    )["records"]
    assert len(listed) == 66
    deletes = [
        {"$type": f"{APPLY}#delete", "collection": POST, "rkey": r["uri"].rsplit("/", 1)[1]}
        for r in listed
    ]
    _call(network, alice, "applyWrites", {"writes": deletes})
    _check_export(network, did, 0)
    _call(network, alice, "createRecord", {"collection": POST, "record": _post("back")})
    _check_export(network, did, 1)


def test_other_accounts_blocks_stay_out(network: Network) -> None:
    alice = network.create_account("alice")
    bob = network.create_account("bob")
    for i in range(5):
        _call(network, alice, "createRecord", {"collection": POST, "record": _post(f"same {i}")})
        _call(network, bob, "createRecord", {"collection": POST, "record": _post(f"same {i}")})
    _check_export(network, alice["did"], 5)
    _check_export(network, bob["did"], 5)


# -- the writer's multi-row statements, and the export's snapshot -----------------------------


def _post_value(text: str) -> dict[str, Any]:
    return {"$type": POST, "text": text, "createdAt": CREATED}


async def test_multi_row_statements_in_small_chunks(tmp_path: Path, monkeypatch: Any) -> None:
    """Rows split over several statements (a tiny chunk size) land exactly as one would."""
    monkeypatch.setattr(writer_module, "_SQL_ROWS", 3)
    db = PdsDatabase(tmp_path / "pds.sqlite")
    writer = Writer(db)
    await writer.start()
    try:
        did, key = "did:plc:ewvi7nxzyoun6zhxrhs64oiz", PrivateKey.generate("k256")
        first = [Write.create(POST, f"r{i:04d}", _post_value(f"p{i}")) for i in range(40)]
        await writer.submit(lambda w: w.create_repo(did, key, first))
        edits = [Write.update(POST, f"r{i:04d}", _post_value(f"e{i}")) for i in range(0, 40, 2)]
        edits += [Write.delete(POST, f"r{i:04d}") for i in range(1, 40, 4)]

        def emit_many(w: WriteContext) -> None:  # one batch, more events than a chunk
            for i in range(7):
                w.event(did, "#identity", {"did": did, "handle": f"h{i}.test"})

        jobs = [writer.submit(lambda w: w.commit(did, key, edits)), writer.submit(emit_many)]
        await asyncio.gather(*jobs)
        head = db.repo_root(did)
        assert head is not None
        repo = Repo.load(AccountBlocks(db, did), head[0], did=did)
        live = {head[0]} | {node.cid for node in repo.tree.nodes()} | {cid for _, cid in repo.tree}
        with sqlite3.connect(db.path) as conn:
            stored = {CID.from_bytes(r[0]) for r in conn.execute("SELECT cid FROM block")}
            seqs = [r[0] for r in conn.execute("SELECT seq FROM event ORDER BY seq")]
        assert stored == live
        assert repo.tree.count() == 30
        assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) == 2 + 7
    finally:
        await writer.stop()
        db.close()


async def test_whole_repo_export_is_one_revision(tmp_path: Path) -> None:
    """The range-scan export keeps reading its snapshot while the writer deletes blocks."""
    db = PdsDatabase(tmp_path / "pds.sqlite")
    writer = Writer(db)
    await writer.start()
    try:
        did, key = "did:plc:ewvi7nxzyoun6zhxrhs64oiz", PrivateKey.generate("k256")
        first = [Write.create(POST, f"r{i:04d}", _post_value(f"p{i}")) for i in range(1500)]
        await writer.submit(lambda w: w.create_repo(did, key, first[:200]))
        for start in range(200, 1500, 200):
            await writer.submit(lambda w, s=start: w.commit(did, key, first[s : s + 200]))
        with db.snapshot() as snapshot:
            head = snapshot.repo_root(did)
            assert head is not None
            chunks = _whole_repo(snapshot, did, head[0])
            car = next(chunks)
            edits = [Write.update(POST, w.rkey, _post_value("edited")) for w in first[:200]]
            await writer.submit(lambda w: w.commit(did, key, edits))
            assert db.get_block(did, head[0]) is None  # the old commit is gone for new readers
            car += b"".join(chunks)
        assert 1500 > EXPORT_BATCH_ROWS  # several fetches from the snapshot
        summary = verify_car(car, did=did, key=key.public_key)
        assert summary.commit_cid == head[0] and summary.records == 1500
    finally:
        await writer.stop()
        db.close()
