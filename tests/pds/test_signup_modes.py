"""Sign-up modes: open, invite codes, applications an admin reviews."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.pds.conftest import PASSWORD, Network, running_network

ADMIN = ("admin", "admin-secret")
QUESTIONS = ("Why do you want to join?", "Have you read the rules?")


@pytest.fixture
def invite_network(tmp_path: Path) -> Iterator[Network]:
    with running_network(tmp_path, signup_mode="invite") as net:
        yield net


@pytest.fixture
def application_network(tmp_path: Path) -> Iterator[Network]:
    with running_network(
        tmp_path,
        signup_mode="application",
        application_questions=QUESTIONS,
        rules_url="https://pds.test/rules",
    ) as net:
        yield net


def _signup(net: Network, name: str, **extra: Any) -> httpx.Response:
    body = {"handle": f"{name}.pds.test", "email": f"{name}@example.com", "password": PASSWORD}
    return net.http.post(net.xrpc("com.atproto.server.createAccount"), json={**body, **extra})


def _login(net: Network, name: str) -> httpx.Response:
    return net.http.post(
        net.xrpc("com.atproto.server.createSession"),
        json={"identifier": f"{name}.pds.test", "password": PASSWORD},
    )


def _invite(net: Network, uses: int = 1) -> str:
    r = net.http.post(
        net.xrpc("com.atproto.server.createInviteCode"), json={"useCount": uses}, auth=ADMIN
    )
    assert r.status_code == 200, r.text
    return r.json()["code"]  # type: ignore[no-any-return]


def _set_status(net: Network, did: str, **attrs: Any) -> httpx.Response:
    subject = {"$type": "com.atproto.admin.defs#repoRef", "did": did}
    return net.http.post(
        net.xrpc("com.atproto.admin.updateSubjectStatus"),
        json={"subject": subject, **attrs},
        auth=ADMIN,
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


# -- invite mode -----------------------------------------------------------------------------


def test_invite_mode_describe(invite_network: Network) -> None:
    out = invite_network.http.get(invite_network.xrpc("com.atproto.server.describeServer")).json()
    assert out["inviteCodeRequired"] is True


def test_invite_required(invite_network: Network) -> None:
    r = _signup(invite_network, "alice")
    assert r.status_code == 400 and r.json()["error"] == "InvalidInviteCode"
    r = _signup(invite_network, "alice", inviteCode="no-such-code")
    assert r.status_code == 400 and r.json()["error"] == "InvalidInviteCode"


def test_invite_used_up(invite_network: Network) -> None:
    net = invite_network
    code = _invite(net, uses=2)
    assert _signup(net, "alice", inviteCode=code).status_code == 200
    assert _signup(net, "bobby", inviteCode=code).status_code == 200
    r = _signup(net, "carol", inviteCode=code)
    assert r.status_code == 400 and r.json()["error"] == "InvalidInviteCode"
    codes = net.http.get(net.xrpc("com.atproto.admin.getInviteCodes"), auth=ADMIN).json()["codes"]
    assert [c["code"] for c in codes] == [code]
    assert len(codes[0]["uses"]) == 2 and codes[0]["available"] == 2
    # the account remembers its invite
    alice = net.http.get(
        net.xrpc("com.atproto.admin.searchAccounts"), params={"email": "alice"}, auth=ADMIN
    ).json()["accounts"][0]
    assert alice["invitedBy"]["code"] == code


def test_invite_concurrent_last_use(invite_network: Network) -> None:
    import concurrent.futures

    net = invite_network
    code = _invite(net, uses=1)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda n: _signup(net, n, inviteCode=code),
                                ["alice", "bobby", "carol", "david"]))
    assert sorted(r.status_code for r in results) == [200, 400, 400, 400]


def test_invite_disabled(invite_network: Network) -> None:
    net = invite_network
    code = _invite(net, uses=5)
    r = net.http.post(
        net.xrpc("com.atproto.admin.disableInviteCodes"), json={"codes": [code]}, auth=ADMIN
    )
    assert r.status_code == 200, r.text
    r = _signup(net, "alice", inviteCode=code)
    assert r.status_code == 400 and r.json()["error"] == "InvalidInviteCode"


def test_create_invite_codes_batch(invite_network: Network) -> None:
    net = invite_network
    r = net.http.post(
        net.xrpc("com.atproto.server.createInviteCodes"),
        json={"codeCount": 3, "useCount": 1},
        auth=ADMIN,
    )
    assert r.status_code == 200, r.text
    groups = r.json()["codes"]
    assert len(groups) == 1 and len(set(groups[0]["codes"])) == 3
    assert _signup(net, "alice", inviteCode=groups[0]["codes"][1]).status_code == 200


# -- application mode ----------------------------------------------------------------------


def test_application_describe(application_network: Network) -> None:
    out = application_network.http.get(
        application_network.xrpc("com.atproto.server.describeServer")
    ).json()
    assert out["inviteCodeRequired"] is False
    assert out["links"]["rules"] == "https://pds.test/rules"
    assert out["roostApplication"] == {
        "questions": list(QUESTIONS), "rulesUrl": "https://pds.test/rules"
    }


def test_application_requires_answers(application_network: Network) -> None:
    net = application_network
    assert _signup(net, "alice").status_code == 400
    r = _signup(net, "alice", roostApplication={"answers": ["only one"]})
    assert r.status_code == 400 and "questions" in r.json()["message"]


def _apply(net: Network, name: str) -> dict[str, Any]:
    r = _signup(net, name, roostApplication={"answers": ["friends are here", "yes"]})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_application_pending_then_approved(application_network: Network) -> None:
    net = application_network
    created = _apply(net, "alice")
    did = created["did"]
    assert created["roostStatus"] == "pending"
    # pending: can log in, but is not active and cannot write
    login = _login(net, "alice").json()
    assert login["active"] is False and login["status"] == "pending"
    r = _post(net, created)
    assert r.status_code == 401 and r.json()["error"] == "AccountDeactivated"
    status = net.http.get(
        net.xrpc("com.atproto.sync.getRepoStatus"), params={"did": did}
    ).json()
    assert status["active"] is False
    # the admin sees the answers
    info = net.http.get(
        net.xrpc("com.atproto.admin.getAccountInfo"), params={"did": did}, auth=ADMIN
    ).json()
    assert info["roostStatus"] == "pending"
    assert info["roostApplication"][0] == {"question": QUESTIONS[0], "answer": "friends are here"}
    # approval
    assert _set_status(net, did, deactivated={"applied": False}).status_code == 200
    login = _login(net, "alice").json()
    assert login["active"] is True and "status" not in login
    assert _post(net, login).status_code == 200
    status = net.http.get(
        net.xrpc("com.atproto.sync.getRepoStatus"), params={"did": did}
    ).json()
    assert status["active"] is True


def test_application_rejected(application_network: Network) -> None:
    net = application_network
    did = _apply(net, "alice")["did"]
    r = _set_status(net, did, deactivated={"applied": True, "ref": "not a fit, sorry"})
    assert r.status_code == 200, r.text
    login = _login(net, "alice").json()
    assert login["active"] is False and login["status"] == "rejected"
    assert login["roostStatusReason"] == "not a fit, sorry"
    assert _post(net, login).status_code == 401


def test_application_events(application_network: Network) -> None:
    """Pending: #identity and an inactive #account, no #commit; approval: #account active."""
    from roost.frames import decode_frame

    net = application_network
    did = _apply(net, "alice")["did"]
    _set_status(net, did, deactivated={"applied": False})
    import sqlite3

    conn = sqlite3.connect(net.config.data_dir / "pds.sqlite")
    try:
        frames = [row[0] for row in conn.execute("SELECT frame FROM event ORDER BY seq")]
    finally:
        conn.close()
    decoded = [decode_frame(frame) for frame in frames]
    kinds = [(header["t"], body.get("active")) for header, body in decoded]
    assert kinds == [
        ("#identity", None), ("#account", False), ("#account", True), ("#identity", None),
        ("#sync", None),
    ]


def test_cli_approve_and_reject(
    application_network: Network, capsys: pytest.CaptureFixture[str]
) -> None:
    from roost.cli import main

    net = application_network
    alice = _apply(net, "alice")["did"]
    bobby = _apply(net, "bobby")["did"]
    base = ["pds", "admin", "--url", net.pds_url, "--admin-password", "admin-secret"]
    assert main([*base, "accounts"]) == 0
    listing = capsys.readouterr().out
    assert f"{alice}  alice.pds.test  pending" in listing and "A: friends are here" in listing
    assert main([*base, "approve", alice]) == 0
    assert main([*base, "reject", bobby, "--reason", "no room"]) == 0
    assert _login(net, "alice").json()["active"] is True
    rejected = _login(net, "bobby").json()
    assert rejected["status"] == "rejected" and rejected["roostStatusReason"] == "no room"
