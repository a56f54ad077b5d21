"""A feed generator reading a real PDS's firehose, on loopback.

A did:plc directory and a PDS run as in the PDS tests; the feed generator
subscribes to the PDS's ``subscribeRepos`` (a relay's stream has the same
shape), indexes what accounts write through the PDS, and serves feeds. Reads
come both straight from the feed generator and through the reader's PDS
(``atproto-proxy``), which mints the service token as it would for an app.
"""

from __future__ import annotations

import sqlite3
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from feedgen.app import create_app
from feedgen.config import FeedgenConfig
from roost.crypto import PrivateKey
from roost.jwt import create_service_jwt
from tests.pds.conftest import Network, running_network
from tests.servers import ServerThread, free_port

SKELETON = "app.bsky.feed.getFeedSkeleton"
FEEDS = """
[[feed]]
rkey = "new"
algorithm = "latest"

[[feed]]
rkey = "hot"
algorithm = "whats-hot"
options = { refresh_s = 0 }

[[feed]]
rkey = "friends"
algorithm = "following"

[[feed]]
rkey = "roost"
algorithm = "hashtag"
options = { tags = ["roost"] }

[[feed]]
rkey = "me"
algorithm = "mentions"
"""


@dataclass
class Account:
    did: str
    handle: str
    jwt: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.jwt}"}


@dataclass
class Feedgen:
    url: str
    did: str
    publisher: str
    server: ServerThread

    def uri(self, rkey: str) -> str:
        return f"at://{self.publisher}/app.bsky.feed.generator/{rkey}"


class World:
    def __init__(self, net: Network, tmp: Path) -> None:
        self.net = net
        self.tmp = tmp
        self.http = net.http
        self.accounts: dict[str, Account] = {}
        self.feedgens: list[Feedgen] = []

    def account(self, name: str) -> Account:
        if name not in self.accounts:
            out = self.net.create_account(name)
            self.accounts[name] = Account(out["did"], out["handle"], out["accessJwt"])
        return self.accounts[name]

    def write(self, who: Account, collection: str, record: dict[str, Any]) -> dict[str, Any]:
        record = {"$type": collection, "createdAt": _now(), **record}
        response = self.http.post(self.net.xrpc("com.atproto.repo.createRecord"), headers=who.auth,
                                  json={"repo": who.did, "collection": collection, "record": record})
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    def post(self, who: Account, text: str, facets: list[dict[str, Any]] | None = None) -> str:
        record: dict[str, Any] = {"text": text}
        if facets:
            record["facets"] = facets
        return str(self.write(who, "app.bsky.feed.post", record)["uri"])

    def like(self, who: Account, uri: str) -> None:
        cid = self.http.get(self.net.xrpc("com.atproto.repo.getRecord"), params=dict(
            zip(("repo", "collection", "rkey"), uri[5:].split("/")))).json()["cid"]
        self.write(who, "app.bsky.feed.like", {"subject": {"uri": uri, "cid": cid}})

    def follow(self, who: Account, whom: Account) -> None:
        self.write(who, "app.bsky.graph.follow", {"subject": whom.did})

    def delete(self, who: Account, uri: str) -> None:
        _, collection, rkey = uri[5:].split("/")
        response = self.http.post(self.net.xrpc("com.atproto.repo.deleteRecord"), headers=who.auth,
                                  json={"repo": who.did, "collection": collection, "rkey": rkey})
        assert response.status_code == 200, response.text

    def start_feedgen(self, data_dir: Path, *, feeds: str | None = FEEDS, **options: Any) -> Feedgen:
        port = free_port()
        feeds_file = None
        if feeds is not None:
            feeds_file = data_dir / "feeds.toml"
            data_dir.mkdir(parents=True, exist_ok=True)
            feeds_file.write_text(feeds)
        config = FeedgenConfig(
            port=port, data_dir=data_dir, hostname=f"localhost:{port}",
            relay_url=self.net.pds_url, start_cursor=0, plc_url=self.net.plc_url,
            allow_local=True, feeds_file=feeds_file, batch_delay_s=0.02,
            **{"entry_points": False, **options},
        )
        server = ServerThread(create_app(config), port=port)
        server.start()
        feedgen = Feedgen(f"http://127.0.0.1:{port}", config.did, config.publisher, server)
        self.feedgens.append(feedgen)
        return feedgen

    def skeleton(self, fg: Feedgen, rkey: str, *, headers: dict[str, str] | None = None,
                 **params: Any) -> httpx.Response:
        return self.http.get(f"{fg.url}/xrpc/{SKELETON}", params={"feed": fg.uri(rkey), **params},
                             headers=headers)

    def via_pds(self, fg: Feedgen, reader: Account, rkey: str, **params: Any) -> httpx.Response:
        """getFeedSkeleton through the reader's PDS, which signs a service token for it."""
        headers = {**reader.auth, "atproto-proxy": f"{fg.did}#bsky_fg"}
        return self.http.get(self.net.xrpc(SKELETON), params={"feed": fg.uri(rkey), **params},
                             headers=headers)

    def read_all(self, fetch: Callable[..., httpx.Response], limit: int = 2) -> list[str]:
        """Every post URI of a feed, page by page."""
        out: list[str] = []
        cursor = None
        for _ in range(100):
            response = fetch(limit=limit, **({"cursor": cursor} if cursor else {}))
            assert response.status_code == 200, response.text
            body = response.json()
            assert len(body["feed"]) <= limit
            out += [item["post"] for item in body["feed"]]
            cursor = body.get("cursor")
            if not cursor:
                return out
        raise AssertionError("pagination did not end")

    def signing_key(self, who: Account) -> PrivateKey:
        db = sqlite3.connect(f"file:{self.net.config.data_dir / 'pds.sqlite'}?mode=ro", uri=True)
        try:
            (hex_key,) = db.execute("SELECT signing_key FROM account WHERE did = ?", (who.did,)).fetchone()
        finally:
            db.close()
        return PrivateKey.from_hex(hex_key, "k256")


def _now() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


def eventually(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Poll ``check`` until it returns something truthy (indexing is asynchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("feedgen-e2e")
    with running_network(tmp) as net:
        w = World(net, tmp)
        try:
            yield w
        finally:
            for fg in w.feedgens:
                fg.server.stop()


def _by(uris: list[str], *accounts: Account) -> list[str]:
    """The URIs written by ``accounts`` (other tests share the PDS)."""
    return [u for u in uris if any(u.startswith(f"at://{a.did}/") for a in accounts)]


def _facet(text: str, part: str, feature: dict[str, Any]) -> dict[str, Any]:
    start = text.encode().index(part.encode())
    return {"index": {"byteStart": start, "byteEnd": start + len(part.encode())}, "features": [feature]}


def test_posts_likes_and_follows_reach_the_right_feeds_in_order(world: World) -> None:
    alice, bob, carol = world.account("alice"), world.account("bob"), world.account("carol")
    fg = world.start_feedgen(world.tmp / "fg-main")
    world.follow(carol, alice)
    world.follow(carol, bob)
    text = "hello #roost"
    p1 = world.post(alice, text, [_facet(text, "#roost", {"$type": "app.bsky.richtext.facet#tag",
                                                          "tag": "roost"})])
    text = f"hi @{carol.handle}"
    p2 = world.post(bob, text, [_facet(text, f"@{carol.handle}", {
        "$type": "app.bsky.richtext.facet#mention", "did": carol.did})])
    p3 = world.post(alice, "third")
    p4 = world.post(carol, "carol's own")
    world.like(bob, p1)
    world.like(carol, p1)
    world.like(carol, p3)

    us = (alice, bob, carol)
    newest = lambda **p: world.skeleton(fg, "new", **p)  # noqa: E731
    eventually(lambda: len(_by(world.read_all(newest), *us)) == 4)
    assert _by(world.read_all(newest, limit=3), *us) == [p4, p3, p2, p1]
    hot = lambda **p: world.skeleton(fg, "hot", **p)  # noqa: E731
    assert eventually(lambda: _by(world.read_all(hot), *us) == [p1, p3] or None)
    assert _by(world.read_all(lambda **p: world.skeleton(fg, "roost", **p)), *us) == [p1]

    # personal feeds, read through the reader's PDS with the token it mints
    assert world.read_all(lambda **p: world.via_pds(fg, carol, "friends", **p)) == [p4, p3, p2, p1]
    assert world.read_all(lambda **p: world.via_pds(fg, carol, "me", **p)) == [p2]
    assert world.read_all(lambda **p: world.via_pds(fg, bob, "friends", **p)) == [p2]
    response = world.skeleton(fg, "friends")
    assert response.status_code == 401 and response.json()["error"] == "AuthenticationRequired"

    # a delete through the PDS leaves every feed
    world.delete(alice, p3)
    assert eventually(lambda: _by(world.read_all(newest), *us) == [p4, p2, p1] or None)
    assert eventually(lambda: _by(world.read_all(hot), *us) == [p1] or None)


def test_service_tokens_only_from_the_requesters_key_for_this_service_and_method(
    world: World,
) -> None:
    carol = world.account("carol")
    fg = world.start_feedgen(world.tmp / "fg-auth")
    key = world.signing_key(carol)

    def token(**claims: Any) -> dict[str, str]:
        fields = {"iss": carol.did, "aud": fg.did, "lxm": SKELETON, **claims}
        signer = fields.pop("key", key)
        return {"Authorization": f"Bearer {create_service_jwt(signer, **fields)}"}

    assert world.skeleton(fg, "friends", headers=token()).status_code == 200
    assert world.skeleton(fg, "friends", headers=token(aud=f"{fg.did}#bsky_fg")).status_code == 200
    refused = {
        "forged": token(key=PrivateKey.generate("k256")),
        "expired": token(now=time.time() - 600),
        "wrong aud": token(aud="did:web:elsewhere.example"),
        "wrong lxm": token(lxm="app.bsky.feed.getFeed"),
    }
    errors = {}
    for case, headers in refused.items():
        response = world.skeleton(fg, "friends", headers=headers)
        assert response.status_code == 401, (case, response.text)
        errors[case] = response.json()["error"]
    assert errors == {"forged": "BadJwtSignature", "expired": "JwtExpired",
                      "wrong aud": "BadJwtAudience", "wrong lxm": "BadJwtLexiconMethod"}


def _rows(data_dir: Path) -> list[str]:
    db = sqlite3.connect(f"file:{data_dir / 'feedgen.sqlite'}?mode=ro", uri=True)
    try:
        return [uri for (uri,) in db.execute("SELECT uri FROM post ORDER BY uri")]
    finally:
        db.close()


def test_a_restart_resumes_from_the_stored_cursor(world: World) -> None:
    dave = world.account("dave")
    data = world.tmp / "fg-restart"
    fg = world.start_feedgen(data)
    first = [world.post(dave, f"before {n}") for n in range(3)]
    newest = lambda **p: world.skeleton(fg, "new", **p)  # noqa: E731
    eventually(lambda: set(first) <= set(world.read_all(newest, limit=50)))
    health = world.http.get(f"{fg.url}/xrpc/_health").json()["indexer"]
    cursor = health["cursor"]
    assert cursor > 0
    fg.server.stop()

    during = [world.post(dave, f"while down {n}") for n in range(3)]
    world.delete(dave, first[0])
    fg = world.start_feedgen(data)
    newest = lambda **p: world.skeleton(fg, "new", **p)  # noqa: E731
    eventually(lambda: set(during) <= set(world.read_all(newest, limit=50)))
    eventually(lambda: first[0] not in world.read_all(newest, limit=50))
    health = world.http.get(f"{fg.url}/xrpc/_health").json()["indexer"]
    assert health["events"] == 4  # only what came after the stored cursor was read again
    rows = _rows(data)
    assert len(rows) == len(set(rows))
    mine = [uri for uri in rows if dave.did in uri]
    assert sorted(mine) == sorted(first[1:] + during)


def test_a_plugin_installed_by_entry_point_is_served(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "loud_feed.py").write_text(textwrap.dedent("""
        from feedgen.plugins import FeedPage, algorithm, page

        @algorithm("loud", anonymous=True)
        def loud(index, request):
            '''Posts that shout.'''
            items = index.search(["LOUD"], request.limit + 1, request.before())
            return page(items, request.limit)
    """))
    info = site / "loud_feed-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: loud-feed\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[roost.feeds]\nloud = loud_feed:loud\n")
    monkeypatch.syspath_prepend(str(site))

    erin = world.account("erin")
    fg = world.start_feedgen(tmp_path / "fg-plugin", feeds=None, entry_points=True, fulltext=True)
    described = world.http.get(f"{fg.url}/xrpc/app.bsky.feed.describeFeedGenerator").json()
    assert fg.uri("loud") in [f["uri"] for f in described["feeds"]]
    shout = world.post(erin, "this is LOUD")
    world.post(erin, "this is quiet")
    assert eventually(lambda: world.read_all(lambda **p: world.skeleton(fg, "loud", **p)) == [shout]
                      or None)
