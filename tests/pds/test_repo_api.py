"""com.atproto.repo.*: record writes and reads over a real PDS and PLC on loopback."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import httpx
import pytest

from roost.jwt import ACCESS_TOKEN_TYP, create_hs256_jwt
from tests.pds.conftest import Network, error, ok

POST = "app.bsky.feed.post"
PROFILE = "app.bsky.actor.profile"
UNKNOWN = "com.example.thing"
CREATED = "2024-05-01T12:00:00.000Z"


def post(text: str) -> dict[str, Any]:
    return {"$type": POST, "text": text, "createdAt": CREATED}


def call(net: Network, nsid: str, session: dict[str, Any] | None, **body: Any) -> httpx.Response:
    headers = net.auth(session) if session is not None else {}
    return net.http.post(net.xrpc(nsid), json=body, headers=headers)


def create(
    net: Network, session: dict[str, Any], record: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    return ok(
        call(
            net,
            "com.atproto.repo.createRecord",
            session,
            repo=session["did"],
            collection=record.get("$type", POST),
            record=record,
            **extra,
        )
    )


def get(net: Network, repo: str, collection: str, rkey: str, **extra: Any) -> httpx.Response:
    params = {"repo": repo, "collection": collection, "rkey": rkey, **extra}
    return net.http.get(net.xrpc("com.atproto.repo.getRecord"), params=params)


def head(net: Network, did: str) -> dict[str, Any]:
    return ok(net.http.get(net.xrpc("com.atproto.sync.getLatestCommit"), params={"did": did}))


def rkey_of(uri: str) -> str:
    return uri.rsplit("/", 1)[1]


def set_status(net: Network, did: str, status: str) -> None:
    """Stand-in for the admin/account-status endpoints: flip the row directly."""
    with sqlite3.connect(net.config.database_path) as conn:
        conn.execute("UPDATE account SET status = ? WHERE did = ?", (status, did))


@pytest.fixture
def alice(network: Network) -> dict[str, Any]:
    return network.create_account("alice")


# -- create, get, list, describe ----------------------------------------------------------


def test_create_then_get_and_describe(network: Network, alice: dict[str, Any]) -> None:
    before = head(network, alice["did"])
    out = create(network, alice, post("hello"))
    assert out["uri"].startswith(f"at://{alice['did']}/{POST}/")
    assert out["validationStatus"] == "valid"
    assert out["commit"]["rev"] > before["rev"]
    assert head(network, alice["did"]) == out["commit"]

    rkey = rkey_of(out["uri"])
    got = ok(get(network, alice["did"], POST, rkey))
    assert got == {"uri": out["uri"], "cid": out["cid"], "value": post("hello")}
    # by handle, and pinned to the current CID
    assert ok(get(network, alice["handle"], POST, rkey, cid=out["cid"]))["cid"] == out["cid"]
    other = "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"
    error(get(network, alice["did"], POST, rkey, cid=other), 400, "RecordNotFound")
    error(get(network, alice["did"], POST, "3jzfcijpj2z2a"), 400, "RecordNotFound")
    error(get(network, "nobody.pds.test", POST, rkey), 400, "RepoNotFound")

    create(network, alice, {"$type": PROFILE, "displayName": "Alice"}, rkey="self")
    described = ok(
        network.http.get(
            network.xrpc("com.atproto.repo.describeRepo"), params={"repo": alice["handle"]}
        )
    )
    assert described["did"] == alice["did"] and described["handle"] == alice["handle"]
    assert described["collections"] == [PROFILE, POST]
    assert described["handleIsCorrect"] is True
    assert described["didDoc"]["id"] == alice["did"]


def test_explicit_rkey_and_default_tids(network: Network, alice: dict[str, Any]) -> None:
    first = create(network, alice, post("one"))
    second = create(network, alice, post("two"))
    assert rkey_of(first["uri"]) < rkey_of(second["uri"])  # fresh TIDs increase
    out = create(network, alice, post("three"), rkey="3kaaaaaaaaaa2")
    assert rkey_of(out["uri"]) == "3kaaaaaaaaaa2"
    again = call(
        network,
        "com.atproto.repo.createRecord",
        alice,
        repo=alice["did"],
        collection=POST,
        rkey="3kaaaaaaaaaa2",
        record=post("dup"),
    )
    assert again.status_code == 400
    assert ok(get(network, alice["did"], POST, "3kaaaaaaaaaa2"))["value"]["text"] == "three"


def test_list_records_pages_both_ways(network: Network, alice: dict[str, Any]) -> None:
    rkeys = [f"3kaaaaaaaa{c}a2" for c in "234567a"]
    writes = [
        {
            "$type": "com.atproto.repo.applyWrites#create",
            "collection": POST,
            "rkey": rkey,
            "value": post(f"post {i}"),
        }
        for i, rkey in enumerate(rkeys)
    ]
    ok(call(network, "com.atproto.repo.applyWrites", alice, repo=alice["did"], writes=writes))
    create(network, alice, {"$type": PROFILE, "displayName": "A"}, rkey="self")

    def page(**params: Any) -> dict[str, Any]:
        query = {"repo": alice["did"], "collection": POST, "limit": 3, **params}
        return ok(network.http.get(network.xrpc("com.atproto.repo.listRecords"), params=query))

    def walk(**params: Any) -> list[str]:
        seen: list[str] = []
        cursor = None
        for _ in range(10):
            extra: dict[str, Any] = {"cursor": cursor} if cursor else {}
            got = page(**params, **extra)
            seen += [rkey_of(r["uri"]) for r in got["records"]]
            cursor = got.get("cursor")
            if cursor is None:
                return seen
        raise AssertionError("listRecords never ended")

    assert walk() == sorted(rkeys, reverse=True)  # newest first by default
    assert walk(reverse="true") == sorted(rkeys)
    first = page()["records"][0]
    assert first["value"] == post("post 6") and first["cid"]
    empty = ok(
        network.http.get(
            network.xrpc("com.atproto.repo.listRecords"),
            params={"repo": alice["did"], "collection": UNKNOWN},
        )
    )
    assert empty == {"records": []}
    bad = network.http.get(
        network.xrpc("com.atproto.repo.listRecords"),
        params={"repo": alice["did"], "collection": POST, "limit": 101},
    )
    assert bad.status_code == 400


# -- putRecord ----------------------------------------------------------------------------------


def test_put_record_creates_updates_and_honours_swaps(
    network: Network, alice: dict[str, Any]
) -> None:
    put = "com.atproto.repo.putRecord"
    rkey = "3kbbbbbbbbbb2"
    created = ok(
        call(
            network,
            put,
            alice,
            repo=alice["did"],
            collection=POST,
            rkey=rkey,
            record=post("v1"),
            swapRecord=None,
        )
    )
    assert created["validationStatus"] == "valid" and "commit" in created
    # the same record again: nothing to commit
    same = ok(
        call(network, put, alice, repo=alice["did"], collection=POST, rkey=rkey, record=post("v1"))
    )
    assert same["cid"] == created["cid"] and "commit" not in same
    assert head(network, alice["did"]) == created["commit"]

    # swapRecord null means "must not exist"; a wrong CID fails too; nothing changes
    stale = call(
        network,
        put,
        alice,
        repo=alice["did"],
        collection=POST,
        rkey=rkey,
        record=post("v2"),
        swapRecord=None,
    )
    error(stale, 400, "InvalidSwap")
    wrong = call(
        network,
        put,
        alice,
        repo=alice["did"],
        collection=POST,
        rkey=rkey,
        record=post("v2"),
        swapRecord="bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm",
    )
    error(wrong, 400, "InvalidSwap")
    assert head(network, alice["did"]) == created["commit"]

    updated = ok(
        call(
            network,
            put,
            alice,
            repo=alice["did"],
            collection=POST,
            rkey=rkey,
            record=post("v2"),
            swapRecord=created["cid"],
        )
    )
    assert updated["cid"] != created["cid"]
    assert ok(get(network, alice["did"], POST, rkey))["value"]["text"] == "v2"
    # a swap CID for a record that does not exist
    missing = call(
        network,
        put,
        alice,
        repo=alice["did"],
        collection=POST,
        rkey="3kcccccccccc2",
        record=post("x"),
        swapRecord=created["cid"],
    )
    error(missing, 400, "InvalidSwap")
    error(get(network, alice["did"], POST, "3kcccccccccc2"), 400, "RecordNotFound")


# -- deleteRecord --------------------------------------------------------------------------------


def test_delete_record(network: Network, alice: dict[str, Any]) -> None:
    delete = "com.atproto.repo.deleteRecord"
    out = create(network, alice, post("bye"))
    rkey = rkey_of(out["uri"])
    wrong = call(
        network,
        delete,
        alice,
        repo=alice["did"],
        collection=POST,
        rkey=rkey,
        swapRecord="bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm",
    )
    error(wrong, 400, "InvalidSwap")
    assert ok(get(network, alice["did"], POST, rkey))["cid"] == out["cid"]

    deleted = ok(
        call(
            network,
            delete,
            alice,
            repo=alice["did"],
            collection=POST,
            rkey=rkey,
            swapRecord=out["cid"],
        )
    )
    assert deleted["commit"] == head(network, alice["did"])
    error(get(network, alice["did"], POST, rkey), 400, "RecordNotFound")

    # deleting what is not there succeeds without a commit...
    again = ok(call(network, delete, alice, repo=alice["did"], collection=POST, rkey=rkey))
    assert again == {}
    assert head(network, alice["did"]) == deleted["commit"]
    # ...unless a swap expected something there
    swapped = call(
        network, delete, alice, repo=alice["did"], collection=POST, rkey=rkey, swapRecord=out["cid"]
    )
    error(swapped, 400, "InvalidSwap")


# -- swapCommit ----------------------------------------------------------------------------------


def test_swap_commit(network: Network, alice: dict[str, Any]) -> None:
    first = create(network, alice, post("one"))
    stale = first["commit"]["cid"]
    second = create(network, alice, post("two"), swapCommit=stale)
    current = second["commit"]
    cases: list[tuple[str, dict[str, Any]]] = [
        ("com.atproto.repo.createRecord", {"collection": POST, "record": post("three")}),
        (
            "com.atproto.repo.putRecord",
            {"collection": POST, "rkey": "3kdddddddddd2", "record": post("p")},
        ),
        ("com.atproto.repo.deleteRecord", {"collection": POST, "rkey": rkey_of(first["uri"])}),
        (
            "com.atproto.repo.applyWrites",
            {
                "writes": [
                    {
                        "$type": "com.atproto.repo.applyWrites#create",
                        "collection": POST,
                        "value": post("a"),
                    }
                ]
            },
        ),
    ]
    for nsid, body in cases:
        response = call(network, nsid, alice, repo=alice["did"], swapCommit=stale, **body)
        error(response, 400, "InvalidSwap")
    assert head(network, alice["did"]) == current
    assert ok(get(network, alice["did"], POST, rkey_of(first["uri"])))["cid"] == first["cid"]
    listed = ok(
        network.http.get(
            network.xrpc("com.atproto.repo.listRecords"),
            params={"repo": alice["did"], "collection": POST},
        )
    )
    assert len(listed["records"]) == 2


# -- applyWrites ---------------------------------------------------------------------------------


def test_apply_writes_is_one_atomic_commit(network: Network, alice: dict[str, Any]) -> None:
    apply = "com.atproto.repo.applyWrites"
    keep = create(network, alice, post("keep"))
    edit = create(network, alice, post("edit me"))
    drop = create(network, alice, post("drop me"))
    before = head(network, alice["did"])
    writes = [
        {"$type": f"{apply}#create", "collection": POST, "value": post("new")},
        {"$type": f"{apply}#create", "collection": UNKNOWN, "rkey": "anything", "value": {"n": 1}},
        {
            "$type": f"{apply}#update",
            "collection": POST,
            "rkey": rkey_of(edit["uri"]),
            "value": post("edited"),
        },
        {"$type": f"{apply}#delete", "collection": POST, "rkey": rkey_of(drop["uri"])},
    ]
    out = ok(
        call(network, apply, alice, repo=alice["did"], writes=writes, swapCommit=before["cid"])
    )
    assert out["commit"]["rev"] > before["rev"]
    kinds = [r["$type"].rpartition("#")[2] for r in out["results"]]
    assert kinds == ["createResult", "createResult", "updateResult", "deleteResult"]
    assert [r.get("validationStatus") for r in out["results"]] == [
        "valid",
        "unknown",
        "valid",
        None,
    ]
    new = out["results"][0]
    assert ok(get(network, alice["did"], POST, rkey_of(new["uri"])))["cid"] == new["cid"]
    assert ok(get(network, alice["did"], UNKNOWN, "anything"))["value"] == {
        "$type": UNKNOWN,
        "n": 1,
    }
    assert ok(get(network, alice["did"], POST, rkey_of(edit["uri"])))["value"]["text"] == "edited"
    error(get(network, alice["did"], POST, rkey_of(drop["uri"])), 400, "RecordNotFound")
    assert head(network, alice["did"]) == out["commit"]

    # one bad write fails the whole batch: nothing of it lands
    after = out["commit"]
    failing = [
        {
            "$type": f"{apply}#create",
            "collection": POST,
            "rkey": "3keeeeeeeeee2",
            "value": post("x"),
        },
        {
            "$type": f"{apply}#delete",
            "collection": POST,
            "rkey": rkey_of(drop["uri"]),
        },  # gone already
    ]
    assert call(network, apply, alice, repo=alice["did"], writes=failing).status_code == 400
    invalid = [
        {
            "$type": f"{apply}#create",
            "collection": POST,
            "rkey": "3keeeeeeeeee2",
            "value": post("x"),
        },
        {
            "$type": f"{apply}#update",
            "collection": POST,
            "rkey": rkey_of(keep["uri"]),
            "value": {"text": 5},
        },
    ]
    error(call(network, apply, alice, repo=alice["did"], writes=invalid), 400, "InvalidRequest")
    assert head(network, alice["did"]) == after
    error(get(network, alice["did"], POST, "3keeeeeeeeee2"), 400, "RecordNotFound")

    too_many = [
        {"$type": f"{apply}#create", "collection": UNKNOWN, "value": {"i": i}} for i in range(201)
    ]
    error(call(network, apply, alice, repo=alice["did"], writes=too_many), 400, "InvalidRequest")
    assert head(network, alice["did"]) == after


# -- validation ------------------------------------------------------------------------------------


def test_validation_modes(network: Network, alice: dict[str, Any]) -> None:
    thing = {"$type": UNKNOWN, "whatever": [1, 2, {"deep": True}]}
    unknown = create(network, alice, thing)
    assert unknown["validationStatus"] == "unknown"
    required = call(
        network,
        "com.atproto.repo.createRecord",
        alice,
        repo=alice["did"],
        collection=UNKNOWN,
        record=thing,
        validate=True,
    )
    assert "Lexicon not found" in error(required, 400, "InvalidRequest")
    skipped = create(network, alice, thing, validate=False)
    assert "validationStatus" not in skipped

    # a post without text: invalid when validated, stored as is when not
    bad_post = {"$type": POST, "createdAt": CREATED}
    error(
        call(
            network,
            "com.atproto.repo.createRecord",
            alice,
            repo=alice["did"],
            collection=POST,
            record=bad_post,
        ),
        400,
        "InvalidRequest",
    )
    error(
        call(
            network,
            "com.atproto.repo.createRecord",
            alice,
            repo=alice["did"],
            collection=POST,
            record=bad_post,
            validate=True,
        ),
        400,
        "InvalidRequest",
    )
    stored = create(network, alice, bad_post, validate=False)
    assert ok(get(network, alice["did"], POST, rkey_of(stored["uri"])))["value"] == bad_post
    bad_date = post("x") | {"createdAt": "yesterday"}
    error(
        call(
            network,
            "com.atproto.repo.createRecord",
            alice,
            repo=alice["did"],
            collection=POST,
            record=bad_date,
        ),
        400,
        "InvalidRequest",
    )


def test_malformed_records_change_nothing(network: Network, alice: dict[str, Any]) -> None:
    create_ = "com.atproto.repo.createRecord"
    before = head(network, alice["did"])

    def refused(status: int = 400, **body: Any) -> str:
        response = call(network, create_, alice, repo=alice["did"], **body)
        assert response.status_code == status, response.text
        return response.json()["message"]  # type: ignore[no-any-return]

    refused(collection=POST, record={**post("x"), "score": 1.5})  # floats are not data
    refused(collection=UNKNOWN, record={"$type": UNKNOWN, "nested": {"f": 0.25}}, validate=False)
    assert "$type" in refused(collection=POST, record={**post("x"), "$type": UNKNOWN})
    assert "$type" in refused(
        collection=POST, record={**post("x"), "$type": UNKNOWN}, validate=False
    )
    refused(collection=POST, record=["not", "an", "object"])
    refused(collection=POST, record={**post("x"), "embed": {"$link": "not a cid"}}, validate=False)
    refused(collection=POST, rkey="bad key", record=post("x"))  # record-key syntax
    refused(collection=POST, rkey="..", record=post("x"))
    refused(collection=POST, rkey="self", record=post("x"))  # posts are keyed by TID
    refused(collection=PROFILE, rkey="3kfffffffff22", record={"$type": PROFILE})  # literal:self
    refused(collection="not an nsid", record=post("x"))
    big = {"$type": UNKNOWN, "blob": "x" * 200_000}
    assert refused(413, collection=UNKNOWN, record=big, validate=False)
    assert head(network, alice["did"]) == before

    # a record without $type gets the collection's
    filled = create(network, alice, {"text": "no type", "createdAt": CREATED})
    assert ok(get(network, alice["did"], POST, rkey_of(filled["uri"])))["value"]["$type"] == POST
    # links and bytes round-trip in their JSON form
    data = {"$type": UNKNOWN, "link": {"$link": filled["cid"]}, "raw": {"$bytes": "aGVsbG8"}}
    stored = create(network, alice, data)
    assert ok(get(network, alice["did"], UNKNOWN, rkey_of(stored["uri"])))["value"] == data


# -- auth and account status -----------------------------------------------------------------------


def _token(
    network: Network, did: str, *, secret: bytes | None = None, exp: int | None = None
) -> str:
    config = network.config.with_secrets()
    now = int(time.time())
    claims = {
        "scope": "com.atproto.access",
        "sub": did,
        "aud": config.service_did,
        "iat": now,
        "exp": exp if exp is not None else now + 600,
    }
    assert config.jwt_secret is not None
    return create_hs256_jwt(secret or config.jwt_secret.encode(), claims, typ=ACCESS_TOKEN_TYP)


def test_auth_is_required_and_checked(network: Network, alice: dict[str, Any]) -> None:
    bob = network.create_account("bob")
    body = {"repo": alice["did"], "collection": POST, "record": post("x")}
    url = network.xrpc("com.atproto.repo.createRecord")

    def attempt(token: str | None, **override: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return network.http.post(url, json={**body, **override}, headers=headers)

    error(attempt(None), 401, "AuthMissing")
    error(
        attempt(_token(network, alice["did"], secret=b"not the server secret")), 400, "InvalidToken"
    )
    error(attempt(_token(network, alice["did"], exp=int(time.time()) - 10)), 400, "ExpiredToken")
    error(attempt(alice["refreshJwt"]), 400, "InvalidToken")
    error(attempt("garbage"), 400, "InvalidToken")
    # a valid token of someone else
    error(attempt(bob["accessJwt"]), 401, "AuthenticationRequired")
    error(attempt(bob["accessJwt"], repo=alice["handle"]), 401, "AuthenticationRequired")
    cases: list[tuple[str, dict[str, Any]]] = [
        (
            "com.atproto.repo.putRecord",
            {"collection": POST, "rkey": "3kgggggggggg2", "record": post("x")},
        ),
        ("com.atproto.repo.deleteRecord", {"collection": POST, "rkey": "3kgggggggggg2"}),
        ("com.atproto.repo.applyWrites", {"writes": []}),
    ]
    for nsid, extra in cases:
        error(call(network, nsid, bob, repo=alice["did"], **extra), 401, "AuthenticationRequired")
        error(call(network, nsid, None, repo=alice["did"], **extra), 401, "AuthMissing")
    error(attempt(alice["accessJwt"], repo="did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"), 400, "RepoNotFound")
    listed = ok(
        network.http.get(
            network.xrpc("com.atproto.repo.listRecords"),
            params={"repo": alice["did"], "collection": POST},
        )
    )
    assert listed["records"] == []
    # a freshly minted valid token works, by handle too
    ok(attempt(_token(network, alice["did"]), repo=alice["handle"]))


def test_inactive_accounts_cannot_write_or_be_read(network: Network, alice: dict[str, Any]) -> None:
    out = create(network, alice, post("before"))
    rkey = rkey_of(out["uri"])
    set_status(network, alice["did"], "deactivated")
    error(
        call(
            network,
            "com.atproto.repo.createRecord",
            alice,
            repo=alice["did"],
            collection=POST,
            record=post("x"),
        ),
        401,
        "AccountDeactivated",
    )
    error(
        call(
            network,
            "com.atproto.repo.deleteRecord",
            alice,
            repo=alice["did"],
            collection=POST,
            rkey=rkey,
        ),
        401,
        "AccountDeactivated",
    )
    error(get(network, alice["did"], POST, rkey), 400, "RepoDeactivated")
    set_status(network, alice["did"], "takendown")
    error(
        call(
            network,
            "com.atproto.repo.createRecord",
            alice,
            repo=alice["did"],
            collection=POST,
            record=post("x"),
        ),
        401,
        "AccountTakedown",
    )
    error(get(network, alice["did"], POST, rkey), 400, "RepoTakendown")
    set_status(network, alice["did"], "active")
    assert ok(get(network, alice["did"], POST, rkey))["cid"] == out["cid"]
    create(network, alice, post("after"))
