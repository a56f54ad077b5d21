"""Account migration between two roost PDSes sharing one roost PLC directory,
driven over plain HTTP step by step as ``spec/account-migration.md`` section 4
describes (and section 5 for did:web), with the refusals of bad input on the way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pds.app import create_app as create_pds_app
from roost.blockstore import MemoryBlockStore
from roost.car import CarReader, car_bytes
from roost.commit import Commit, sign_commit
from roost.crypto import PrivateKey
from roost.identity import DidDocument
from roost.jwt import create_service_jwt
from roost.plc import parse_op, sign_op
from roost.repo import Repo, verify_car
from tests.pds.conftest import PASSWORD, Network, error, ok, running_network, stored_events
from tests.pds.test_blobs_api import png
from tests.servers import ServerThread, free_port

ADMIN = ("admin", "admin-secret")
POST = "app.bsky.feed.post"
LIKE = "app.bsky.feed.like"
PROFILE = "app.bsky.actor.profile"
CAR = "application/vnd.ipld.car"
CREATED = "2024-05-01T12:00:00.000Z"


@contextmanager
def second_pds(tmp: Path, first: Network, hostname: str, **overrides: Any) -> Iterator[Network]:
    """Another PDS on loopback, against the same PLC directory as ``first``
    (``overrides`` change its PdsConfig fields)."""
    port = free_port()
    config = replace(first.config, port=port, data_dir=tmp / hostname, hostname=hostname,
                     **overrides)
    server = ServerThread(create_pds_app(config), port=port)
    url = server.start()
    net = Network(first.plc_url, url, config, httpx.Client(timeout=30))
    try:
        yield net
    finally:
        net.http.close()
        server.stop()


def login(net: Network, identifier: str) -> dict[str, Any]:
    return ok(net.call("com.atproto.server.createSession", None,
                   identifier=identifier, password=PASSWORD))


def create(net: Network, session: dict[str, Any], collection: str, record: dict[str, Any],
           rkey: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"repo": session["did"], "collection": collection, "record": record}
    if rkey is not None:
        body["rkey"] = rkey
    return ok(net.call("com.atproto.repo.createRecord", session, **body))


def upload(net: Network, session: dict[str, Any], data: bytes, mime: str) -> dict[str, Any]:
    r = net.http.post(net.xrpc("com.atproto.repo.uploadBlob"), content=data,
                      headers={**net.auth(session), "Content-Type": mime})
    return ok(r)["blob"]  # type: ignore[no-any-return]


def import_car(net: Network, session: dict[str, Any], car: bytes) -> httpx.Response:
    return net.http.post(net.xrpc("com.atproto.repo.importRepo"), content=car,
                         headers={**net.auth(session), "Content-Type": CAR})


def records(net: Network, did: str, session: dict[str, Any] | None = None) -> dict[str, str]:
    """{uri: cid} of every record of the account (reads its repo CAR)."""
    r = net.query("com.atproto.sync.getRepo", session, did=did)
    reader = CarReader(ok_bytes(r))
    store = MemoryBlockStore()
    store.put_many(reader)
    repo = Repo.load(store, reader.roots[0])
    return {f"at://{did}/{path}": str(cid) for path, cid in repo.tree.items()}


def ok_bytes(response: httpx.Response) -> bytes:
    assert response.status_code == 200, response.text
    return response.content


def did_document(net: Network, did: str, web: dict[str, Any] | None = None) -> DidDocument:
    if web is not None:
        return DidDocument.parse(web, did=did)
    return DidDocument.parse(net.http.get(f"{net.plc_url}/{did}").json(), did=did)


def blob_cids(net: Network, did: str, session: dict[str, Any] | None = None) -> list[str]:
    """Every blob CID ``listBlobs`` gives for the account, page by page (duplicates kept)."""
    out: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"did": did, "limit": 1000, **({"cursor": cursor} if cursor else {})}
        page = ok(net.query("com.atproto.sync.listBlobs", session, **params))
        out += page["cids"]
        cursor = page.get("cursor")
        if not cursor or not page["cids"]:
            return out


def plc_ops(net: Network, did: str) -> list[dict[str, Any]]:
    """The DID's operation log in the directory (audit form), oldest first."""
    response = net.http.get(f"{net.plc_url}/{did}/log/audit")
    assert response.status_code == 200, response.text
    return list(response.json())


def active_hosts(*hosts: Network, did: str) -> list[str]:
    """The URLs of the hosts that answer for ``did`` as active."""
    return [net.pds_url for net in hosts
            if ok(net.query("com.atproto.sync.getRepoStatus", did=did))["active"]]


def check_content_moved(
    new: Network, session: dict[str, Any], before: dict[str, str], blobs_before: list[str],
    images: list[bytes],
) -> None:
    """Every record (same CIDs) and every blob (same bytes) on ``new``, each once."""
    did = session["did"]
    assert records(new, did) == before
    moved = blob_cids(new, did, session)
    assert len(moved) == len(set(moved)) and sorted(moved) == sorted(blobs_before)
    fetched = sorted(ok_bytes(new.query("com.atproto.sync.getBlob", did=did, cid=c))
                     for c in moved)
    assert fetched == sorted(images)
    check = ok(new.query("com.atproto.server.checkAccountStatus", session))
    assert check["indexedRecords"] == len(before)
    assert check["expectedBlobs"] == check["importedBlobs"] == len(images)


def populate(net: Network, session: dict[str, Any]) -> list[bytes]:
    """Posts, images, a profile with an avatar, a like, preferences; the blob bytes."""
    images = [png(3, 2, seed=s) for s in (1, 2, 3)]
    refs = [upload(net, session, data, "image/png") for data in images]
    create(net, session, PROFILE, {"$type": PROFILE, "displayName": "Alice", "avatar": refs[0]},
           rkey="self")
    first = None
    for i in range(6):
        out = create(net, session, POST, {"$type": POST, "text": f"post {i}", "createdAt": CREATED})
        first = first or out
    create(net, session, POST, {
        "$type": POST, "text": "pictures", "createdAt": CREATED,
        "embed": {"$type": "app.bsky.embed.images", "images": [
            {"alt": "one", "image": refs[1]}, {"alt": "two", "image": refs[2]}]},
    })
    assert first is not None
    subject = {"uri": first["uri"], "cid": first["cid"]}
    create(net, session, LIKE, {"$type": LIKE, "subject": subject, "createdAt": CREATED})
    prefs = [{"$type": "app.bsky.actor.defs#adultContentPref", "enabled": False}]
    ok(net.call("app.bsky.actor.putPreferences", session, preferences=prefs))
    return images


def migrate(
    old: Network,
    new: Network,
    old_session: dict[str, Any],
    new_handle: str,
    point_did_here: Callable[[dict[str, Any], dict[str, Any]], None],
    *,
    before_identity: Callable[[dict[str, Any]], None] = lambda session: None,
) -> dict[str, Any]:
    """The cooperative flow, steps 0-11; ``point_did_here(new_session, recommended)``
    changes the DID document (steps 8-9). Returns the session on the new host."""
    did = old_session["did"]
    # 0. the new host's service DID
    new_did = ok(new.query("com.atproto.server.describeServer"))["did"]
    # 1. a service-auth token from the old host
    token = ok(old.query("com.atproto.server.getServiceAuth", old_session,
                     aud=new_did, lxm="com.atproto.server.createAccount"))["token"]
    # 2. the account on the new host: deactivated, silent
    created = ok(new.http.post(
        new.xrpc("com.atproto.server.createAccount"),
        json={"did": did, "handle": new_handle, "email": "alice@new.example", "password": PASSWORD},
        headers={"Authorization": f"Bearer {token}"},
    ))
    assert created["did"] == did and created["roostStatus"] == "deactivated"
    session = created
    assert [e for e in stored_events(new) if e[1].get("did", e[1].get("repo")) == did] == []
    status = ok(new.query("com.atproto.sync.getRepoStatus", did=did))
    assert status == {"did": did, "active": False, "status": "deactivated"}
    # 3. the repository
    car = ok_bytes(old.query("com.atproto.sync.getRepo", did=did))
    ok(import_car(new, session, car))
    # 4. blobs, found through listMissingBlobs
    missing = ok(new.query("com.atproto.repo.listMissingBlobs", session))["blobs"]
    assert missing
    for item in missing:
        blob = old.query("com.atproto.sync.getBlob", did=did, cid=item["cid"])
        uploaded = upload(new, session, ok_bytes(blob), blob.headers["content-type"])
        assert uploaded["ref"]["$link"] == item["cid"]
    assert ok(new.query("com.atproto.repo.listMissingBlobs", session))["blobs"] == []
    # 5. preferences
    prefs = ok(old.query("app.bsky.actor.getPreferences", old_session))["preferences"]
    ok(new.call("app.bsky.actor.putPreferences", session, preferences=prefs))
    # 6. progress
    check = ok(new.query("com.atproto.server.checkAccountStatus", session))
    assert check["activated"] is False and check["validDid"] is False
    assert check["expectedBlobs"] == check["importedBlobs"] == len(missing)
    assert check["indexedRecords"] == len(records(old, did))
    before_identity(session)
    # 7-9. the DID document names the new host
    recommended = ok(new.query("com.atproto.identity.getRecommendedDidCredentials", session))
    point_did_here(session, recommended)
    assert ok(new.query("com.atproto.server.checkAccountStatus", session))["validDid"] is True
    # 10. activation on the new host
    ok(new.call("com.atproto.server.activateAccount", session))
    # 11. deactivation on the old host
    ok(old.call("com.atproto.server.deactivateAccount", old_session))
    return session


def check_moved(
    old: Network, new: Network, old_session: dict[str, Any], session: dict[str, Any],
    before: dict[str, str], images: list[bytes], doc: DidDocument,
) -> None:
    """What a finished migration guarantees (spec section 7), seen from outside."""
    did = session["did"]
    # the DID document points to the new host and its key
    assert doc.pds_endpoint == new.pds_url
    signing = ok(new.query("com.atproto.identity.getRecommendedDidCredentials", session))
    assert doc.signing_key is not None
    assert doc.signing_key.did_key() == signing["verificationMethods"]["atproto"]
    # the new host's repo verifies with that key and holds every record, same CIDs
    car = ok_bytes(new.query("com.atproto.sync.getRepo", did=did))
    summary = verify_car(car, did=did, key=doc.signing_key)
    assert summary.signature_checked
    assert records(new, did) == before
    # every blob, byte for byte
    cids = ok(new.query("com.atproto.sync.listBlobs", did=did))["cids"]
    fetched = sorted(ok_bytes(new.query("com.atproto.sync.getBlob", did=did, cid=c)) for c in cids)
    assert fetched == sorted(images)
    assert ok(new.query("app.bsky.actor.getPreferences", session))["preferences"] == [
        {"$type": "app.bsky.actor.defs#adultContentPref", "enabled": False}
    ]
    # the new host announced identity, account and a fresh commit signed with the new key
    types = [t for t, b in stored_events(new) if b.get("did", b.get("repo")) == did]
    assert types[-4:] == ["#account", "#identity", "#commit", "#sync"]
    commit_event = [b for t, b in stored_events(new) if t == "#commit" and b["repo"] == did][-1]
    blocks = dict(CarReader(commit_event["blocks"]))
    Commit.decode(blocks[commit_event["commit"]]).check(doc.signing_key, did=did)
    # the old host: deactivated, says so, and says it to the account holder
    last_type, last = stored_events(old)[-1]
    assert (last_type, last["did"], last["active"], last["status"]) == (
        "#account", did, False, "deactivated"
    )
    status = ok(old.query("com.atproto.sync.getRepoStatus", did=did))
    assert status == {"did": did, "active": False, "status": "deactivated"}
    error(old.query("com.atproto.sync.getRepo", did=did), 400, "RepoDeactivated")
    error(old.call("com.atproto.repo.createRecord", old_session, repo=did, collection=POST,
               record={"$type": POST, "text": "lost", "createdAt": CREATED}),
          401, "AccountDeactivated")
    assert ok(old.query("com.atproto.server.getSession", old_session))["status"] == "deactivated"
    assert ok(old.query("com.atproto.server.checkAccountStatus", old_session))["validDid"] is False
    # life goes on at the new host
    check = ok(new.query("com.atproto.server.checkAccountStatus", session))
    assert check["activated"] is True and check["validDid"] is True
    create(new, session, POST, {"$type": POST, "text": "hello from the new host",
                                "createdAt": CREATED})


# -- did:plc ------------------------------------------------------------------------------------


def test_migrate_plc_account(tmp_path: Path) -> None:
    with running_network(tmp_path) as old, second_pds(tmp_path, old, "pds2.test") as new:
        alice = old.create_account("alice")
        bob = old.create_account("bob")
        did = alice["did"]
        images = populate(old, alice)
        create(old, bob, "app.bsky.graph.follow", {
            "$type": "app.bsky.graph.follow", "subject": did, "createdAt": CREATED})
        before = records(old, did)
        old_commit = ok(old.query("com.atproto.sync.getLatestCommit", did=did))
        ops_before = len(plc_ops(old, did))

        def refusals(session: dict[str, Any]) -> None:
            """Bad input between the import and the PLC operation changes nothing."""
            repo_before = ok_bytes(new.query("com.atproto.sync.getRepo", session, did=did))
            status_before = ok(new.query("com.atproto.server.checkAccountStatus", session))
            car = ok_bytes(old.query("com.atproto.sync.getRepo", did=did))
            # a CAR for another DID (signed by that DID's key: a real export)
            other = ok_bytes(old.query("com.atproto.sync.getRepo", did=bob["did"]))
            message = error(import_car(new, session, other), 400, "InvalidRequest")
            assert bob["did"] in message and did in message
            # changed bytes in the last block; a record whose bytes no longer match its CID
            tampered = car[:-3] + bytes([car[-3] ^ 1]) + car[-2:]
            assert error(import_car(new, session, tampered), 400, "InvalidRequest").startswith(
                "Invalid repo CAR")
            message = error(import_car(new, session, _tamper_record(car)), 400, "InvalidRequest")
            assert "Invalid repo CAR" in message and "hash" in message.lower()
            # the same data under a commit signed by a key the DID never held
            message = error(import_car(new, session, _resign(car, PrivateKey.generate("k256"))),
                            400, "InvalidRequest")
            assert "not signed by a key of" in message
            assert ok_bytes(new.query("com.atproto.sync.getRepo", session, did=did)) == repo_before
            assert ok(new.query("com.atproto.server.checkAccountStatus", session)) == status_before
            # activating before the DID points here
            r = new.call("com.atproto.server.activateAccount", session)
            assert r.status_code == 400 and "rotation key" in r.json()["message"]
            assert r.json()["error"] == "InvalidRequest"
            assert ok(new.query("com.atproto.sync.getRepoStatus", did=did))["active"] is False
            # a PLC operation signed by a key that may not sign for the DID
            rotation = PrivateKey.generate("k256")
            recommended = ok(new.query("com.atproto.identity.getRecommendedDidCredentials",
                                   session))
            ok(old.call("com.atproto.identity.requestPlcOperationSignature", alice))
            token = _outbox_token(old, did)
            op = ok(old.call("com.atproto.identity.signPlcOperation", alice, token=token,
                         **recommended))["operation"]
            forged = sign_op(parse_op(op), rotation).to_json()
            r = new.call("com.atproto.identity.submitPlcOperation", session, operation=forged)
            assert r.status_code == 400 and "refused" in r.json()["message"]
            assert r.json()["error"] == "InvalidRequest"
            assert len(plc_ops(old, did)) == ops_before
            # a token is good once
            r = old.call("com.atproto.identity.signPlcOperation", alice, token=token)
            error(r, 400, "InvalidToken")
            # an operation that would not leave this host in charge
            unsafe = dict(op, services={"atproto_pds": {
                "type": "AtprotoPersonalDataServer", "endpoint": "https://elsewhere.example"}})
            r = new.call("com.atproto.identity.submitPlcOperation", session, operation=unsafe)
            assert r.status_code == 400 and "endpoint" in r.json()["message"]
            # both hosts unchanged: the DID still names the old one, nothing announced here
            assert did_document(old, did).pds_endpoint == old.pds_url
            assert not [e for e in stored_events(new) if e[1].get("did", e[1].get("repo")) == did]
            assert ok(old.query("com.atproto.sync.getLatestCommit", did=did)) == old_commit
            assert records(old, did) == before
            assert ok(old.query("com.atproto.sync.getRepoStatus", did=did))["active"] is True
            assert len(plc_ops(old, did)) == ops_before

        def plc_update(session: dict[str, Any], recommended: dict[str, Any]) -> None:
            # 8. the old host signs (after a token from its outbox), 9. the new one submits
            ok(old.call("com.atproto.identity.requestPlcOperationSignature", alice))
            token = _outbox_token(old, did)
            op = ok(old.call("com.atproto.identity.signPlcOperation", alice, token=token,
                         **recommended))["operation"]
            assert did_document(old, did).pds_endpoint == old.pds_url  # not submitted yet
            ok(new.call("com.atproto.identity.submitPlcOperation", session, operation=op))
            identity = [b for t, b in stored_events(new) if t == "#identity" and b["did"] == did]
            assert identity == [{**identity[0], "handle": "alice.pds2.test"}]

        session = migrate(old, new, alice, "alice.pds2.test", plc_update,
                          before_identity=refusals)
        doc = did_document(new, did)
        assert doc.handle == "alice.pds2.test"
        check_moved(old, new, alice, session, before, images, doc)
        # followers' records still point at the DID
        follows = ok(old.query("com.atproto.repo.listRecords", repo=bob["did"],
                           collection="app.bsky.graph.follow"))["records"]
        assert [f["value"]["subject"] for f in follows] == [did]
        # logging in again on the new host works by the new handle
        assert login(new, "alice.pds2.test")["active"] is True


def _resign(car: bytes, key: PrivateKey) -> bytes:
    """The CAR's blocks under a commit over the same data signed with ``key``."""
    reader = CarReader(car)
    blocks = dict(reader)
    root = reader.roots[0]
    commit = Commit.decode(blocks.pop(root), root)
    forged = sign_commit(commit.did, commit.data, commit.rev, key)
    return car_bytes([forged.cid], {forged.cid: forged.block, **blocks})


def _tamper_record(car: bytes) -> bytes:
    """The CAR with one post's text changed, its CID kept (the bytes no longer hash to it)."""
    reader = CarReader(car)
    blocks = dict(reader)
    for cid, block in blocks.items():
        if b"post 1" in block:
            blocks[cid] = block.replace(b"post 1", b"post X")
            return car_bytes(reader.roots, blocks)
    raise AssertionError("no post in the CAR")


def _outbox_token(net: Network, did: str) -> str:
    messages = ok(net.http.get(net.xrpc("org.roost.admin.listOutbox"), params={"did": did},
                               auth=ADMIN))["messages"]
    assert messages[0]["purpose"] == "plc_operation"
    return messages[0]["token"]  # type: ignore[no-any-return]


# -- did:web ------------------------------------------------------------------------------------


@contextmanager
def did_web_host() -> Iterator[tuple[str, dict[str, Any]]]:
    """A did:web on localhost whose ``did.json`` the test edits (the returned dict)."""
    document: dict[str, Any] = {}

    async def did_json(request: Request) -> Response:
        return JSONResponse(document)

    port = free_port()
    server = ServerThread(Starlette(routes=[Route("/.well-known/did.json", did_json)]), port=port)
    server.start()
    try:
        yield f"did:web:localhost%3A{port}", document
    finally:
        server.stop()


def _web_document(did: str, handle: str, key: str, endpoint: str) -> dict[str, Any]:
    return {
        "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"],
        "id": did,
        "alsoKnownAs": [f"at://{handle}"],
        "verificationMethod": [{
            "id": f"{did}#atproto", "type": "Multikey", "controller": did,
            "publicKeyMultibase": key.removeprefix("did:key:"),
        }],
        "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer",
                     "serviceEndpoint": endpoint}],
    }


def test_migrate_web_account(tmp_path: Path) -> None:
    with (
        running_network(tmp_path) as old,
        second_pds(tmp_path, old, "pds2.test") as new,
        did_web_host() as (did, document),
    ):
        # the holder's own key is in did.json; with it they sign a service-auth token
        # to bring the identity to the first host (account-migration.md section 5)
        own = PrivateKey.generate("k256")
        document.update(_web_document(did, "carol.pds.test", own.public_key.did_key(), old.pds_url))
        token = create_service_jwt(own, iss=did, aud=old.config.service_did,
                                   lxm="com.atproto.server.createAccount")
        carol = ok(old.http.post(
            old.xrpc("com.atproto.server.createAccount"),
            json={"did": did, "handle": "carol.pds.test", "password": PASSWORD},
            headers={"Authorization": f"Bearer {token}"},
        ))
        error(old.call("com.atproto.identity.requestPlcOperationSignature", carol),
              400, "InvalidRequest")
        first = ok(old.query("com.atproto.identity.getRecommendedDidCredentials", carol))
        document.update(_web_document(did, "carol.pds.test",
                                      first["verificationMethods"]["atproto"], old.pds_url))
        ok(old.call("com.atproto.server.activateAccount", carol))
        images = populate(old, carol)
        before = records(old, did)

        def edit_did_json(session: dict[str, Any], recommended: dict[str, Any]) -> None:
            document.update(_web_document(
                did, "carol.pds2.test", recommended["verificationMethods"]["atproto"],
                recommended["services"]["atproto_pds"]["endpoint"],
            ))

        session = migrate(old, new, carol, "carol.pds2.test", edit_did_json)
        check_moved(old, new, carol, session, before, images,
                    did_document(new, did, web=document))


@pytest.mark.parametrize(
    "operation",
    [{"type": "plc_operation"}, "not an op", {"type": "plc_tombstone", "prev": "x", "sig": "y"}],
    ids=["incomplete", "string", "tombstone"],
)
def test_submit_refuses_malformed_operations(tmp_path: Path, operation: Any) -> None:
    with running_network(tmp_path) as net:
        alice = net.create_account("alice")
        r = net.call("com.atproto.identity.submitPlcOperation", alice, operation=operation)
        error(r, 400, "InvalidRequest")
        assert did_document(net, alice["did"]).pds_endpoint == net.pds_url


def test_migrating_into_an_application_server(tmp_path: Path) -> None:
    """Approval of an account migrating in leaves it deactivated until its DID
    document names the server; then its holder activates it."""
    with (
        running_network(tmp_path, signup_mode="application",
                        application_questions=("Who invited you?",)) as net,
        did_web_host() as (did, document),
    ):
        own = PrivateKey.generate("k256")
        document.update(_web_document(did, "dave.pds.test", own.public_key.did_key(),
                                      "https://old.example"))

        def signup(**extra: Any) -> httpx.Response:
            token = create_service_jwt(own, iss=did, aud=net.config.service_did,
                                       lxm="com.atproto.server.createAccount")
            return net.http.post(
                net.xrpc("com.atproto.server.createAccount"),
                json={"did": did, "handle": "dave.pds.test", "password": PASSWORD, **extra},
                headers={"Authorization": f"Bearer {token}"},
            )

        assert signup().status_code == 400  # the application is required here too
        dave = ok(signup(roostApplication={"answers": ["Alice"]}))
        assert dave["roostStatus"] == "pending"
        error(net.call("com.atproto.server.activateAccount", dave), 400, "InvalidRequest")
        subject = {"$type": "com.atproto.admin.defs#repoRef", "did": did}
        ok(net.http.post(net.xrpc("com.atproto.admin.updateSubjectStatus"), auth=ADMIN,
                         json={"subject": subject, "deactivated": {"applied": False}}))
        assert ok(net.query("com.atproto.server.getSession", dave))["status"] == "deactivated"
        assert [e for e in stored_events(net) if e[1].get("did") == did] == []
        recommended = ok(net.query("com.atproto.identity.getRecommendedDidCredentials", dave))
        document.update(_web_document(did, "dave.pds.test",
                                      recommended["verificationMethods"]["atproto"], net.pds_url))
        ok(net.call("com.atproto.server.activateAccount", dave))
        assert ok(net.query("com.atproto.server.getSession", dave))["active"] is True
