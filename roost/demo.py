"""``roost up --demo``: a few accounts, follows, posts and likes, so every page has content.

Everything goes through the PDS's public XRPC API, exactly as a client app
would write it, so the relay and the feed generator see ordinary traffic.
Seeding is idempotent: accounts that already exist (a second run on the same
data directory) are logged into instead of created, and their content is
left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Final

import httpx

__all__ = ["DEMO_ACCOUNTS", "DEMO_PASSWORD", "DemoAccount", "SeedError", "seed"]

#: Password of every demo account (printed in the banner; a local network only).
DEMO_PASSWORD: Final = "roost-demo-password"

#: (name, display name, posts) of the demo accounts.
DEMO_ACCOUNTS: Final = (
    ("alice", "Alice", (
        "Hello from a brand new roost! #introductions",
        "Moving hosts without losing followers is the whole point. #atproto",
    )),
    ("bob", "Bob", (
        "Bob here. Testing the community feed. #introductions",
        "Ich teste die Sprachfilter.",
    )),
    ("carol", "Carol", (
        "Carol checking in; the relay dashboard is lively today. #roost",
    )),
)
_TIMEOUT_S: Final = 30.0


class SeedError(RuntimeError):
    """The PDS refused a demo write (the message says which and why)."""


@dataclass(frozen=True, slots=True)
class DemoAccount:
    handle: str
    did: str
    access_jwt: str = field(repr=False)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _call(
    http: httpx.Client, method: str, nsid: str, *, token: str | None = None,
    body: dict[str, Any] | None = None, params: dict[str, Any] | None = None,
    auth: tuple[str, str] | None = None,
) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    response = http.request(
        method, f"/xrpc/{nsid}", json=body, params=params, headers=headers, auth=auth
    )
    data = response.json() if response.content else {}
    if not response.is_success:
        raise SeedError(f"{nsid}: {data.get('error', response.status_code)}: {data.get('message', '')}")
    return data


def _account(
    http: httpx.Client, name: str, hostname: str, admin: tuple[str, str], server: dict[str, Any]
) -> tuple[DemoAccount, bool]:
    handle = f"{name}.{hostname}"
    try:
        session = _call(http, "POST", "com.atproto.server.createSession",
                        body={"identifier": handle, "password": DEMO_PASSWORD})
        return DemoAccount(handle, session["did"], session["accessJwt"]), False
    except SeedError:
        pass
    body: dict[str, Any] = {
        "handle": handle, "email": f"{name}@{hostname}", "password": DEMO_PASSWORD,
    }
    if server.get("inviteCodeRequired"):
        body["inviteCode"] = _call(http, "POST", "com.atproto.server.createInviteCode",
                                   body={"useCount": 1}, auth=admin)["code"]
    application = server.get("roostApplication")
    if application:
        body["roostApplication"] = {
            "answers": ["(demo account)" for _ in application.get("questions", [])],
            "rulesAccepted": True,
        }
    created = _call(http, "POST", "com.atproto.server.createAccount", body=body)
    did = created["did"]
    if application:
        _call(http, "POST", "com.atproto.admin.updateSubjectStatus", auth=admin, body={
            "subject": {"$type": "com.atproto.admin.defs#repoRef", "did": did},
            "deactivated": {"applied": False},
        })
    session = _call(http, "POST", "com.atproto.server.createSession",
                    body={"identifier": handle, "password": DEMO_PASSWORD})
    return DemoAccount(handle, did, session["accessJwt"]), True


def _create(http: httpx.Client, account: DemoAccount, collection: str,
            record: dict[str, Any], rkey: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"repo": account.did, "collection": collection,
                            "record": {"$type": collection, **record}}
    if rkey is not None:
        body["rkey"] = rkey
    return _call(http, "POST", "com.atproto.repo.createRecord", token=account.access_jwt, body=body)


def seed(pds_url: str, hostname: str, admin_password: str) -> list[DemoAccount]:
    """Create the demo accounts and their content on the PDS at ``pds_url``."""
    admin = ("admin", admin_password)
    with httpx.Client(base_url=pds_url, timeout=_TIMEOUT_S) as http:
        server = _call(http, "GET", "com.atproto.server.describeServer")
        accounts: list[DemoAccount] = []
        fresh: list[DemoAccount] = []
        for name, _display, _posts in DEMO_ACCOUNTS:
            account, created = _account(http, name, hostname, admin, server)
            accounts.append(account)
            if created:
                fresh.append(account)
        posts: list[dict[str, Any]] = []
        for account, (_name, display, texts) in zip(accounts, DEMO_ACCOUNTS, strict=True):
            if account not in fresh:
                continue
            _create(http, account, "app.bsky.actor.profile",
                    {"displayName": display, "description": f"{display}, on roost."}, rkey="self")
            for text in texts:
                record: dict[str, Any] = {"text": text, "createdAt": _now()}
                record["langs"] = ["de"] if text.startswith("Ich") else ["en"]
                tags = _hashtags(text)
                if tags:
                    record["facets"] = tags
                posts.append(_create(http, account, "app.bsky.feed.post", record))
        for account in fresh:
            for other in accounts:
                if other.did != account.did:
                    _create(http, account, "app.bsky.graph.follow",
                            {"subject": other.did, "createdAt": _now()})
            for post in posts[:3]:
                _create(http, account, "app.bsky.feed.like", {
                    "subject": {"uri": post["uri"], "cid": post["cid"]}, "createdAt": _now()})
    return accounts


def _hashtags(text: str) -> list[dict[str, Any]]:
    """Facets for the ``#tags`` in ``text`` (byte offsets, as the lexicon requires)."""
    facets: list[dict[str, Any]] = []
    data = text.encode()
    start = data.find(b"#")
    while start != -1:
        end = start + 1
        while end < len(data) and data[end:end + 1].isalnum():
            end += 1
        if end > start + 1:
            facets.append({
                "index": {"byteStart": start, "byteEnd": end},
                "features": [{"$type": "app.bsky.richtext.facet#tag",
                              "tag": data[start + 1:end].decode()}],
            })
        start = data.find(b"#", end)
    return facets
