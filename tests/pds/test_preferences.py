"""app.bsky.actor.getPreferences / putPreferences over real sockets."""

from __future__ import annotations

from typing import Any

import httpx

from tests.pds.conftest import Network

ADULT = {"$type": "app.bsky.actor.defs#adultContentPref", "enabled": True}
FEEDS = {
    "$type": "app.bsky.actor.defs#savedFeedsPrefV2",
    "items": [{"id": "3kabc", "type": "timeline", "value": "following", "pinned": True}],
}
BIRTH = {"$type": "app.bsky.actor.defs#personalDetailsPref", "birthDate": "1990-01-01T00:00:00.000Z"}


def _get(network: Network, session: dict[str, Any]) -> list[dict[str, Any]]:
    response = network.http.get(
        network.xrpc("app.bsky.actor.getPreferences"), headers=network.auth(session)
    )
    assert response.status_code == 200, response.text
    return response.json()["preferences"]  # type: ignore[no-any-return]


def _put(network: Network, session: dict[str, Any], prefs: list[Any]) -> httpx.Response:
    return network.http.post(
        network.xrpc("app.bsky.actor.putPreferences"),
        json={"preferences": prefs},
        headers=network.auth(session),
    )


def _app_session(network: Network, main: dict[str, Any]) -> dict[str, Any]:
    password = network.http.post(
        network.xrpc("com.atproto.server.createAppPassword"),
        json={"name": "app"},
        headers=network.auth(main),
    ).json()["password"]
    return network.http.post(  # type: ignore[no-any-return]
        network.xrpc("com.atproto.server.createSession"),
        json={"identifier": main["did"], "password": password},
    ).json()


def test_round_trip_and_replace(network: Network) -> None:
    alice = network.create_account("alice")
    bob = network.create_account("bobby")
    assert _get(network, alice) == []
    assert _put(network, alice, [ADULT, FEEDS, BIRTH]).status_code == 200
    assert _get(network, alice) == [ADULT, FEEDS, BIRTH]
    assert _get(network, bob) == []  # per account
    # the whole set is replaced
    assert _put(network, alice, [FEEDS]).status_code == 200
    assert _get(network, alice) == [FEEDS]
    assert _put(network, alice, []).status_code == 200
    assert _get(network, alice) == []
    unauth = network.http.get(network.xrpc("app.bsky.actor.getPreferences"))
    assert unauth.status_code == 401


def test_validation(network: Network) -> None:
    alice = network.create_account("alice")
    _put(network, alice, [ADULT])
    foreign = _put(network, alice, [{"$type": "com.example.pref", "x": 1}])
    assert foreign.status_code == 400 and foreign.json()["error"] == "InvalidRequest"
    untyped = _put(network, alice, [{"enabled": True}])
    assert untyped.status_code == 400
    malformed = _put(network, alice, [{"$type": "app.bsky.actor.defs#adultContentPref"}])
    assert malformed.status_code == 400  # missing required "enabled" (lexicon)
    missing = network.http.post(
        network.xrpc("app.bsky.actor.putPreferences"), json={}, headers=network.auth(alice)
    )
    assert missing.status_code == 400
    # nothing changed
    assert _get(network, alice) == [ADULT]
    # read-only preferences are not stored
    age = {"$type": "app.bsky.actor.defs#declaredAgePref", "isOverAge18": True}
    assert _put(network, alice, [age, ADULT]).status_code == 200
    assert _get(network, alice) == [ADULT]


def test_app_passwords_and_personal_details(network: Network) -> None:
    main = network.create_account("alice")
    app = _app_session(network, main)
    assert _put(network, main, [ADULT, BIRTH]).status_code == 200
    # hidden from app passwords
    assert _get(network, app) == [ADULT]
    denied = _put(network, app, [BIRTH])
    assert denied.status_code == 400 and denied.json()["error"] == "InvalidRequest"
    # an app password's put replaces what it can see and keeps the rest
    assert _put(network, app, [FEEDS]).status_code == 200
    assert _get(network, app) == [FEEDS]
    assert _get(network, main) == [FEEDS, BIRTH]
