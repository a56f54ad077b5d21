"""The admin API (Basic auth) and the ``roost pds admin`` CLI, over real sockets."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from roost.cli import main
from tests.pds.conftest import PASSWORD, Network, stored_events

ADMIN = ("admin", "admin-secret")


def _set_status(net: Network, did: str, **attrs: Any) -> httpx.Response:
    subject = {"$type": "com.atproto.admin.defs#repoRef", "did": did}
    return net.http.post(
        net.xrpc("com.atproto.admin.updateSubjectStatus"),
        json={"subject": subject, **attrs},
        auth=ADMIN,
    )


def _login(net: Network, name: str, password: str = PASSWORD) -> httpx.Response:
    return net.http.post(
        net.xrpc("com.atproto.server.createSession"),
        json={"identifier": f"{name}.pds.test", "password": password},
    )


def _post(net: Network, session: dict[str, Any]) -> httpx.Response:
    return net.http.post(
        net.xrpc("com.atproto.repo.createRecord"),
        headers=net.auth(session),
        json={
            "repo": session["did"],
            "collection": "app.bsky.feed.post",
            "record": {"$type": "app.bsky.feed.post", "text": "hi", "createdAt": "2024-01-01T00:00:00Z"},
        },
    )


_events = stored_events


# -- auth ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "auth", [None, ("admin", "wrong"), ("root", "admin-secret")], ids=["missing", "wrong", "user"]
)
def test_admin_auth_required(network: Network, auth: Any) -> None:
    r = network.http.get(network.xrpc("com.atproto.admin.searchAccounts"), auth=auth)
    assert r.status_code == 401 and r.json()["error"] == "AuthenticationRequired"
    r = network.http.post(
        network.xrpc("com.atproto.server.createInviteCode"), json={"useCount": 1}, auth=auth
    )
    assert r.status_code == 401


def test_user_session_is_not_admin(network: Network) -> None:
    session = network.create_account("alice")
    r = network.http.get(
        network.xrpc("com.atproto.admin.searchAccounts"), headers=network.auth(session)
    )
    assert r.status_code == 401


# -- accounts ----------------------------------------------------------------------------------


def test_account_info_and_search(network: Network) -> None:
    alice = network.create_account("alice")
    network.create_account("bobby")
    info = network.http.get(
        network.xrpc("com.atproto.admin.getAccountInfo"), params={"did": alice["did"]}, auth=ADMIN
    ).json()
    assert info["handle"] == "alice.pds.test" and info["email"] == "alice@example.com"
    assert info["roostStatus"] == "active"
    infos = network.http.get(
        network.xrpc("com.atproto.admin.getAccountInfos"),
        params={"dids": [alice["did"], "did:plc:unknownunknownunknown"]},
        auth=ADMIN,
    ).json()["infos"]
    assert [i["did"] for i in infos] == [alice["did"]]
    found = network.http.get(
        network.xrpc("com.atproto.admin.searchAccounts"), params={"email": "bob"}, auth=ADMIN
    ).json()["accounts"]
    assert [a["handle"] for a in found] == ["bobby.pds.test"]
    every = network.http.get(
        network.xrpc("com.atproto.admin.searchAccounts"), params={"limit": 1}, auth=ADMIN
    ).json()
    assert len(every["accounts"]) == 1 and "cursor" in every
    rest = network.http.get(
        network.xrpc("com.atproto.admin.searchAccounts"),
        params={"limit": 1, "cursor": every["cursor"]},
        auth=ADMIN,
    ).json()
    assert rest["accounts"][0]["did"] != every["accounts"][0]["did"]
    r = network.http.get(
        network.xrpc("com.atproto.admin.getAccountInfo"),
        params={"did": "did:plc:unknownunknownunknown"},
        auth=ADMIN,
    )
    assert r.status_code == 400


def test_takedown_and_untakedown(network: Network) -> None:
    alice = network.create_account("alice")
    did = alice["did"]
    r = _set_status(network, did, takedown={"applied": True, "ref": "spam"})
    assert r.status_code == 200, r.text
    # login refused, existing tokens refused
    r = _login(network, "alice")
    assert r.status_code == 401 and r.json()["error"] == "AccountTakedown"
    r = _post(network, alice)
    assert r.status_code == 401 and r.json()["error"] == "AccountTakedown"
    # sync refuses the repo
    r = network.http.get(network.xrpc("com.atproto.sync.getLatestCommit"), params={"did": did})
    assert r.status_code == 400 and r.json()["error"] == "RepoTakendown"
    status = network.http.get(
        network.xrpc("com.atproto.sync.getRepoStatus"), params={"did": did}
    ).json()
    assert status == {"did": did, "active": False, "status": "takendown"}
    out = network.http.get(
        network.xrpc("com.atproto.admin.getSubjectStatus"), params={"did": did}, auth=ADMIN
    ).json()
    assert out["takedown"] == {"applied": True, "ref": "spam"}
    # the admin may still fetch the repo
    r = network.http.get(
        network.xrpc("com.atproto.sync.getLatestCommit"), params={"did": did}, auth=ADMIN
    )
    assert r.status_code == 200
    # untakedown
    assert _set_status(network, did, takedown={"applied": False}).status_code == 200
    session = _login(network, "alice").json()
    assert session["active"] is True
    assert _post(network, session).status_code == 200
    r = network.http.get(network.xrpc("com.atproto.sync.getLatestCommit"), params={"did": did})
    assert r.status_code == 200
    out = network.http.get(
        network.xrpc("com.atproto.admin.getSubjectStatus"), params={"did": did}, auth=ADMIN
    ).json()
    assert out["takedown"] == {"applied": False}
    accounts = [b for t, b in _events(network) if t == "#account"]
    assert accounts[-2] == {**accounts[-2], "active": False, "status": "takendown"}
    assert accounts[-1]["active"] is True


def test_subject_status_only_accounts(network: Network) -> None:
    r = network.http.post(
        network.xrpc("com.atproto.admin.updateSubjectStatus"),
        json={
            "subject": {"$type": "com.atproto.admin.defs#repoBlobRef", "did": "did:plc:abc",
                        "cid": "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"},
            "takedown": {"applied": True},
        },
        auth=ADMIN,
    )
    assert r.status_code == 400


def test_admin_delete_account(network: Network) -> None:
    alice = network.create_account("alice")
    did = alice["did"]
    assert _post(network, alice).status_code == 200
    r = network.http.post(
        network.xrpc("com.atproto.admin.deleteAccount"), json={"did": did}, auth=ADMIN
    )
    assert r.status_code == 200, r.text
    assert _login(network, "alice").status_code == 401
    r = network.http.get(network.xrpc("com.atproto.sync.getLatestCommit"), params={"did": did})
    assert r.status_code == 400 and r.json()["error"] == "RepoNotFound"
    events = [(t, b) for t, b in _events(network) if b.get("did", b.get("repo")) == did]
    assert events == [("#account", {**events[0][1], "active": False, "status": "deleted"})]
    # the handle is free again
    network.create_account("alice")


def test_update_account_password(network: Network) -> None:
    alice = network.create_account("alice")
    r = network.http.post(
        network.xrpc("com.atproto.admin.updateAccountPassword"),
        json={"did": alice["did"], "password": "new password here"},
        auth=ADMIN,
    )
    assert r.status_code == 200, r.text
    assert _login(network, "alice").status_code == 401
    assert _login(network, "alice", "new password here").status_code == 200
    # old refresh tokens are revoked
    r = network.http.post(
        network.xrpc("com.atproto.server.refreshSession"),
        headers={"Authorization": f"Bearer {alice['refreshJwt']}"},
    )
    assert r.status_code in (400, 401)


# -- CLI ------------------------------------------------------------------------------------------


def _cli(network: Network, *args: str) -> list[str]:
    return ["pds", "admin", "--url", network.pds_url, *args]


def test_cli_invite_and_accounts(network: Network, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_cli(network, "--admin-password", "admin-secret", "invite", "--uses", "3")) == 0
    code = capsys.readouterr().out.strip()
    codes = network.http.get(network.xrpc("com.atproto.admin.getInviteCodes"), auth=ADMIN).json()
    assert codes["codes"][0]["code"] == code and codes["codes"][0]["available"] == 3
    alice = network.create_account("alice")
    network.create_account("bobby")
    assert main(_cli(network, "--admin-password", "admin-secret", "accounts", "--query", "ali")) == 0
    out = capsys.readouterr().out
    assert alice["did"] in out and "alice.pds.test" in out and "active" in out
    assert "bobby" not in out


def test_cli_takedown_untakedown(
    network: Network, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROOST_ADMIN_PASSWORD", "admin-secret")
    did = network.create_account("alice")["did"]
    assert main(_cli(network, "takedown", did, "--reason", "spam")) == 0
    assert _login(network, "alice").json()["error"] == "AccountTakedown"
    assert main(_cli(network, "accounts")) == 0
    assert "takendown  (spam)" in capsys.readouterr().out
    assert main(_cli(network, "untakedown", did)) == 0
    assert _login(network, "alice").status_code == 200


def test_cli_errors(
    network: Network, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ROOST_ADMIN_PASSWORD", raising=False)
    assert main(_cli(network, "accounts")) == 1
    assert "no admin password" in capsys.readouterr().err
    assert main(_cli(network, "--admin-password", "nope", "accounts")) == 1
    assert "authentication failed" in capsys.readouterr().err
    assert main(_cli(network, "--admin-password", "admin-secret", "approve", "did:plc:nobody")) == 1
    assert "Account not found" in capsys.readouterr().err
    assert main(["pds", "admin", "--url", "http://127.0.0.1:9", "--admin-password", "x", "accounts"]) == 1
    assert "cannot reach" in capsys.readouterr().err


def test_outbox_api_and_cli(
    network: Network, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROOST_ADMIN_PASSWORD", "admin-secret")
    assert main(_cli(network, "outbox")) == 0
    assert "no messages" in capsys.readouterr().out
    alice = network.create_account("alice")
    bob = network.create_account("bob")
    for session in (alice, bob, alice):
        r = network.http.post(
            network.xrpc("com.atproto.server.requestAccountDelete"), headers=network.auth(session)
        )
        assert r.status_code == 200, r.text
    listing = network.xrpc("org.roost.admin.listOutbox")
    everything = network.http.get(listing, auth=ADMIN).json()["messages"]
    assert [m["did"] for m in everything] == [alice["did"], bob["did"], alice["did"]]
    # one live token per account and purpose: the newer replaced the older
    assert everything[0]["token"] != everything[2]["token"]
    page = network.http.get(listing, params={"limit": 2}, auth=ADMIN).json()
    rest = network.http.get(listing, params={"limit": 2, "cursor": page["cursor"]}, auth=ADMIN)
    assert [m["id"] for m in page["messages"] + rest.json()["messages"]] == [
        m["id"] for m in everything
    ]
    assert network.http.get(listing, headers=network.auth(alice)).status_code == 401

    assert main(_cli(network, "outbox", "--did", bob["did"])) == 0
    out = capsys.readouterr().out
    assert f"token: {everything[1]['token']}" in out and alice["did"] not in out
    assert "to bob@example.com" in out
