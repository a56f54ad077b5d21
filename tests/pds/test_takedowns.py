"""Record and blob takedowns (admin API and ``roost pds admin``), over real sockets."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from roost.cli import main
from tests.pds.conftest import Network, error, ok
from tests.pds.test_blobs_api import image_post, link, png, uploaded

ADMIN = ("admin", "admin-secret")
POST = "app.bsky.feed.post"
STRONG_REF = "com.atproto.repo.strongRef"
BLOB_REF = "com.atproto.admin.defs#repoBlobRef"


def _update(net: Network, subject: dict[str, Any], **attrs: Any) -> httpx.Response:
    return net.http.post(
        net.xrpc("com.atproto.admin.updateSubjectStatus"),
        json={"subject": subject, **attrs},
        auth=ADMIN,
    )


def _status(net: Network, **params: str) -> httpx.Response:
    return net.http.get(net.xrpc("com.atproto.admin.getSubjectStatus"), params=params, auth=ADMIN)


def _create(net: Network, session: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    return ok(
        net.http.post(
            net.xrpc("com.atproto.repo.createRecord"),
            headers=net.auth(session),
            json={"repo": session["did"], "collection": POST, "record": record},
        )
    )


def _get(net: Network, did: str, rkey: str) -> httpx.Response:
    return net.http.get(
        net.xrpc("com.atproto.repo.getRecord"),
        params={"repo": did, "collection": POST, "rkey": rkey},
    )


def _list(net: Network, did: str) -> list[str]:
    body = ok(
        net.http.get(
            net.xrpc("com.atproto.repo.listRecords"), params={"repo": did, "collection": POST}
        )
    )
    return [r["uri"] for r in body["records"]]


def _sync_record(net: Network, did: str, rkey: str) -> httpx.Response:
    return net.http.get(
        net.xrpc("com.atproto.sync.getRecord"),
        params={"did": did, "collection": POST, "rkey": rkey},
    )


def _get_blob(net: Network, did: str, cid: str) -> httpx.Response:
    return net.http.get(net.xrpc("com.atproto.sync.getBlob"), params={"did": did, "cid": cid})


def _text(text: str) -> dict[str, Any]:
    return {"$type": POST, "text": text, "createdAt": "2024-05-01T12:00:00.000Z"}


def test_record_takedown(network: Network) -> None:
    alice = network.create_account("alice")
    did = alice["did"]
    bad = _create(network, alice, _text("against the rules"))
    good = _create(network, alice, _text("fine"))
    rkey = bad["uri"].rsplit("/", 1)[1]
    subject = {"$type": STRONG_REF, "uri": bad["uri"], "cid": bad["cid"]}

    out = ok(_update(network, subject, takedown={"applied": True, "ref": "rule 3"}))
    assert out == {"subject": subject, "takedown": {"applied": True, "ref": "rule 3"}}
    status = ok(_status(network, uri=bad["uri"]))
    assert status == {"subject": subject, "takedown": {"applied": True, "ref": "rule 3"}}

    # not served by any record read; the rest of the repo is
    error(_get(network, did, rkey), 400, "RecordNotFound")
    error(_sync_record(network, did, rkey), 400, "RecordNotFound")
    assert _list(network, did) == [good["uri"]]
    ok(_get(network, did, good["uri"].rsplit("/", 1)[1]))
    # the owner rewriting the path does not lift it
    ok(
        network.http.post(
            network.xrpc("com.atproto.repo.putRecord"),
            headers=network.auth(alice),
            json={"repo": did, "collection": POST, "rkey": rkey, "record": _text("edited")},
        )
    )
    error(_get(network, did, rkey), 400, "RecordNotFound")

    ok(_update(network, subject, takedown={"applied": False}))
    assert ok(_status(network, uri=bad["uri"]))["takedown"] == {"applied": False}
    assert ok(_get(network, did, rkey))["value"]["text"] == "edited"
    assert _sync_record(network, did, rkey).status_code == 200
    assert len(_list(network, did)) == 2


def test_blob_takedown(network: Network) -> None:
    alice = network.create_account("alice")
    did = alice["did"]
    blob = uploaded(network, alice, png(seed=7))
    _create(network, alice, image_post("look", blob))
    cid = link(blob)
    assert _get_blob(network, did, cid).status_code == 200
    subject = {"$type": BLOB_REF, "did": did, "cid": cid}

    ok(_update(network, subject, takedown={"applied": True, "ref": "copyright"}))
    error(_get_blob(network, did, cid), 400, "BlobNotFound")
    status = ok(_status(network, did=did, blob=cid))
    assert status == {"subject": subject, "takedown": {"applied": True, "ref": "copyright"}}

    ok(_update(network, subject, takedown={"applied": False}))
    assert _get_blob(network, did, cid).content == png(seed=7)
    assert ok(_status(network, did=did, blob=cid))["takedown"] == {"applied": False}


def test_takedown_bad_subjects(network: Network) -> None:
    alice = network.create_account("alice")
    did = alice["did"]
    missing_uri = f"at://{did}/{POST}/3kaaaaaaaaaaa"
    cid = "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"
    error(
        _update(network, {"$type": STRONG_REF, "uri": missing_uri, "cid": cid},
                takedown={"applied": True}),
        400,
        "RecordNotFound",
    )
    error(_status(network, uri=missing_uri), 400, "RecordNotFound")
    blob_cid = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    subject = {"$type": BLOB_REF, "did": did, "cid": blob_cid}
    r = _update(network, subject, takedown={"applied": True})
    assert r.status_code == 400 and "Blob not found" in r.json()["message"]
    r = _update(
        network, {"$type": BLOB_REF, "did": "did:plc:nobodyhereatall0000000000", "cid": blob_cid},
        takedown={"applied": True},
    )
    assert r.status_code == 400 and "Account not found" in r.json()["message"]
    # only accounts are deactivated
    post = _create(network, alice, _text("x"))
    r = _update(network, {"$type": STRONG_REF, "uri": post["uri"], "cid": post["cid"]},
                deactivated={"applied": True})
    assert r.status_code == 400
    # a user session is not the admin
    r = network.http.post(
        network.xrpc("com.atproto.admin.updateSubjectStatus"),
        headers=network.auth(alice),
        json={"subject": {"$type": STRONG_REF, "uri": post["uri"], "cid": post["cid"]},
              "takedown": {"applied": True}},
    )
    assert r.status_code == 401
    assert _get(network, did, post["uri"].rsplit("/", 1)[1]).status_code == 200


def test_cli_record_and_blob_takedown(
    network: Network, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROOST_ADMIN_PASSWORD", "admin-secret")
    alice = network.create_account("alice")
    did = alice["did"]
    blob = uploaded(network, alice, png(seed=9))
    post = _create(network, alice, image_post("look", blob))
    rkey = post["uri"].rsplit("/", 1)[1]
    cli = ["pds", "admin", "--url", network.pds_url]

    assert main([*cli, "takedown", post["uri"], "--reason", "rule 1"]) == 0
    assert f"took down {post['uri']}" in capsys.readouterr().out
    error(_get(network, did, rkey), 400, "RecordNotFound")
    assert ok(_status(network, uri=post["uri"]))["takedown"] == {"applied": True, "ref": "rule 1"}
    assert main([*cli, "takedown", link(blob), "--did", did, "--reason", "rule 2"]) == 0
    error(_get_blob(network, did, link(blob)), 400, "BlobNotFound")

    assert main([*cli, "untakedown", post["uri"]]) == 0
    assert main([*cli, "untakedown", link(blob), "--did", did]) == 0
    assert _get(network, did, rkey).status_code == 200
    assert _get_blob(network, did, link(blob)).status_code == 200

    assert main([*cli, "takedown", "not-a-target", "--reason", "x"]) == 1
    assert "TARGET must be" in capsys.readouterr().err
    assert main([*cli, "takedown", f"at://{did}/{POST}/3kaaaaaaaaaaa", "--reason", "x"]) == 1
    assert "RecordNotFound" in capsys.readouterr().err
