"""Blobs over a real PDS and PLC on loopback: uploadBlob, record references,
getBlob, listBlobs, listMissingBlobs and the orphan clean-up."""

from __future__ import annotations

import base64
import os
import sqlite3
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pds.api.repo import collect_blob_garbage
from pds.blobstore import account_dirname
from roost.cid import CID
from tests.pds.conftest import Network, error, ok, running_network

POST = "app.bsky.feed.post"
PROFILE = "app.bsky.actor.profile"
CREATED = "2024-05-01T12:00:00.000Z"
#: Upload limit of the PDS under test (small, to test the limit cheaply).
MAX_BLOB = 1_500_000


def png(width: int = 2, height: int = 2, seed: int = 0) -> bytes:
    """A small valid PNG (8-bit RGB, one IDAT chunk); ``seed`` varies the pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    rows = b"".join(
        b"\x00" + bytes((x * 40 + y * 70 + seed) % 256 for x in range(width * 3))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


# -- a network whose PDS has a small upload limit and a clean-up trigger ----------------------


async def _gc_route(request: Request) -> Response:
    grace = float(request.query_params.get("grace", "0"))
    stats = await collect_blob_garbage(request.app.state.pds, grace_s=grace)
    return JSONResponse(stats)


def _add_gc_route(app: Starlette) -> None:
    # test hook: run a clean-up pass in the server's loop (the admin API's job)
    app.router.routes.insert(0, Route("/test/blob-gc", _gc_route, methods=["POST"]))


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    with running_network(tmp_path, customize=_add_gc_route, max_blob_bytes=MAX_BLOB) as network:
        yield network


@pytest.fixture
def alice(net: Network) -> dict[str, Any]:
    return net.create_account("alice")


# -- helpers ----------------------------------------------------------------------------------


def upload(
    net: Network, session: dict[str, Any], data: bytes, mime: str = "image/png"
) -> httpx.Response:
    headers = {**net.auth(session), "Content-Type": mime}
    return net.http.post(net.xrpc("com.atproto.repo.uploadBlob"), content=data, headers=headers)


def uploaded(
    net: Network, session: dict[str, Any], data: bytes, mime: str = "image/png"
) -> dict[str, Any]:
    blob: dict[str, Any] = ok(upload(net, session, data, mime))["blob"]
    return blob


def image_post(text: str, *blobs: dict[str, Any]) -> dict[str, Any]:
    return {
        "$type": POST,
        "text": text,
        "createdAt": CREATED,
        "embed": {
            "$type": "app.bsky.embed.images",
            "images": [{"image": b, "alt": f"image {i}"} for i, b in enumerate(blobs)],
        },
    }


def create(
    net: Network, session: dict[str, Any], record: dict[str, Any], **extra: Any
) -> httpx.Response:
    body = {"repo": session["did"], "collection": record["$type"], "record": record, **extra}
    return net.http.post(
        net.xrpc("com.atproto.repo.createRecord"), json=body, headers=net.auth(session)
    )


def put(
    net: Network,
    session: dict[str, Any],
    collection: str,
    rkey: str,
    record: dict[str, Any],
    **extra: Any,
) -> httpx.Response:
    body = {"repo": session["did"], "collection": collection, "rkey": rkey, "record": record}
    return net.http.post(
        net.xrpc("com.atproto.repo.putRecord"), json={**body, **extra}, headers=net.auth(session)
    )


def delete(net: Network, session: dict[str, Any], uri: str) -> dict[str, Any]:
    _, _, did, collection, rkey = uri.split("/")
    body = {"repo": did, "collection": collection, "rkey": rkey}
    url = net.xrpc("com.atproto.repo.deleteRecord")
    return ok(net.http.post(url, json=body, headers=net.auth(session)))


def get_blob(net: Network, did: str, cid: str, **headers: str) -> httpx.Response:
    return net.http.get(
        net.xrpc("com.atproto.sync.getBlob"), params={"did": did, "cid": cid}, headers=headers
    )


def list_blobs(net: Network, did: str, **params: Any) -> dict[str, Any]:
    return ok(net.http.get(net.xrpc("com.atproto.sync.listBlobs"), params={"did": did, **params}))


def head(net: Network, did: str) -> dict[str, Any]:
    return ok(net.http.get(net.xrpc("com.atproto.sync.getLatestCommit"), params={"did": did}))


def link(blob: dict[str, Any]) -> str:
    return blob["ref"]["$link"]  # type: ignore[no-any-return]


def blob_file(net: Network, did: str, cid: str) -> Path:
    return net.config.blob_dir / "accounts" / account_dirname(did) / cid


def temp_files(net: Network) -> list[str]:
    return sorted(os.listdir(net.config.blob_dir / "tmp"))


def sql(net: Network, statement: str, *params: Any) -> list[Any]:
    with sqlite3.connect(net.config.database_path) as conn:
        return conn.execute(statement, params).fetchall()


def gc(net: Network, grace: float = 0) -> dict[str, int]:
    return ok(net.http.post(f"{net.pds_url}/test/blob-gc", params={"grace": grace}))


# -- the main path ----------------------------------------------------------------------------


def test_upload_post_get_and_list(net: Network, alice: dict[str, Any]) -> None:
    did = alice["did"]
    data = png(seed=1)
    blob = uploaded(net, alice, data)
    assert blob == {
        "$type": "blob",
        "ref": {"$link": str(CID.for_raw(data))},
        "mimeType": "image/png",
        "size": len(data),
    }
    cid = link(blob)
    # a temporary upload is not served and not listed
    error(get_blob(net, did, cid), 400, "BlobNotFound")
    assert list_blobs(net, did) == {"cids": []}

    created = ok(create(net, alice, image_post("look", blob)))
    assert created["validationStatus"] == "valid"

    full = get_blob(net, did, cid)
    assert full.status_code == 200
    assert full.content == data
    assert full.headers["content-type"] == "image/png"
    assert full.headers["content-length"] == str(len(data))
    assert full.headers["x-content-type-options"] == "nosniff"
    assert full.headers["content-security-policy"] == "default-src 'none'; sandbox"

    part = get_blob(net, did, cid, Range="bytes=0-9")
    assert part.status_code == 206
    assert part.content == data[:10]
    assert part.headers["content-range"] == f"bytes 0-9/{len(data)}"
    tail = get_blob(net, did, cid, Range="bytes=-4")
    assert tail.status_code == 206 and tail.content == data[-4:]

    etag = full.headers["etag"]
    cached = get_blob(net, did, cid, **{"If-None-Match": etag})
    assert cached.status_code == 304 and cached.content == b""
    probe = net.http.head(net.xrpc("com.atproto.sync.getBlob"), params={"did": did, "cid": cid})
    assert probe.status_code == 200 and probe.content == b""
    assert probe.headers["content-length"] == str(len(data))

    assert list_blobs(net, did) == {"cids": [cid]}
    # the record reads back with its blob reference
    rkey = created["uri"].rsplit("/", 1)[1]
    record = ok(
        net.http.get(
            net.xrpc("com.atproto.repo.getRecord"),
            params={"repo": did, "collection": POST, "rkey": rkey},
        )
    )
    assert record["value"]["embed"]["images"][0]["image"] == blob
    assert blob_file(net, did, cid).read_bytes() == data
    assert temp_files(net) == []


def test_get_blob_errors(net: Network, alice: dict[str, Any]) -> None:
    did = alice["did"]
    unknown = str(CID.for_raw(b"never uploaded"))
    error(get_blob(net, did, unknown), 400, "BlobNotFound")
    error(get_blob(net, "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", unknown), 400, "RepoNotFound")
    response = get_blob(net, did, "not-a-cid")
    assert response.status_code == 400


def test_upload_needs_auth(net: Network, alice: dict[str, Any]) -> None:
    url = net.xrpc("com.atproto.repo.uploadBlob")
    response = net.http.post(url, content=png(), headers={"Content-Type": "image/png"})
    assert response.status_code == 401


def test_list_blobs_pages_and_since(net: Network, alice: dict[str, Any]) -> None:
    did = alice["did"]
    first = [uploaded(net, alice, png(seed=i)) for i in range(3)]
    ok(create(net, alice, image_post("three", *first)))
    rev = head(net, did)["rev"]
    later = uploaded(net, alice, png(seed=99))
    ok(create(net, alice, image_post("one more", later)))

    every = sorted(link(b) for b in [*first, later])
    assert list_blobs(net, did)["cids"] == every
    page1 = list_blobs(net, did, limit=3)
    assert page1["cids"] == every[:3]
    page2 = list_blobs(net, did, limit=3, cursor=page1["cursor"])
    assert page2 == {"cids": every[3:]}
    assert list_blobs(net, did, since=rev) == {"cids": [link(later)]}


# -- limits and bad references ----------------------------------------------------------------


def test_upload_over_the_limit_is_refused(net: Network, alice: dict[str, Any]) -> None:
    big = png() + b"\x00" * MAX_BLOB
    # declared length over the limit: refused before reading
    error(upload(net, alice, big), 413, "PayloadTooLarge")

    def stream() -> Iterator[bytes]:  # chunked: no length declared, refused while streaming
        for i in range(0, len(big), 64 * 1024):
            yield big[i : i + 64 * 1024]

    headers = {**net.auth(alice), "Content-Type": "image/png"}
    response = net.http.post(
        net.xrpc("com.atproto.repo.uploadBlob"), content=stream(), headers=headers
    )
    error(response, 413, "PayloadTooLarge")
    assert temp_files(net) == []
    assert sql(net, "SELECT COUNT(*) FROM blob") == [(0,)]
    # exactly at the limit is fine
    exact = big[:MAX_BLOB]
    assert uploaded(net, alice, exact)["size"] == MAX_BLOB


def test_reference_to_a_blob_never_uploaded_changes_nothing(
    net: Network, alice: dict[str, Any]
) -> None:
    did = alice["did"]
    before = head(net, did)
    ghost = {
        "$type": "blob",
        "ref": {"$link": str(CID.for_raw(b"ghost"))},
        "mimeType": "image/png",
        "size": 5,
    }
    message = error(create(net, alice, image_post("nope", ghost)), 400, "BlobNotFound")
    assert link(ghost) in message
    real = uploaded(net, alice, png(seed=3))
    # one good and one missing: the whole write fails, the good one stays temporary
    error(create(net, alice, image_post("nope", real, ghost)), 400, "BlobNotFound")
    # applyWrites too
    writes = [
        {
            "$type": "com.atproto.repo.applyWrites#create",
            "collection": POST,
            "value": image_post("x", ghost),
        }
    ]
    response = net.http.post(
        net.xrpc("com.atproto.repo.applyWrites"),
        json={"repo": did, "writes": writes},
        headers=net.auth(alice),
    )
    error(response, 400, "BlobNotFound")
    assert head(net, did) == before
    records = ok(
        net.http.get(
            net.xrpc("com.atproto.repo.listRecords"), params={"repo": did, "collection": POST}
        )
    )
    assert records["records"] == []
    assert list_blobs(net, did) == {"cids": []}
    error(get_blob(net, did, link(real)), 400, "BlobNotFound")
    assert sql(net, "SELECT COUNT(*) FROM record_blob") == [(0,)]


def test_blobs_of_another_account_are_not_yours(net: Network, alice: dict[str, Any]) -> None:
    bob = net.create_account("bob")
    blob = uploaded(net, bob, png(seed=4))
    error(create(net, alice, image_post("mine?", blob)), 400, "BlobNotFound")
    # the same bytes uploaded by alice are hers, independently of bob's copy
    mine = uploaded(net, alice, png(seed=4))
    assert mine == blob
    ok(create(net, alice, image_post("mine", mine)))
    assert get_blob(net, alice["did"], link(mine)).status_code == 200
    error(get_blob(net, bob["did"], link(blob)), 400, "BlobNotFound")


def test_reference_must_match_the_stored_blob(net: Network, alice: dict[str, Any]) -> None:
    did = alice["did"]
    blob = uploaded(net, alice, png(seed=5))
    wrong_mime = {**blob, "mimeType": "image/jpeg"}
    error(create(net, alice, image_post("x", wrong_mime)), 400, "InvalidMimeType")
    wrong_size = {**blob, "size": blob["size"] + 1}
    error(create(net, alice, image_post("x", wrong_size)), 400, "InvalidSize")
    # skipping the lexicon does not skip the check against the stored blob
    error(create(net, alice, image_post("x", wrong_size), validate=False), 400, "InvalidSize")
    assert list_blobs(net, did) == {"cids": []}
    ok(create(net, alice, image_post("right", blob)))


def test_lexicon_accept_and_max_size_are_enforced(net: Network, alice: dict[str, Any]) -> None:
    # profile avatars: image/png or image/jpeg, at most 1,000,000 bytes
    gif = uploaded(net, alice, b"GIF89a" + b"\x01\x00\x01\x00" + b"\x00" * 20, "image/gif")
    assert gif["mimeType"] == "image/gif"
    profile = {"$type": PROFILE, "displayName": "Alice", "avatar": gif}
    message = error(put(net, alice, PROFILE, "self", profile), 400, "InvalidRequest")
    assert "avatar" in message
    big = uploaded(net, alice, png() + b"\x00" * 1_000_000)
    assert big["mimeType"] == "image/png" and big["size"] > 1_000_000
    profile["avatar"] = big
    message = error(put(net, alice, PROFILE, "self", profile), 400, "InvalidRequest")
    assert "avatar" in message
    # the uploaded bytes decide the stored type, not the declared Content-Type
    text = uploaded(net, alice, b"just some text", "image/png")
    assert text["mimeType"] == "image/png"  # not sniffable as anything stronger
    small = uploaded(net, alice, png(seed=6), "application/octet-stream")
    assert small["mimeType"] == "image/png"
    profile["avatar"] = small
    ok(put(net, alice, PROFILE, "self", profile))
    assert list_blobs(net, alice["did"]) == {"cids": [link(small)]}


# -- dereferencing ----------------------------------------------------------------------------


def test_deleting_the_post_deletes_the_blob(net: Network, alice: dict[str, Any]) -> None:
    did = alice["did"]
    blob = uploaded(net, alice, png(seed=7))
    cid = link(blob)
    uri = ok(create(net, alice, image_post("soon gone", blob)))["uri"]
    assert blob_file(net, did, cid).exists()
    delete(net, alice, uri)
    error(get_blob(net, did, cid), 400, "BlobNotFound")
    assert list_blobs(net, did) == {"cids": []}
    assert not blob_file(net, did, cid).exists()
    assert sql(net, "SELECT COUNT(*) FROM blob") == [(0,)]
    assert sql(net, "SELECT COUNT(*) FROM record_blob") == [(0,)]
    # the reference is dead now: it must be uploaded again
    error(create(net, alice, image_post("again", blob)), 400, "BlobNotFound")
    assert uploaded(net, alice, png(seed=7)) == blob
    ok(create(net, alice, image_post("again", blob)))
    assert get_blob(net, did, cid).content == png(seed=7)


def test_a_shared_blob_lives_while_any_record_uses_it(net: Network, alice: dict[str, Any]) -> None:
    did = alice["did"]
    blob = uploaded(net, alice, png(seed=8))
    cid = link(blob)
    first = ok(create(net, alice, image_post("one", blob)))["uri"]
    # the same bytes uploaded again after they became permanent: same blob, still permanent
    assert uploaded(net, alice, png(seed=8)) == blob
    assert temp_files(net) == []
    second = ok(create(net, alice, image_post("two", blob, blob)))["uri"]
    assert list_blobs(net, did) == {"cids": [cid]}
    delete(net, alice, first)
    assert get_blob(net, did, cid).status_code == 200
    assert list_blobs(net, did) == {"cids": [cid]}
    delete(net, alice, second)
    error(get_blob(net, did, cid), 400, "BlobNotFound")
    assert not blob_file(net, did, cid).exists()


def test_updating_a_record_swaps_its_blobs(net: Network, alice: dict[str, Any]) -> None:
    did = alice["did"]
    old = uploaded(net, alice, png(seed=9))
    new = uploaded(net, alice, png(seed=10))
    profile = {"$type": PROFILE, "displayName": "Alice", "avatar": old}
    ok(put(net, alice, PROFILE, "self", profile))
    assert list_blobs(net, did) == {"cids": [link(old)]}
    # keeping the avatar while changing the name keeps the blob
    ok(put(net, alice, PROFILE, "self", {**profile, "displayName": "Alice A."}))
    assert get_blob(net, did, link(old)).status_code == 200
    ok(put(net, alice, PROFILE, "self", {**profile, "avatar": new, "banner": new}))
    assert list_blobs(net, did) == {"cids": [link(new)]}
    error(get_blob(net, did, link(old)), 400, "BlobNotFound")
    assert get_blob(net, did, link(new)).content == png(seed=10)
    # a swap that fails changes nothing, blobs included
    newer = uploaded(net, alice, png(seed=11))
    response = put(
        net, alice, PROFILE, "self", {**profile, "avatar": newer}, swapRecord=None
    )
    error(response, 400, "InvalidSwap")
    assert list_blobs(net, did) == {"cids": [link(new)]}
    error(get_blob(net, did, link(newer)), 400, "BlobNotFound")


def test_apply_writes_moves_a_blob_between_records(net: Network, alice: dict[str, Any]) -> None:
    did = alice["did"]
    blob = uploaded(net, alice, png(seed=12))
    uri = ok(create(net, alice, image_post("first", blob)))["uri"]
    rkey = uri.rsplit("/", 1)[1]
    writes = [
        {"$type": "com.atproto.repo.applyWrites#delete", "collection": POST, "rkey": rkey},
        {
            "$type": "com.atproto.repo.applyWrites#create",
            "collection": POST,
            "value": image_post("moved", blob),
        },
    ]
    ok(
        net.http.post(
            net.xrpc("com.atproto.repo.applyWrites"),
            json={"repo": did, "writes": writes},
            headers=net.auth(alice),
        )
    )
    assert get_blob(net, did, link(blob)).status_code == 200
    assert list_blobs(net, did) == {"cids": [link(blob)]}
    paths = sql(net, "SELECT path FROM record_blob")
    assert len(paths) == 1 and paths[0][0] != f"{POST}/{rkey}"


def test_legacy_blob_references_are_found(net: Network, alice: dict[str, Any]) -> None:
    did = alice["did"]
    blob = uploaded(net, alice, png(seed=13))
    record = {
        "$type": "com.example.legacy",
        "createdAt": CREATED,
        "thing": {"cid": link(blob), "mimeType": "image/png"},
    }
    ok(create(net, alice, record))
    assert list_blobs(net, did) == {"cids": [link(blob)]}
    missing = {**record, "thing": {"cid": str(CID.for_raw(b"old")), "mimeType": "image/png"}}
    error(create(net, alice, missing), 400, "BlobNotFound")


# -- account status ---------------------------------------------------------------------------


def test_inactive_account_blobs_only_for_owner_and_admin(
    net: Network, alice: dict[str, Any]
) -> None:
    did = alice["did"]
    blob = uploaded(net, alice, png(seed=14))
    ok(create(net, alice, image_post("x", blob)))
    sql(net, "UPDATE account SET status = 'deactivated' WHERE did = ?", did)
    error(get_blob(net, did, link(blob)), 400, "RepoDeactivated")
    error(
        net.http.get(net.xrpc("com.atproto.sync.listBlobs"), params={"did": did}),
        400,
        "RepoDeactivated",
    )
    mine = get_blob(net, did, link(blob), **net.auth(alice))
    assert mine.status_code == 200 and mine.content == png(seed=14)
    assert "public" not in mine.headers["cache-control"]
    admin = "Basic " + base64.b64encode(b"admin:admin-secret").decode()
    assert get_blob(net, did, link(blob), Authorization=admin).status_code == 200
    # a deactivated account (one migrating in) may still upload
    assert uploaded(net, alice, png(seed=15))["size"] > 0
    sql(net, "UPDATE account SET status = 'takendown' WHERE did = ?", did)
    error(get_blob(net, did, link(blob)), 400, "RepoTakendown")


# -- imports: missing blobs -------------------------------------------------------------------


def test_list_missing_blobs_and_upload_after_import(net: Network, alice: dict[str, Any]) -> None:
    did = alice["did"]
    data = [png(seed=20 + i) for i in range(3)]
    cids = [CID.for_raw(d) for d in data]
    # an import indexes the references of its records before any blob arrives
    for i, cid in enumerate(cids):
        sql(
            net,
            "INSERT INTO record_blob (did, blob_cid, path) VALUES (?, ?, ?)",
            did,
            cid.bytes,
            f"{POST}/3kaaaaaaaaa{i}a",
        )
    url = net.xrpc("com.atproto.repo.listMissingBlobs")
    error(net.http.get(url), 401, "AuthMissing")
    everything = ok(net.http.get(url, headers=net.auth(alice)))
    expected = sorted(str(c) for c in cids)
    assert [b["cid"] for b in everything["blobs"]] == expected
    assert all(b["recordUri"].startswith(f"at://{did}/{POST}/") for b in everything["blobs"])
    page = ok(net.http.get(url, params={"limit": 2}, headers=net.auth(alice)))
    assert [b["cid"] for b in page["blobs"]] == expected[:2]
    params = {"limit": 2, "cursor": page["cursor"]}
    rest = ok(net.http.get(url, params=params, headers=net.auth(alice)))
    assert [b["cid"] for b in rest["blobs"]] == expected[2:] and "cursor" not in rest

    # uploading a referenced blob makes it permanent at once
    uploaded(net, alice, data[0])
    assert get_blob(net, did, str(cids[0])).content == data[0]
    left = ok(net.http.get(url, headers=net.auth(alice)))
    assert [b["cid"] for b in left["blobs"]] == sorted(str(c) for c in cids[1:])
    assert sql(net, "SELECT temp_key FROM blob WHERE did = ?", did) == [(None,)]
    assert gc(net)["expired"] == 0  # permanent: the clean-up leaves it alone
    assert get_blob(net, did, str(cids[0])).status_code == 200


# -- orphan clean-up and crash recovery -------------------------------------------------------


def test_cleanup_removes_unreferenced_uploads_only(net: Network, alice: dict[str, Any]) -> None:
    did = alice["did"]
    kept = uploaded(net, alice, png(seed=30))
    ok(create(net, alice, image_post("kept", kept)))
    orphan = uploaded(net, alice, png(seed=31))
    assert len(temp_files(net)) == 1
    # within the grace period nothing happens
    assert gc(net, grace=3600) == {"settled": 0, "expired": 0, "temp_files": 0, "orphan_files": 0}
    assert len(temp_files(net)) == 1
    stats = gc(net, grace=0)
    assert stats["expired"] == 1
    assert temp_files(net) == []
    rows = sql(net, "SELECT cid FROM blob WHERE did = ?", did)
    assert rows == [(CID.from_str(link(kept)).bytes,)]
    error(create(net, alice, image_post("too late", orphan)), 400, "BlobNotFound")
    assert get_blob(net, did, link(kept)).status_code == 200


def test_crash_between_move_and_commit_is_recovered(net: Network, alice: dict[str, Any]) -> None:
    """A file moved into place for a write that never committed: the row is still
    temporary. It is not served; a retried write finds it in place; else the
    clean-up removes row and file."""
    did = alice["did"]
    data = png(seed=40)
    blob = uploaded(net, alice, data)
    cid = link(blob)
    (name,) = temp_files(net)
    target = blob_file(net, did, cid)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(net.config.blob_dir / "tmp" / name, target)  # the move, then "the crash"
    error(get_blob(net, did, cid), 400, "BlobNotFound")
    # the retried write succeeds with the file already in place
    uri = ok(create(net, alice, image_post("retried", blob)))["uri"]
    assert get_blob(net, did, cid).content == data

    # the same situation never referenced again: cleaned up
    other = uploaded(net, alice, png(seed=41))
    (name,) = temp_files(net)
    target2 = blob_file(net, did, link(other))
    os.replace(net.config.blob_dir / "tmp" / name, target2)
    assert gc(net)["expired"] == 1
    assert not target2.exists()
    assert get_blob(net, did, cid).status_code == 200
    delete(net, alice, uri)


def test_cleanup_settles_referenced_temporary_blobs(net: Network, alice: dict[str, Any]) -> None:
    """A referenced blob whose row is still temporary (an upload cut short) is
    moved into place by the next clean-up pass."""
    did = alice["did"]
    data = png(seed=50)
    blob = uploaded(net, alice, data)
    cid = CID.from_str(link(blob))
    sql(
        net,
        "INSERT INTO record_blob (did, blob_cid, path) VALUES (?, ?, ?)",
        did,
        cid.bytes,
        f"{POST}/3kaaaaaaaaaaa",
    )
    error(get_blob(net, did, str(cid)), 400, "BlobNotFound")
    assert gc(net, grace=3600)["settled"] == 1
    assert get_blob(net, did, str(cid)).content == data
    assert temp_files(net) == []


def test_cleanup_sweeps_permanent_files_without_a_row(net: Network, alice: dict[str, Any]) -> None:
    """A crash between a delete's commit and the file's removal leaves a file
    with no row: the disk sweep removes it."""
    did = alice["did"]
    kept = uploaded(net, alice, png(seed=60))
    ok(create(net, alice, image_post("kept", kept)))
    stray = blob_file(net, did, str(CID.for_raw(b"stray")))
    stray.write_bytes(b"stray")
    assert gc(net)["orphan_files"] == 1
    assert not stray.exists()
    assert blob_file(net, did, link(kept)).exists()
