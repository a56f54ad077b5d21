"""The account lifecycle over a real PDS and PLC: deletion by the member (with a
confirmation token from the outbox), deactivation and activation, service-auth
tokens, migration progress, and login rate limits."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Any

import httpx

from pds.config import PdsConfig
from roost.car import CarReader
from roost.commit import Commit
from roost.identity import DidDocument
from roost.jwt import parse_jwt, verify_service_jwt
from roost.plc import PlcClient
from tests.pds.conftest import PASSWORD, Network, error, ok, stored_events
from tests.pds.test_blobs_api import blob_file, image_post, link, png, uploaded

ADMIN = ("admin", "admin-secret")
POST = "app.bsky.feed.post"


def _post(net: Network, session: dict[str, Any], text: str = "hi") -> httpx.Response:
    record = {"$type": POST, "text": text, "createdAt": "2024-05-01T12:00:00.000Z"}
    return net.call(
        "com.atproto.repo.createRecord", session,
        repo=session["did"], collection=POST, record=record,
    )


def _outbox(net: Network, did: str) -> list[dict[str, Any]]:
    r = net.http.get(net.xrpc("org.roost.admin.listOutbox"), params={"did": did}, auth=ADMIN)
    return ok(r)["messages"]  # type: ignore[no-any-return]


def _events_of(net: Network, did: str) -> list[tuple[str, dict[str, Any]]]:
    return [(t, b) for t, b in stored_events(net) if b.get("did", b.get("repo")) == did]


def _signing_key(net: Network, did: str) -> Any:
    doc = DidDocument.parse(net.http.get(f"{net.plc_url}/{did}").json(), did=did)
    return doc.signing_key


# -- deletion by the member -------------------------------------------------------------------


def test_delete_account(network: Network) -> None:
    net = network
    alice = net.create_account("alice")
    did = alice["did"]
    ok(_post(net, alice, "soon gone"))
    blob = uploaded(net, alice, png(seed=3))
    ok(net.call("com.atproto.repo.createRecord", alice, repo=did, collection=POST,
             record=image_post("pic", blob)))
    assert blob_file(net, did, link(blob)).exists()

    # no token asked for yet
    error(net.call("com.atproto.server.deleteAccount", None, did=did, password=PASSWORD,
                token="AAAAA-BBBBB"), 400, "InvalidToken")
    # the request needs the account's own session
    assert net.call("com.atproto.server.requestAccountDelete", None).status_code == 401
    ok(net.call("com.atproto.server.requestAccountDelete", alice))
    (message,) = _outbox(net, did)
    assert message["purpose"] == "delete_account" and message["recipient"] == "alice@example.com"
    token = message["token"]
    assert token in message["body"] and len(token) == 11 and token[5] == "-"

    # wrong password, wrong token, an expired token: nothing happens
    r = net.call("com.atproto.server.deleteAccount", None, did=did, password="nope", token=token)
    error(r, 401, "AuthenticationRequired")
    error(net.call("com.atproto.server.deleteAccount", None, did=did, password=PASSWORD,
                token="AAAAA-BBBBB"), 400, "InvalidToken")
    conn = sqlite3.connect(net.config.data_dir / "pds.sqlite")
    try:
        conn.execute("UPDATE email_token SET requested_at = requested_at - 3600")
        conn.commit()
        error(net.call("com.atproto.server.deleteAccount", None, did=did, password=PASSWORD,
                    token=token), 400, "ExpiredToken")
        conn.execute("UPDATE email_token SET requested_at = requested_at + 3600")
        conn.commit()
    finally:
        conn.close()
    ok(net.query("com.atproto.server.getSession", alice))

    # the token is not case-sensitive
    ok(net.call("com.atproto.server.deleteAccount", None, did=did, password=PASSWORD,
             token=token.lower()))

    # gone: repo, records, blobs, sessions; a tombstone remains
    error(net.http.get(net.xrpc("com.atproto.repo.getRecord"),
                       params={"repo": did, "collection": POST, "rkey": "x"}), 400, "RepoNotFound")
    error(net.http.get(net.xrpc("com.atproto.sync.getRepo"), params={"did": did}),
          400, "RepoNotFound")
    status = ok(net.http.get(net.xrpc("com.atproto.sync.getRepoStatus"), params={"did": did}))
    assert status == {"did": did, "active": False, "status": "deleted"}
    error(net.query("com.atproto.server.getSession", alice), 401, "AccountDeleted")
    error(net.http.post(net.xrpc("com.atproto.server.refreshSession"),
                        headers={"Authorization": f"Bearer {alice['refreshJwt']}"}),
          401, "AccountDeleted")
    r = net.http.post(net.xrpc("com.atproto.server.createSession"),
                      json={"identifier": "alice.pds.test", "password": PASSWORD})
    error(r, 401, "AuthenticationRequired")
    assert not blob_file(net, did, link(blob)).exists()
    assert _events_of(net, did) == [
        ("#account", {**_events_of(net, did)[0][1], "active": False, "status": "deleted"})
    ]
    # the operator still sees what was sent
    assert [m["id"] for m in _outbox(net, did)] == [message["id"]]
    # deleting again: no account
    r = net.call("com.atproto.server.deleteAccount", None, did=did, password=PASSWORD, token=token)
    assert r.status_code == 400


def test_delete_request_needs_main_password(network: Network) -> None:
    alice = network.create_account("alice")
    app = ok(network.call("com.atproto.server.createAppPassword", alice, name="phone"))
    session = ok(network.http.post(
        network.xrpc("com.atproto.server.createSession"),
        json={"identifier": alice["did"], "password": app["password"]},
    ))
    error(network.call("com.atproto.server.requestAccountDelete", session), 400, "InvalidToken")
    assert _outbox(network, alice["did"]) == []


# -- deactivation and activation ---------------------------------------------------------------


def test_deactivate_then_activate(network: Network) -> None:
    net = network
    alice = net.create_account("alice")
    did = alice["did"]
    first = ok(_post(net, alice, "before"))
    rkey = first["uri"].rsplit("/", 1)[1]
    seen = len(stored_events(net))

    ok(net.call("com.atproto.server.deactivateAccount", alice,
             deleteAfter="2030-01-01T00:00:00.000Z"))
    assert stored_events(net)[seen:] == [
        ("#account", {**stored_events(net)[seen][1], "did": did, "active": False,
                      "status": "deactivated"})
    ]
    # its holder learns why writes fail; readers see the repo status
    error(_post(net, alice, "while away"), 401, "AccountDeactivated")
    error(net.http.get(net.xrpc("com.atproto.repo.getRecord"),
                       params={"repo": did, "collection": POST, "rkey": rkey}),
          400, "RepoDeactivated")
    status = ok(net.http.get(net.xrpc("com.atproto.sync.getRepoStatus"), params={"did": did}))
    assert status == {"did": did, "active": False, "status": "deactivated"}
    login = ok(net.http.post(net.xrpc("com.atproto.server.createSession"),
                             json={"identifier": "alice.pds.test", "password": PASSWORD}))
    assert login["active"] is False and login["status"] == "deactivated"
    info = ok(net.http.get(net.xrpc("com.atproto.admin.getAccountInfo"), params={"did": did},
                           auth=ADMIN))
    assert info["roostDeleteAfter"] == "2030-01-01T00:00:00.000Z"
    # deactivating twice announces nothing more
    ok(net.call("com.atproto.server.deactivateAccount", alice))
    assert len(stored_events(net)) == seen + 1

    check = ok(net.query("com.atproto.server.checkAccountStatus", alice))
    assert check["activated"] is False and check["validDid"] is True
    assert check["indexedRecords"] == 1 and check["repoBlocks"] >= 3
    head = ok(net.http.get(net.xrpc("com.atproto.sync.getLatestCommit"), params={"did": did},
                           headers=net.auth(alice)))
    assert check["repoCommit"] == head["cid"] and check["repoRev"] == head["rev"]

    ok(net.call("com.atproto.server.activateAccount", alice))
    after = stored_events(net)[seen + 1 :]
    assert [t for t, _ in after] == ["#account", "#identity", "#commit", "#sync"]
    assert after[0][1]["active"] is True and after[1][1]["handle"] == "alice.pds.test"
    commit_event = after[2][1]
    assert commit_event["ops"] == [] and commit_event["since"] == head["rev"]
    assert commit_event["rev"] > head["rev"] and after[3][1]["rev"] == commit_event["rev"]
    reader = CarReader(commit_event["blocks"])
    blocks = dict(reader)
    commit = Commit.decode(blocks[commit_event["commit"]], commit_event["commit"])
    commit.check(_signing_key(net, did), did=did)
    ok(_post(net, alice, "back"))
    assert ok(net.query("com.atproto.server.checkAccountStatus", alice))["activated"] is True
    # activating an active account changes nothing
    count = len(stored_events(net))
    ok(net.call("com.atproto.server.activateAccount", alice))
    assert len(stored_events(net)) == count


def test_activation_refused_when_the_did_points_elsewhere(network: Network) -> None:
    net = network
    alice = net.create_account("alice")
    ok(net.call("com.atproto.server.deactivateAccount", alice))
    # the DID document stops naming this server (as after a move away), by an op
    # signed with the server's own rotation key
    rotation = PdsConfig(data_dir=net.config.data_dir).with_secrets().rotation_key

    async def move() -> None:
        async with PlcClient(net.plc_url) as plc:
            await plc.update(alice["did"], rotation, pds_endpoint="https://elsewhere.example")

    asyncio.run(move())
    r = net.call("com.atproto.server.activateAccount", alice)
    assert r.status_code == 400 and "service endpoint" in r.json()["message"]
    assert ok(net.query("com.atproto.server.checkAccountStatus", alice))["validDid"] is False
    error(_post(net, alice), 401, "AccountDeactivated")


def test_app_passwords_cannot_deactivate(network: Network) -> None:
    alice = network.create_account("alice")
    app = ok(network.call("com.atproto.server.createAppPassword", alice, name="phone"))
    session = ok(network.http.post(
        network.xrpc("com.atproto.server.createSession"),
        json={"identifier": alice["did"], "password": app["password"]},
    ))
    error(network.call("com.atproto.server.deactivateAccount", session), 400, "InvalidToken")
    ok(_post(network, alice))


# -- service auth -------------------------------------------------------------------------------


def test_get_service_auth(network: Network) -> None:
    net = network
    alice = net.create_account("alice")
    did = alice["did"]
    nsid = "com.atproto.server.getServiceAuth"
    aud = "did:web:other.example"
    token = ok(net.query(nsid, alice, aud=aud, lxm="com.atproto.server.createAccount"))["token"]
    parsed = parse_jwt(token)
    claims = verify_service_jwt(parsed, _signing_key(net, did), aud=aud,
                                lxm="com.atproto.server.createAccount")
    assert claims.iss == did
    assert parsed.payload["exp"] - parsed.payload["iat"] == 60
    now = int(time.time())
    token = ok(net.query(nsid, alice, aud=aud, lxm="app.bsky.feed.getFeedSkeleton",
                      exp=now + 1800))["token"]
    assert parse_jwt(token).payload["exp"] == now + 1800

    error(net.query(nsid, alice, aud=aud, exp=now - 10), 400, "BadExpiration")
    error(net.query(nsid, alice, aud=aud, lxm="app.bsky.feed.getFeed", exp=now + 7200),
          400, "BadExpiration")
    error(net.query(nsid, alice, aud=aud, exp=now + 300), 400, "BadExpiration")
    r = net.query(nsid, alice, aud=aud, lxm="com.atproto.server.deactivateAccount")
    assert r.status_code == 400 and "protected method" in r.json()["message"]
    error(net.query(nsid, alice, aud="not a did"), 400, "InvalidRequest")

    # app passwords: tokens for ordinary methods, not for moving the account
    app = ok(net.call("com.atproto.server.createAppPassword", alice, name="phone"))
    session = ok(net.http.post(
        net.xrpc("com.atproto.server.createSession"),
        json={"identifier": did, "password": app["password"]},
    ))
    ok(net.query(nsid, session, aud=aud, lxm="app.bsky.feed.getFeedSkeleton"))
    error(net.query(nsid, session, aud=aud, lxm="com.atproto.server.createAccount"),
          400, "InvalidToken")
    error(net.query(nsid, session, aud=aud), 400, "InvalidToken")


def test_create_account_with_a_did_needs_its_service_auth(network: Network) -> None:
    net = network
    alice = net.create_account("alice")
    bob = net.create_account("bob")
    create = net.xrpc("com.atproto.server.createAccount")
    body = {"did": alice["did"], "handle": "alice2.pds.test", "password": PASSWORD}

    error(net.http.post(create, json=body), 401, "AuthenticationRequired")

    def token(session: dict[str, Any], **params: str) -> dict[str, str]:
        out = ok(net.query("com.atproto.server.getServiceAuth", session, **params))
        return {"Authorization": f"Bearer {out['token']}"}

    own = net.config.service_did
    lxm = "com.atproto.server.createAccount"
    # bob's token does not prove control of alice's DID
    r = net.http.post(create, json=body, headers=token(bob, aud=own, lxm=lxm))
    error(r, 401, "AuthenticationRequired")
    error(net.http.post(create, json=body, headers=token(alice, aud="did:web:x.example", lxm=lxm)),
          401, "BadJwtAudience")
    error(net.http.post(create, json=body,
                        headers=token(alice, aud=own, lxm="com.atproto.repo.createRecord")),
          401, "BadJwtLexiconMethod")
    # a valid token, but the account is already here
    headers = token(alice, aud=own, lxm=lxm)
    r = net.http.post(create, json=body, headers=headers)
    assert r.status_code == 400 and "already exists" in r.json()["message"]
    # a token is used once
    error(net.http.post(create, json=body, headers=headers), 401, "BadJwt")
    # an access token is not a service token
    error(net.http.post(create, json=body, headers=net.auth(alice)), 401, "BadJwtType")


# -- login rate limits --------------------------------------------------------------------------


def test_login_rate_limit(network: Network) -> None:
    net = network
    net.create_account("alice")
    net.create_account("bob")
    url = net.xrpc("com.atproto.server.createSession")
    for attempt in range(30):
        r = net.http.post(url, json={"identifier": "alice.pds.test", "password": "guess"})
        error(r, 401, "AuthenticationRequired")
        assert r.headers["RateLimit-Limit"] == "30"
        assert r.headers["RateLimit-Policy"] == "30;w=300"
        assert r.headers["RateLimit-Remaining"] == str(29 - attempt)
    # even the right password waits now
    r = net.http.post(url, json={"identifier": "ALICE.pds.test", "password": PASSWORD})
    error(r, 429, "RateLimitExceeded")
    assert int(r.headers["Retry-After"]) >= 1 and r.headers["RateLimit-Remaining"] == "0"
    # another account from the same address is not held back
    ok(net.http.post(url, json={"identifier": "bob.pds.test", "password": PASSWORD}))
