"""com.atproto.server.*: accounts and sessions over real sockets."""

from __future__ import annotations

import httpx

from roost.identity import DidDocument
from tests.pds.conftest import PASSWORD, Network


def test_describe_server(network: Network) -> None:
    out = network.http.get(network.xrpc("com.atproto.server.describeServer")).json()
    assert out["did"] == "did:web:pds.test"
    assert out["availableUserDomains"] == [".pds.test"]
    assert out["inviteCodeRequired"] is False


def test_create_account_registers_did(network: Network) -> None:
    created = network.create_account("alice")
    did = created["did"]
    assert did.startswith("did:plc:") and created["handle"] == "alice.pds.test"
    doc = DidDocument.parse(network.http.get(f"{network.plc_url}/{did}").json(), did=did)
    assert doc.handle == "alice.pds.test"
    assert doc.pds_endpoint == network.pds_url
    assert doc.signing_key is not None
    # the handle resolves through the PDS
    out = network.http.get(
        network.xrpc("com.atproto.identity.resolveHandle"), params={"handle": "alice.pds.test"}
    ).json()
    assert out == {"did": did}
    well_known = network.http.get(
        f"{network.pds_url}/.well-known/atproto-did", headers={"Host": "alice.pds.test"}
    )
    assert well_known.status_code == 200 and well_known.text == did


def test_create_account_errors(network: Network) -> None:
    network.create_account("alice")
    url = network.xrpc("com.atproto.server.createAccount")

    def attempt(**body: str) -> httpx.Response:
        return network.http.post(url, json={"password": PASSWORD, **body})

    taken = attempt(handle="alice.pds.test", email="other@example.com")
    assert taken.status_code == 400 and taken.json()["error"] == "HandleNotAvailable"
    foreign = attempt(handle="alice.example.com", email="x@example.com")
    assert foreign.status_code == 400 and foreign.json()["error"] == "UnsupportedDomain"
    bad = attempt(handle="-bad-.pds.test", email="y@example.com")  # fails the lexicon format
    assert bad.status_code == 400 and bad.json()["error"] in ("InvalidRequest", "InvalidHandle")
    short = attempt(handle="ab.pds.test", email="z@example.com")
    assert short.status_code == 400 and short.json()["error"] == "InvalidHandle"
    email = attempt(handle="carol.pds.test", email="alice@example.com")
    assert email.status_code == 400
    missing = network.http.post(url, json={"handle": "dave.pds.test"})
    assert missing.status_code == 400


def test_session_lifecycle(network: Network) -> None:
    created = network.create_account("alice")
    login = network.http.post(
        network.xrpc("com.atproto.server.createSession"),
        json={"identifier": "ALICE.pds.test", "password": PASSWORD},
    )
    assert login.status_code == 200
    session = login.json()
    assert session["did"] == created["did"] and session["active"] is True
    for identifier in (created["did"], "alice@example.com"):
        again = network.http.post(
            network.xrpc("com.atproto.server.createSession"),
            json={"identifier": identifier, "password": PASSWORD},
        )
        assert again.status_code == 200
    me = network.http.get(network.xrpc("com.atproto.server.getSession"), headers=network.auth(session))
    assert me.status_code == 200 and me.json()["handle"] == "alice.pds.test"

    refresh_headers = {"Authorization": f"Bearer {session['refreshJwt']}"}
    refreshed = network.http.post(network.xrpc("com.atproto.server.refreshSession"), headers=refresh_headers)
    assert refreshed.status_code == 200
    new = refreshed.json()
    assert new["refreshJwt"] != session["refreshJwt"]
    # an access token is not a refresh token, and the other way round
    wrong = network.http.post(network.xrpc("com.atproto.server.refreshSession"), headers=network.auth(new))
    assert wrong.status_code == 400 and wrong.json()["error"] == "InvalidToken"
    wrong = network.http.get(network.xrpc("com.atproto.server.getSession"), headers=refresh_headers)
    assert wrong.status_code == 400 and wrong.json()["error"] == "InvalidToken"

    new_refresh = {"Authorization": f"Bearer {new['refreshJwt']}"}
    out = network.http.post(network.xrpc("com.atproto.server.deleteSession"), headers=new_refresh)
    assert out.status_code == 200
    revoked = network.http.post(network.xrpc("com.atproto.server.refreshSession"), headers=new_refresh)
    assert revoked.status_code == 400 and revoked.json()["error"] == "ExpiredToken"


def test_bad_credentials(network: Network) -> None:
    network.create_account("alice")
    url = network.xrpc("com.atproto.server.createSession")
    wrong = network.http.post(url, json={"identifier": "alice.pds.test", "password": "nope"})
    assert wrong.status_code == 401 and wrong.json()["error"] == "AuthenticationRequired"
    nobody = network.http.post(url, json={"identifier": "bob.pds.test", "password": PASSWORD})
    assert nobody.status_code == 401
    missing = network.http.get(network.xrpc("com.atproto.server.getSession"))
    assert missing.status_code == 401 and missing.json()["error"] == "AuthMissing"
    forged = network.http.get(
        network.xrpc("com.atproto.server.getSession"),
        headers={"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.e30.AAAA"},
    )
    assert forged.status_code == 400 and forged.json()["error"] == "InvalidToken"
