"""The feed catalogue page on a real server: previews hydrated from the index and from a PDS,
per-feed counters, the refresh fragment and script; and the counters and post cache alone.

A did:plc directory and a PDS run on loopback so authors have real DID
documents and records; some of their posts are in the feed index (the
preview reads those locally), others only on the PDS (the preview fetches
them), one was deleted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from feedgen.algos import register_builtins
from feedgen.app import create_app
from feedgen.config import FeedgenConfig
from feedgen.hydrate import HydratedPost, PostCache
from feedgen.plugins import Feed, FeedPage, FeedRequest, Registry, algorithm
from feedgen.sqlite import SqliteIndex
from feedgen.stats import RATE_WINDOW_S, FeedStats
from feedgen.storage import InvalidCursor, PostRow
from roost.cid import CID
from tests.feedgen.helpers import store
from tests.pds.conftest import Network, running_network
from tests.servers import ServerThread, free_port

SKELETON = "app.bsky.feed.getFeedSkeleton"
PUB = "did:plc:publisher"
#: A post by a DID the directory does not know.
NOBODY = "at://did:plc:aaaaaaaaaaaaaaaaaaaaaaaa/app.bsky.feed.post/3kabcdefghij2"


@algorithm("fixed", anonymous=True)
class Fixed:
    """Whatever posts its options list (as a plugin might, from outside the index)."""

    def __init__(self, *, uris: list[str]) -> None:
        self.uris = uris

    def __call__(self, index: Any, request: FeedRequest) -> FeedPage:
        return FeedPage(self.uris[: request.limit])


@algorithm(anonymous=True)
def broken(index: Any, request: FeedRequest) -> FeedPage:
    raise ZeroDivisionError("oops")


@dataclass
class Site:
    url: str
    http: httpx.Client
    handle: str
    indexed: list[str]
    remote: str
    deleted: str

    def uri(self, rkey: str) -> str:
        return f"at://{PUB}/app.bsky.feed.generator/{rkey}"

    def skeleton(self, rkey: str, **params: Any) -> httpx.Response:
        return self.http.get(f"{self.url}/xrpc/{SKELETON}",
                             params={"feed": self.uri(rkey), **params})

    def feeds(self) -> dict[str, Any]:
        body = self.http.get(f"{self.url}/catalog.json").json()
        return {feed["uri"].rsplit("/", 1)[1]: feed for feed in body["feeds"]}


def _post(net: Network, session: dict[str, Any], text: str, age_s: int) -> dict[str, Any]:
    created = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() - age_s))
    response = net.call("com.atproto.repo.createRecord", session, repo=session["did"],
                        collection="app.bsky.feed.post",
                        record={"$type": "app.bsky.feed.post", "text": text, "createdAt": created})
    assert response.status_code == 200, response.text
    return dict(response.json())


def _row(out: dict[str, Any], author: str, text: str, at_ms: int) -> PostRow:
    return PostRow(uri=out["uri"], cid=CID.from_str(out["cid"]).bytes, author=author, text=text,
                   created_at=at_ms, indexed_at=at_ms)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("feedgen-catalog")
    with running_network(tmp) as net:
        alice = net.create_account("alice")
        did = alice["did"]
        now = int(time.time() * 1000)
        texts = ["first <b>post</b> & \"more\"", "second post\nwith two lines"]
        outs = [_post(net, alice, text, 60 - n) for n, text in enumerate(texts)]
        remote = _post(net, alice, "only on the PDS", 30)["uri"]
        deleted = _post(net, alice, "soon gone", 20)["uri"]
        assert net.call("com.atproto.repo.deleteRecord", alice, repo=did,
                        collection="app.bsky.feed.post",
                        rkey=deleted.rsplit("/", 1)[1]).status_code == 200
        index: SqliteIndex = store(tmp)
        # indexed text differs from the record's, to show which one the page used
        index.apply([_row(out, did, f"indexed: {text}", now - 60_000 + n)
                     for n, (out, text) in enumerate(zip(outs, texts))])

        registry = Registry()
        register_builtins(registry)
        feeds = [
            Feed.build(registry.get("latest"), publisher=PUB, rkey="latest",
                       display_name="Newest", description="everything, newest first"),
            Feed.build(registry.get("latest"), publisher=PUB, rkey="members", anonymous=False),
            Feed.build(registry.get("following"), publisher=PUB, rkey="following"),
            Feed.build(registry.add(Fixed), publisher=PUB, rkey="outside",
                       options={"uris": [remote, deleted, NOBODY]}),
            Feed.build(registry.add(broken), publisher=PUB, rkey="broken"),
        ]
        port = free_port()
        config = FeedgenConfig(port=port, data_dir=tmp, hostname=f"localhost:{port}",
                               plc_url=net.plc_url, allow_local=True, entry_points=False)
        server = ServerThread(create_app(config, registry=registry, feeds=feeds, store=index),
                              port=port)
        url = server.start()
        http = httpx.Client(timeout=30)
        try:
            yield Site(url, http, alice["handle"], [o["uri"] for o in outs], remote, deleted)
        finally:
            http.close()
            server.stop()
            index.close()


def test_the_page_previews_every_feed_with_hydrated_posts(site: Site) -> None:
    page = site.http.get(f"{site.url}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    html = page.text
    # indexed posts: text from the index, escaped; the author's handle from their DID document
    assert "indexed: first &lt;b&gt;post&lt;/b&gt; &amp; &quot;more&quot;" in html
    assert "<b>post</b>" not in html
    assert "indexed: second post\nwith two lines" in html
    assert f'<span class="name">@{site.handle}</span> <span class="badge"' in html
    assert "unverified</span>" in html  # *.pds.test does not resolve back
    assert html.index("indexed: second post") < html.index("indexed: first")  # newest first
    assert "Newest" in html and "everything, newest first" in html
    # a feed for signed-in readers only still has an anonymous preview
    members = html[html.index('id="feed-members"'):html.index('id="feed-following"')]
    assert "indexed: first" in members
    # a personalised feed explains why it has none
    following = html[html.index('id="feed-following"'):html.index('id="feed-outside"')]
    assert "Personalised" in following and "<li" not in following
    # posts outside the index come from the author's PDS; a deleted one is marked missing
    outside = html[html.index('id="feed-outside"'):html.index('id="feed-broken"')]
    assert "only on the PDS" in outside
    assert "missing" in outside and site.deleted in outside and "soon gone" not in outside
    assert "unavailable" in outside and NOBODY in outside
    broken = html[html.index('id="feed-broken"'):]
    assert "The preview failed" in broken and "AlgorithmFailed" in broken
    # the refresh script, allowed by the page's policy to fetch the fragment
    assert 'data-refresh="/catalog/feeds"' in html and "/static/feedgen-catalog.js" in html
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    script = site.http.get(f"{site.url}/static/feedgen-catalog.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "/catalog/feeds" not in script.text and "data-refresh" in script.text


def test_the_json_view_names_where_each_post_came_from(site: Site) -> None:
    feeds = site.feeds()
    latest = feeds["latest"]["preview"]
    assert latest["state"] == "ok"
    assert [p["uri"] for p in latest["posts"]] == site.indexed[::-1]
    assert {p["source"] for p in latest["posts"]} == {"index"}
    outside = feeds["outside"]["preview"]["posts"]
    assert [(p["uri"], p["state"], p.get("source")) for p in outside] == [
        (site.remote, "ok", "pds"), (site.deleted, "missing", None),
        (NOBODY, "unavailable", None)]
    assert "author does not resolve" in outside[2]["reason"]
    assert outside[0]["text"] == "only on the PDS" and outside[0]["claimedHandle"] == site.handle
    assert feeds["following"]["preview"]["state"] == "personal"
    assert feeds["broken"]["preview"]["state"] == "error"


def test_requests_and_errors_are_counted_per_feed(site: Site) -> None:
    before = site.feeds()
    for _ in range(3):
        assert site.skeleton("latest", limit=2).status_code == 200
    assert site.skeleton("members").status_code == 401
    assert site.skeleton("broken").status_code == 502
    assert site.skeleton("latest", cursor="garbage").status_code == 400
    assert site.skeleton("nope").status_code == 400  # not a feed here: counted nowhere
    after = site.feeds()
    latest = after["latest"]["stats"]
    # previews rendered in between are not requests
    assert latest["requests"] == before["latest"]["stats"]["requests"] + 4
    assert latest["requestsPerSecond"] > 0
    assert latest["failures"] == 0 and latest["lastError"] is None
    rejection = latest["lastRejection"]
    assert rejection["status"] == 400 and "cursor" in rejection["message"]
    assert after["members"]["stats"]["lastRejection"]["error"] == "AuthenticationRequired"
    broken = after["broken"]["stats"]
    assert broken["failures"] == before["broken"]["stats"]["failures"] + 1
    assert broken["lastError"]["error"] == "AlgorithmFailed"
    assert "ZeroDivisionError" in broken["lastError"]["message"]
    assert broken["lastError"]["status"] == 502

    fragment = site.http.get(f"{site.url}/catalog/feeds")
    assert fragment.status_code == 200 and "<html" not in fragment.text
    card = fragment.text[fragment.text.index('id="feed-broken"'):]
    assert "Last error" in card and "AlgorithmFailed" in card and "ZeroDivisionError" in card
    assert f'<b class="failures">{broken["failures"]}</b>' in card
    latest_card = fragment.text[:fragment.text.index('id="feed-members"')]
    assert f'<b class="requests">{latest["requests"]}</b>' in latest_card
    assert "last refused request" in latest_card


# -- the parts alone -------------------------------------------------------------------------------


def test_the_request_rate_covers_a_sliding_window() -> None:
    now = [1000.0]
    stats = FeedStats(clock=lambda: now[0])
    for _ in range(20):
        stats.request("a")
    assert stats.rate("a") == 20 / RATE_WINDOW_S and stats.rate("b") == 0
    now[0] += RATE_WINDOW_S - 1
    stats.request("a")
    assert stats.rate("a") == 21 / RATE_WINDOW_S
    now[0] += 1  # the first second leaves the window
    assert stats.rate("a") == 1 / RATE_WINDOW_S
    now[0] += 3600
    assert stats.rate("a") == 0 and stats.snapshot("a")["requests"] == 21
    stats.failed("a", InvalidCursor("bad cursor"))
    stats.failed("a", RuntimeError("x" * 10_000))
    snap = stats.snapshot("a")
    assert snap["rejected"] == 1 and snap["lastRejection"]["message"] == "bad cursor"
    assert snap["failures"] == 1 and snap["lastError"]["status"] == 500
    assert snap["lastError"]["at"] == now[0]


def test_the_post_cache_expires_and_keeps_no_failures() -> None:
    now = [0.0]
    cache = PostCache(ttl=10, max_entries=2, clock=lambda: now[0])
    ok = HydratedPost("at://did:plc:a/app.bsky.feed.post/1", "did:plc:a", "ok", text="hi")
    cache.put(ok)
    cache.put(HydratedPost("at://did:plc:a/app.bsky.feed.post/2", "did:plc:a", "unavailable"))
    assert cache.get(ok.uri) == ok and len(cache) == 1
    for n in range(3, 6):
        cache.put(HydratedPost(f"at://did:plc:a/app.bsky.feed.post/{n}", "did:plc:a", "missing"))
    assert len(cache) == 2 and cache.get(ok.uri) is None
    now[0] = 11
    assert cache.get("at://did:plc:a/app.bsky.feed.post/5") is None
