"""com.atproto.server.*AppPassword and app-password sessions over real sockets."""

from __future__ import annotations

from typing import Any

import httpx

from pds.passwords import is_app_password_format
from roost.jwt import parse_jwt
from tests.pds.conftest import PASSWORD, Network


def _login(network: Network, password: str, identifier: str = "alice.pds.test") -> httpx.Response:
    return network.http.post(
        network.xrpc("com.atproto.server.createSession"),
        json={"identifier": identifier, "password": password},
    )


def _create(network: Network, session: dict[str, Any], name: str, **extra: Any) -> httpx.Response:
    return network.http.post(
        network.xrpc("com.atproto.server.createAppPassword"),
        json={"name": name, **extra},
        headers=network.auth(session),
    )


def _scope(token: str) -> str:
    return parse_jwt(token).payload["scope"]  # type: ignore[no-any-return]


def test_create_list_login_refresh_revoke(network: Network) -> None:
    main = network.create_account("alice")
    created = _create(network, main, "phone")
    assert created.status_code == 200, created.text
    out = created.json()
    assert out["name"] == "phone" and out["privileged"] is False and out["createdAt"]
    password = out["password"]
    assert is_app_password_format(password)
    privileged = _create(network, main, "desktop", privileged=True).json()

    listed = network.http.get(
        network.xrpc("com.atproto.server.listAppPasswords"), headers=network.auth(main)
    )
    assert listed.status_code == 200
    rows = {row["name"]: row for row in listed.json()["passwords"]}
    assert set(rows) == {"phone", "desktop"}
    assert rows["desktop"]["privileged"] is True and "password" not in rows["phone"]

    # the name is unique per account
    again = _create(network, main, "phone")
    assert again.status_code == 400 and again.json()["error"] == "InvalidRequest"

    login = _login(network, password)
    assert login.status_code == 200, login.text
    session = login.json()
    assert session["did"] == main["did"]
    assert _scope(session["accessJwt"]) == "com.atproto.appPass"
    priv = _login(network, privileged["password"], main["did"]).json()
    assert _scope(priv["accessJwt"]) == "com.atproto.appPassPrivileged"
    # app-password sessions work for ordinary calls
    me = network.http.get(network.xrpc("com.atproto.server.getSession"), headers=network.auth(session))
    assert me.status_code == 200 and me.json()["handle"] == "alice.pds.test"

    # refresh keeps the scope
    refreshed = network.http.post(
        network.xrpc("com.atproto.server.refreshSession"),
        headers={"Authorization": f"Bearer {session['refreshJwt']}"},
    )
    assert refreshed.status_code == 200, refreshed.text
    assert _scope(refreshed.json()["accessJwt"]) == "com.atproto.appPass"
    priv_refreshed = network.http.post(
        network.xrpc("com.atproto.server.refreshSession"),
        headers={"Authorization": f"Bearer {priv['refreshJwt']}"},
    ).json()
    assert _scope(priv_refreshed["accessJwt"]) == "com.atproto.appPassPrivileged"

    # revoking ends the login and the sessions' refresh tokens
    revoked = network.http.post(
        network.xrpc("com.atproto.server.revokeAppPassword"),
        json={"name": "phone"},
        headers=network.auth(main),
    )
    assert revoked.status_code == 200, revoked.text
    assert _login(network, password).status_code == 401
    for token in (session["refreshJwt"], refreshed.json()["refreshJwt"]):
        gone = network.http.post(
            network.xrpc("com.atproto.server.refreshSession"),
            headers={"Authorization": f"Bearer {token}"},
        )
        assert gone.status_code == 400 and gone.json()["error"] == "ExpiredToken"
    names = [
        row["name"]
        for row in network.http.get(
            network.xrpc("com.atproto.server.listAppPasswords"), headers=network.auth(main)
        ).json()["passwords"]
    ]
    assert names == ["desktop"]
    # the other app password and the main password still work
    assert _login(network, privileged["password"]).status_code == 200
    assert _login(network, PASSWORD).status_code == 200


def test_app_password_scope_restrictions(network: Network) -> None:
    main = network.create_account("alice")
    for name, privileged in (("plain", False), ("trusted", True)):
        password = _create(network, main, name, privileged=privileged).json()["password"]
        session = _login(network, password).json()
        # full-access routes refuse app passwords, privileged or not
        denied = _create(network, session, "sneaky")
        assert denied.status_code == 400
        assert denied.json() == {"error": "InvalidToken", "message": "Bad token scope"}
    # an app password of one account does not log into another
    network.create_account("bobby")
    other = _create(network, main, "third").json()["password"]
    assert _login(network, other, "bobby.pds.test").status_code == 401


def test_wrong_passwords(network: Network) -> None:
    main = network.create_account("alice")
    _create(network, main, "phone")
    assert _login(network, "abcd-efgh-ijkl-mnop").status_code == 401
    assert _login(network, "abcd-efgh-ijkl-mnop", "nobody.pds.test").status_code == 401
    unauth = network.http.post(
        network.xrpc("com.atproto.server.createAppPassword"), json={"name": "x"}
    )
    assert unauth.status_code == 401
    empty = _create(network, main, "   ")
    assert empty.status_code == 400
