"""com.atproto.sync.*: exports, proofs, blocks and hosting status of a real PDS."""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from pds.api.sync import _SnapshotBlocks
from pds.sqlite import PdsDatabase
from pds.writer import Writer
from roost import cbor
from roost.blockstore import MemoryBlockStore
from roost.car import read_car, read_car_single_root
from roost.cid import CID
from roost.commit import Commit
from roost.crypto import PrivateKey, PublicKey
from roost.identity import DidDocument
from roost.mst import MST, NodeStore
from roost.repo import Repo, Write, verify_car, verify_repo
from tests.pds.conftest import Network

POST = "app.bsky.feed.post"
APPLY = "com.atproto.repo.applyWrites"
CREATED = "2024-05-01T12:00:00.000Z"
NOBODY = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"


def post(text: str) -> dict[str, Any]:
    return {"$type": POST, "text": text, "createdAt": CREATED}


def ok(response: httpx.Response) -> httpx.Response:
    assert response.status_code == 200, response.text
    return response


def error(response: httpx.Response, status: int, name: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"] == name, response.text


def sync(
    net: Network, nsid: str, headers: Mapping[str, str] | None = None, **params: Any
) -> httpx.Response:
    return net.http.get(net.xrpc(f"com.atproto.sync.{nsid}"), params=params, headers=headers or {})


def write(net: Network, session: dict[str, Any], writes: list[dict[str, Any]]) -> dict[str, Any]:
    response = net.http.post(
        net.xrpc(APPLY), json={"repo": session["did"], "writes": writes}, headers=net.auth(session)
    )
    return ok(response).json()  # type: ignore[no-any-return]


def creates(texts: list[str]) -> list[dict[str, Any]]:
    return [{"$type": f"{APPLY}#create", "collection": POST, "value": post(t)} for t in texts]


def signing_key(net: Network, did: str) -> PublicKey:
    doc = DidDocument.parse(ok(net.http.get(f"{net.plc_url}/{did}")).json(), did=did)
    assert doc.signing_key is not None
    return doc.signing_key


def set_status(net: Network, did: str, status: str) -> None:
    """Stand-in for the admin/account-status endpoints: flip the row directly."""
    with sqlite3.connect(net.config.database_path) as conn:
        conn.execute("UPDATE account SET status = ? WHERE did = ?", (status, did))


@pytest.fixture
def alice(network: Network) -> dict[str, Any]:
    session = network.create_account("alice")
    out = write(network, session, creates([f"post {i}" for i in range(40)]))
    session["records"] = {r["uri"].split("/", 3)[3]: r["cid"] for r in out["results"]}
    return session


# -- getRepo ----------------------------------------------------------------------------------


def test_get_repo_verifies_against_the_plc_key(network: Network, alice: dict[str, Any]) -> None:
    did = alice["did"]
    response = ok(sync(network, "getRepo", did=did))
    assert response.headers["content-type"] == "application/vnd.ipld.car"
    key = signing_key(network, did)
    summary = verify_car(response.content, did=did, key=key)
    assert summary.signature_checked and summary.records == 40
    latest = ok(sync(network, "getLatestCommit", did=did)).json()
    assert latest == {"cid": str(summary.commit_cid), "rev": summary.rev}

    root, blocks = read_car_single_root(response.content)
    repo = Repo.load(MemoryBlockStore(blocks), root, did=did)
    assert {path: str(cid) for path, cid in repo.tree} == alice["records"]
    for cid in alice["records"].values():
        record = cbor.decode(blocks[CID.from_str(cid)])
        assert record["$type"] == POST and record["text"].startswith("post ")
    # a key that is not the account's fails verification
    other = PrivateKey.generate("k256").public_key
    with pytest.raises(Exception, match="signature"):
        verify_car(response.content, did=did, key=other)


def test_get_repo_since_is_a_diff(network: Network, alice: dict[str, Any]) -> None:
    did = alice["did"]
    old_car = ok(sync(network, "getRepo", did=did)).content
    since = ok(sync(network, "getLatestCommit", did=did)).json()["rev"]
    gone = next(iter(alice["records"]))
    out = write(
        network,
        alice,
        [
            *creates(["fresh one", "fresh two"]),
            {"$type": f"{APPLY}#delete", "collection": POST, "rkey": gone.split("/")[1]},
        ],
    )
    diff = ok(sync(network, "getRepo", did=did, since=since)).content
    root, blocks = read_car_single_root(diff)
    assert root == CID.from_str(out["commit"]["cid"])
    for result in out["results"][:2]:
        assert CID.from_str(result["cid"]) in blocks
    untouched = CID.from_str(list(alice["records"].values())[-1])
    assert untouched not in blocks and CID.from_str(alice["records"][gone]) not in blocks
    assert len(blocks) < 20
    # the old export plus the diff is the whole new repo
    _, old_blocks = read_car_single_root(old_car)
    store = MemoryBlockStore({**old_blocks, **blocks})
    summary = verify_repo(store, root, did=did, key=signing_key(network, did))
    assert summary.records == 41
    # nothing new since the head: the commit alone
    root, blocks = read_car_single_root(
        ok(sync(network, "getRepo", did=did, since=out["commit"]["rev"])).content
    )
    assert list(blocks) == [root]
    assert sync(network, "getRepo", did=did, since="not-a-tid").status_code == 400

    # a new record whose content an older record already has: its block is older than
    # `since`, yet the diff must carry it (every created record is in a diff)
    since = out["commit"]["rev"]
    copy = write(network, alice, creates(["post 5"]))["results"][0]
    assert copy["cid"] in alice["records"].values()
    _, blocks = read_car_single_root(ok(sync(network, "getRepo", did=did, since=since)).content)
    assert CID.from_str(copy["cid"]) in blocks


async def test_export_sees_one_revision_while_the_account_writes(tmp_path: Path) -> None:
    """The writer deletes the old tree's blocks; a streaming export must not notice."""
    db = PdsDatabase(tmp_path / "pds.sqlite")
    writer = Writer(db)
    await writer.start()
    try:
        did, key = "did:plc:ewvi7nxzyoun6zhxrhs64oiz", PrivateKey.generate("k256")
        first = [Write.create(POST, f"r{i:04d}", post(f"p{i}")) for i in range(150)]
        await writer.submit(lambda w: w.create_repo(did, key, first))
        with db.snapshot() as snapshot:
            head = snapshot.repo_root(did)
            assert head is not None
            chunks = Repo.load(_SnapshotBlocks(snapshot, did), head[0], did=did).export_car()
            start = next(chunks)
            edits = [Write.update(w.collection, w.rkey, post("edited")) for w in first]
            await writer.submit(lambda w: w.commit(did, key, edits))
            old_record = CID.for_cbor_bytes(cbor.encode(post("p7")))
            assert db.get_block(did, old_record) is None  # really gone for new readers
            car = start + b"".join(chunks)
        summary = verify_car(car, did=did, key=key.public_key)
        assert summary.commit_cid == head[0] and summary.records == 150
    finally:
        await writer.stop()
        db.close()


# -- proofs and blocks ----------------------------------------------------------------------------


def test_get_record_proves_presence_and_absence(network: Network, alice: dict[str, Any]) -> None:
    did = alice["did"]
    key = signing_key(network, did)
    head = CID.from_str(ok(sync(network, "getLatestCommit", did=did)).json()["cid"])
    path, cid_text = list(alice["records"].items())[17]
    collection, rkey = path.split("/")
    cid = CID.from_str(cid_text)

    def proof(rkey: str) -> tuple[MST, dict[CID, bytes]]:
        response = ok(sync(network, "getRecord", did=did, collection=collection, rkey=rkey))
        assert response.headers["content-type"] == "application/vnd.ipld.car"
        root, blocks = read_car_single_root(response.content)
        assert root == head
        commit = Commit.decode(blocks[root], root)
        commit.check(key, did=did)
        return MST.load(NodeStore(MemoryBlockStore(blocks), verify=True), commit.data), blocks

    tree, blocks = proof(rkey)
    assert tree.get(path) == cid
    assert CID.for_cbor_bytes(blocks[cid]) == cid
    assert len(blocks) < 10  # a path, not the repo

    absent = "3jzfcijpj2z2a"
    tree, blocks = proof(absent)
    assert tree.get(f"{collection}/{absent}") is None
    nodes = [data for c, data in blocks.items() if c != head]
    assert nodes and all(data.startswith(b"\xa2ae") for data in nodes)  # MST nodes only

    error(
        sync(network, "getRecord", did=NOBODY, collection=collection, rkey=rkey),
        400,
        "RepoNotFound",
    )


def test_get_blocks(network: Network, alice: dict[str, Any]) -> None:
    did = alice["did"]
    wanted = [CID.from_str(c) for c in list(alice["records"].values())[:3]]
    head = CID.from_str(ok(sync(network, "getLatestCommit", did=did)).json()["cid"])
    response = ok(sync(network, "getBlocks", did=did, cids=[str(c) for c in [*wanted, head]]))
    roots, blocks = read_car(response.content, allow_no_roots=True)
    assert roots == [] and set(blocks) == {*wanted, head}
    missing = CID.for_cbor_bytes(cbor.encode({"never": "stored"}))
    error(
        sync(network, "getBlocks", did=did, cids=[str(wanted[0]), str(missing)]),
        400,
        "BlockNotFound",
    )
    # another account's block is not this account's
    bob = network.create_account("bob")
    error(sync(network, "getBlocks", did=bob["did"], cids=[str(wanted[0])]), 400, "BlockNotFound")
    error(sync(network, "getBlocks", did=NOBODY, cids=[str(wanted[0])]), 400, "RepoNotFound")
    assert sync(network, "getBlocks", did=did, cids=["nope"]).status_code == 400


# -- hosting status -------------------------------------------------------------------------------


def test_list_repos_pages(network: Network, alice: dict[str, Any]) -> None:
    others = [network.create_account(name) for name in ("bob", "carol")]
    dids = [alice["did"], *(o["did"] for o in others)]
    first = ok(sync(network, "listRepos", limit=2)).json()
    assert len(first["repos"]) == 2 and first["cursor"]
    second = ok(sync(network, "listRepos", limit=2, cursor=first["cursor"])).json()
    assert "cursor" not in second and len(second["repos"]) == 1
    repos = first["repos"] + second["repos"]
    assert [r["did"] for r in repos] == dids  # in creation order
    for repo in repos:
        latest = ok(sync(network, "getLatestCommit", did=repo["did"])).json()
        assert repo == {
            "did": repo["did"],
            "head": latest["cid"],
            "rev": latest["rev"],
            "active": True,
        }
    assert len(ok(sync(network, "listRepos")).json()["repos"]) == 3
    assert sync(network, "listRepos", limit=0).status_code == 400


def test_status_of_inactive_repos(network: Network, alice: dict[str, Any]) -> None:
    did = alice["did"]
    status = ok(sync(network, "getRepoStatus", did=did)).json()
    latest = ok(sync(network, "getLatestCommit", did=did)).json()
    assert status == {"did": did, "active": True, "rev": latest["rev"]}

    set_status(network, did, "deactivated")
    assert ok(sync(network, "getRepoStatus", did=did)).json() == {
        "did": did,
        "active": False,
        "status": "deactivated",
    }
    listed = ok(sync(network, "listRepos")).json()["repos"]
    assert listed[0]["active"] is False and listed[0]["status"] == "deactivated"
    cases: list[tuple[str, dict[str, Any]]] = [
        ("getRepo", {}),
        ("getLatestCommit", {}),
        ("getRecord", {"collection": POST, "rkey": "3jzfcijpj2z2a"}),
        ("getBlocks", {"cids": [latest["cid"]]}),
    ]
    for nsid, params in cases:
        error(sync(network, nsid, did=did, **params), 400, "RepoDeactivated")
    # the account itself and the operator still may
    ok(sync(network, "getRepo", headers=network.auth(alice), did=did))
    admin = base64.b64encode(b"admin:admin-secret").decode()
    ok(sync(network, "getLatestCommit", headers={"Authorization": f"Basic {admin}"}, did=did))
    wrong = base64.b64encode(b"admin:guess").decode()
    error(
        sync(network, "getRepo", headers={"Authorization": f"Basic {wrong}"}, did=did),
        401,
        "AuthenticationRequired",
    )

    set_status(network, did, "takendown")
    error(sync(network, "getRepo", did=did), 400, "RepoTakendown")
    assert ok(sync(network, "getRepoStatus", did=did)).json()["status"] == "takendown"
    set_status(network, did, "active")
    ok(sync(network, "getRepo", did=did))


def test_unknown_repos(network: Network) -> None:
    cases: list[tuple[str, dict[str, Any]]] = [
        ("getRepo", {}),
        ("getLatestCommit", {}),
        ("getRepoStatus", {}),
        ("getRecord", {"collection": POST, "rkey": "3jzfcijpj2z2a"}),
    ]
    for nsid, params in cases:
        error(sync(network, nsid, did=NOBODY, **params), 400, "RepoNotFound")
    assert sync(network, "getRepo", did="not-a-did").status_code == 400
    assert ok(sync(network, "listRepos")).json() == {"repos": []}
