"""com.atproto.repo.importRepo over a real PDS and PLC on loopback."""

from __future__ import annotations

import sqlite3
from typing import Any

import httpx

from roost import cbor
from roost.blockstore import MemoryBlockStore
from roost.car import car_bytes
from roost.cid import CID
from roost.commit import sign_commit
from roost.crypto import PrivateKey, PublicKey
from roost.identity import DidDocument
from roost.mst import key_height
from roost.repo import Repo, verify_car
from tests.pds.conftest import Network, firehose_events

POST = "app.bsky.feed.post"
CREATED = "2024-05-01T12:00:00.000Z"
CAR = "application/vnd.ipld.car"


def post(text: str, **extra: Any) -> dict[str, Any]:
    return {"$type": POST, "text": text, "createdAt": CREATED, **extra}


def import_car_bytes(net: Network, session: dict[str, Any], body: bytes) -> httpx.Response:
    headers = {**net.auth(session), "Content-Type": CAR}
    return net.http.post(net.xrpc("com.atproto.repo.importRepo"), content=body, headers=headers)


def get_repo(net: Network, did: str) -> bytes:
    r = net.http.get(net.xrpc("com.atproto.sync.getRepo"), params={"did": did})
    assert r.status_code == 200, r.text
    return r.content


def signing_key(net: Network, did: str) -> PublicKey:
    doc = DidDocument.parse(net.http.get(f"{net.plc_url}/{did}").json(), did=did)
    assert doc.signing_key is not None
    return doc.signing_key


def list_records(net: Network, did: str) -> list[dict[str, Any]]:
    r = net.http.get(
        net.xrpc("com.atproto.repo.listRecords"),
        params={"repo": did, "collection": POST, "limit": 100},
    )
    assert r.status_code == 200, r.text
    return r.json()["records"]  # type: ignore[no-any-return]


def account_key(net: Network, did: str) -> PrivateKey:
    """The account's signing key as the PDS keeps it (a key the DID holds)."""
    conn = sqlite3.connect(net.config.data_dir / "pds.sqlite")
    try:
        (hex_key,) = conn.execute("SELECT signing_key FROM account WHERE did = ?", (did,)).fetchone()
    finally:
        conn.close()
    return PrivateKey.from_hex(hex_key, "k256")


def build_repo(
    did: str, texts: list[str], key: PrivateKey, blob: CID | None = None
) -> tuple[bytes, Repo]:
    """A repo for ``did`` signed by ``key``."""
    records = []
    for i, text in enumerate(texts):
        extra: dict[str, Any] = {}
        if blob is not None and i == 0:
            extra["embed"] = {
                "$type": "app.bsky.embed.images",
                "images": [
                    {
                        "alt": "",
                        "image": {"$type": "blob", "ref": blob, "mimeType": "image/png", "size": 10},
                    }
                ],
            }
        records.append((f"{POST}/3k{i:011d}", post(text, **extra)))
    records.sort()
    store = MemoryBlockStore()
    repo = Repo.create_from_records(store, did, key, records)
    return b"".join(repo.export_car()), repo


def test_import_repo(network: Network) -> None:
    bob = network.create_account("bob")
    did = bob["did"]
    car, source = build_repo(did, [f"imported {i}" for i in range(30)], account_key(network, did))
    r = import_car_bytes(network, bob, car)
    assert r.status_code == 200, r.text

    records = list_records(network, did)
    assert len(records) == 30
    assert {rec["value"]["text"] for rec in records} == {f"imported {i}" for i in range(30)}
    for rec in records:
        rkey = rec["uri"].rsplit("/", 1)[1]
        assert rec["cid"] == str(source.get_record_cid(POST, rkey))

    # the head is re-signed by this PDS with the account's key, same data, newer rev
    exported = get_repo(network, did)
    summary = verify_car(exported, did=did, key=signing_key(network, did))
    assert summary.signature_checked and summary.records == 30
    assert summary.data_cid == source.commit.data
    assert summary.rev > source.rev

    events = firehose_events(network.pds_url, "#sync")
    assert [e["rev"] for e in events if e["did"] == did][-1] == summary.rev

    # the next write builds on the imported repo
    w = network.http.post(
        network.xrpc("com.atproto.repo.createRecord"),
        json={"repo": did, "collection": POST, "record": post("after import")},
        headers=network.auth(bob),
    )
    assert w.status_code == 200, w.text
    assert len(list_records(network, did)) == 31
    after = verify_car(get_repo(network, did), did=did, key=signing_key(network, did))
    assert after.records == 31 and after.rev > summary.rev

    # importing again is harmless: the repo is the imported one again
    r = import_car_bytes(network, bob, car)
    assert r.status_code == 200, r.text
    assert len(list_records(network, did)) == 30


def test_import_tracks_missing_blobs(network: Network) -> None:
    bob = network.create_account("bob")
    did = bob["did"]
    blob = CID.for_raw(b"an image never uploaded here")
    car, _ = build_repo(did, ["with image", "plain"], account_key(network, did), blob=blob)
    r = import_car_bytes(network, bob, car)
    assert r.status_code == 200, r.text
    missing = network.http.get(
        network.xrpc("com.atproto.repo.listMissingBlobs"), headers=network.auth(bob)
    )
    assert missing.status_code == 200, missing.text
    assert [b["cid"] for b in missing.json()["blobs"]] == [str(blob)]


def _tamper(car: bytes) -> bytes:
    """``car`` with one byte of its last block (a record) changed."""
    return car[:-3] + bytes([car[-3] ^ 0x01]) + car[-2:]


def _unchanged(network: Network, did: str, before: bytes, response: httpx.Response) -> None:
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "InvalidRequest"
    assert get_repo(network, did) == before


def test_import_rejections_change_nothing(network: Network) -> None:
    alice = network.create_account("alice")
    bob = network.create_account("bob")
    did = bob["did"]
    w = network.http.post(
        network.xrpc("com.atproto.repo.createRecord"),
        json={"repo": did, "collection": POST, "record": post("bob's own")},
        headers=network.auth(bob),
    )
    assert w.status_code == 200, w.text
    before = get_repo(network, did)

    key = account_key(network, did)
    # someone else's repo
    _unchanged(network, did, before, import_car_bytes(network, bob, get_repo(network, alice["did"])))
    car, _ = build_repo(alice["did"], ["not bob's"], account_key(network, alice["did"]))
    _unchanged(network, did, before, import_car_bytes(network, bob, car))
    # bob's DID, but signed by a key the DID never held
    forged, _ = build_repo(did, ["forged"], PrivateKey.generate("k256"))
    message = import_car_bytes(network, bob, forged)
    _unchanged(network, did, before, message)
    assert "not signed by a key of" in message.json()["message"]
    # a block that does not hash to its CID
    good, _ = build_repo(did, ["x", "y", "z"], key)
    _unchanged(network, did, before, import_car_bytes(network, bob, _tamper(good)))
    # not a CAR at all, or cut short
    _unchanged(network, did, before, import_car_bytes(network, bob, b"this is not a car"))
    _unchanged(network, did, before, import_car_bytes(network, bob, good[: len(good) // 2]))

    # a non-canonical MST: prefix compression not maximal
    keys = [k for k in (f"{POST}/3k{i:011d}" for i in range(50)) if key_height(k) == 0][:2]
    record = cbor.encode(post("r"))
    record_cid = CID.for_cbor_bytes(record)
    node = cbor.encode(
        {
            "l": None,
            "e": [{"p": 0, "k": k.encode(), "v": record_cid, "t": None} for k in keys],
        }
    )
    node_cid = CID.for_cbor_bytes(node)
    commit = sign_commit(did, node_cid, "3kaaaaaaaaa22", key)
    bad = car_bytes(
        [commit.cid], {commit.cid: commit.block, node_cid: node, record_cid: record}
    )
    _unchanged(network, did, before, import_car_bytes(network, bob, bad))

    # unauthenticated
    r = network.http.post(
        network.xrpc("com.atproto.repo.importRepo"), content=good, headers={"Content-Type": CAR}
    )
    assert r.status_code == 401
    assert get_repo(network, did) == before
